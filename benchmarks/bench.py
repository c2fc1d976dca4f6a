"""Benchmark harness: runs every variant in its own fresh process, repeats, aggregates.

    python benchmarks/bench.py --workload seed --variants seed_eager,jax_jit,jax_scan \
        --repeats 5 --out benchmarks/results.json
    python benchmarks/bench.py --sweep samples --variants jax_jit,jax_scan

Stdlib only: variant processes import this module for the workload definitions.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

COMMON = dict(features=784, classes=10, batch_size=32, dropout=0.1, lr=1e-3,
              warmup_steps=100, weight_decay=1e-4, seed=0)
WORKLOADS = {
    "seed": dict(samples=1000, hidden=(256, 128), epochs=10),
    "large": dict(samples=20000, hidden=(1024, 512), epochs=20),
}
# Sweeps run the seed workload with these overrides.
SWEEPS = {
    "samples": [dict(samples=n, epochs=10) for n in (1000, 10000, 100000)],
    "epochs": [dict(samples=1000, epochs=e) for e in (10, 100)],
}

# Adding a variant = one entry here (plus its runner in the script it names).
# probe: Python code that must run cleanly for the variant to be available.
# capped: honours --max-steps (measures a bounded number of steps, extrapolates).
VARIANTS = {
    "seed_eager": dict(script="baselines.py", capped=True),
    "jax_jit": dict(script="baselines.py"),
    "jax_scan": dict(script="baselines.py"),
    "jaxyard_engine": dict(script="jaxyard_variants.py", probe="import jaxyard"),
    "jaxyard_cli": dict(script="jaxyard_variants.py", probe="import jaxyard"),
}

# (numerator, denominator) ratios of median steady-state step time.
RATIOS = [("jaxyard_engine", "jax_scan"), ("jaxyard_engine", "jax_jit"),
          ("seed_eager", "jaxyard_engine"), ("jax_jit", "jax_scan"), ("seed_eager", "jax_scan")]

METRICS = ["step_ms", "compile_s", "epoch_s", "train_s", "import_s", "wall_s", "peak_rss_mb",
           "val_acc"]


def workload_config(name, samples=None, epochs=None):
    """Full config of a workload; validation set is 20% of the training-set size."""
    cfg = {**COMMON, **WORKLOADS[name]}
    cfg["samples"] = samples or cfg["samples"]
    cfg["epochs"] = epochs or cfg["epochs"]
    cfg["val_samples"] = cfg["samples"] // 5
    return cfg


def unavailable(name):
    """None if the variant can run, else the reason it cannot."""
    spec = VARIANTS[name]
    if "probe" in spec:
        probe = subprocess.run([sys.executable, "-c", spec["probe"]], capture_output=True, text=True)
        if probe.returncode:
            return probe.stderr.strip().splitlines()[-1]
    if not (HERE / spec["script"]).exists():
        return f"benchmarks/{spec['script']} not found"
    return None


def run_once(name, workload, overrides, max_steps):
    """One fresh process: its JSON result plus whole-process wall time and peak RSS."""
    cmd = [sys.executable, str(HERE / VARIANTS[name]["script"]), "--variant", name,
           "--workload", workload, "--json"]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    if max_steps and VARIANTS[name].get("capped"):
        cmd += ["--max-steps", str(max_steps)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{name} exited with {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    # ru_maxrss is KiB on Linux. A variant that runs its work in a child of its own (the CLI)
    # reports that child's wall time and peak memory itself.
    result["wall_s"] = result.pop("cli_wall_s", wall)
    result["peak_rss_mb"] = result.pop("cli_peak_rss_mb", usage.ru_maxrss / 1024)
    return result


def aggregate(results):
    summary = {}
    for key in METRICS:
        values = [r[key] for r in results]
        summary[key] = dict(median=statistics.median(values), min=min(values), max=max(values))
    first = results[0]
    summary.update({k: first[k] for k in ("total_steps", "measured_steps", "extrapolated",
                                          "backend")})
    summary["repeats"] = results
    return summary


def run_workload(workload, overrides, variants, repeats, max_steps):
    cfg = workload_config(workload, **overrides)
    label = f"{workload} (samples={cfg['samples']}, epochs={cfg['epochs']})"
    print(f"\n== {label}", flush=True)
    out = dict(workload=workload, config=cfg, variants={}, skipped={}, ratios={})
    for name in variants:
        reason = unavailable(name)
        if reason is None:
            try:
                results = []
                for i in range(repeats):
                    results.append(run_once(name, workload, overrides, max_steps))
                    print(f"  {name} {i + 1}/{repeats}: {results[-1]['step_ms']:.3f} ms/step, "
                          f"wall {results[-1]['wall_s']:.1f} s", flush=True)
                out["variants"][name] = aggregate(results)
                continue
            except RuntimeError as err:
                reason = str(err)
        print(f"  {name}: not available ({reason})", flush=True)
        out["skipped"][name] = reason
    step = {n: s["step_ms"]["median"] for n, s in out["variants"].items()}
    for num, den in RATIOS:
        if num in step and den in step:
            out["ratios"][f"{num} / {den}"] = step[num] / step[den]
    print_table(label, out)
    return out


def print_table(label, out):
    def cell(stat, fmt):
        return f"{stat['median']:{fmt}} [{stat['min']:{fmt}}-{stat['max']:{fmt}}]"

    header = ["variant", "step ms", "compile s", "epoch s", "train s", "import s", "wall s",
              "peak RSS MB", "val acc", "note"]
    rows = [header]
    for name, s in out["variants"].items():
        note = (f"extrapolated from {s['measured_steps']}/{s['total_steps']} steps"
                if s["extrapolated"] else "")
        rows.append([name, cell(s["step_ms"], ".3f"), cell(s["compile_s"], ".2f"),
                     f"{s['epoch_s']['median']:.3f}", f"{s['train_s']['median']:.2f}",
                     f"{s['import_s']['median']:.2f}", cell(s["wall_s"], ".2f"),
                     cell(s["peak_rss_mb"], ".0f"), f"{s['val_acc']['median']:.3f}", note])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(f"\n{label}  (median [min-max]; step = steady-state training step)")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for ratio, value in out["ratios"].items():
        print(f"  {ratio}: {value:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=WORKLOADS, default="seed")
    parser.add_argument("--sweep", choices=SWEEPS, help="run the seed workload over a sweep")
    parser.add_argument("--variants", default="seed_eager,jax_jit,jax_scan",
                        help=f"comma-separated, from: {','.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=400,
                        help="steps measured for capped variants (seed_eager) before "
                             "extrapolating; 0 = run everything")
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    start = time.perf_counter()
    if args.sweep:
        points = [("seed", o) for o in SWEEPS[args.sweep]]
    else:
        points = [(args.workload, {})]
    runs = [run_workload(w, o, variants, args.repeats, args.max_steps) for w, o in points]
    total = time.perf_counter() - start
    print(f"\nwhole benchmark: {total:.1f} s")
    if args.out:
        args.out.write_text(json.dumps(dict(argv=sys.argv, total_s=total, runs=runs), indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
