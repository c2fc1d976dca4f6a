"""Benchmark harness: runs every variant in its own fresh process, repeats, aggregates.

    python benchmarks/bench.py --workload seed --variants seed_eager,jax_jit,jax_scan \
        --repeats 5 --out benchmarks/results.json
    python benchmarks/bench.py --sweep samples --variants jax_jit,jax_scan
    python benchmarks/bench.py --variants keras,jaxyard_cli --repeats 3 --alternate

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
    # optional: Keras 3 on its JAX backend (benchmarks/requirements-keras.txt), not a jaxyard dependency
    "keras": dict(script="keras_baseline.py", probe="import importlib.util as u, sys; u.find_spec('keras') or sys.exit("
                  "'keras is not installed: pip install -r benchmarks/requirements-keras.txt')"),
}

# (numerator, denominator) ratios of median steady-state step time; the Keras ones also of the
# epoch (steps and validation) and of the whole process.
RATIOS = [("jaxyard_engine", "jax_scan"), ("jaxyard_engine", "jax_jit"),
          ("seed_eager", "jaxyard_engine"), ("jax_jit", "jax_scan"), ("seed_eager", "jax_scan"),
          ("keras", "jaxyard_engine"), ("keras", "jaxyard_cli"), ("keras", "jax_scan")]
WIDE_RATIOS = {"keras"}  # numerators whose ratios cover step_ms, epoch_s and wall_s

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


def run_workload(workload, overrides, variants, repeats, max_steps, alternate=False):
    """Every variant `repeats` times: one after the other, or in turn (A B A B ...) if `alternate`."""
    cfg = workload_config(workload, **overrides)
    label = f"{workload} (samples={cfg['samples']}, epochs={cfg['epochs']})"
    print(f"\n== {label}", flush=True)
    out = dict(workload=workload, config=cfg, variants={}, skipped={}, ratios={}, alternate=alternate)
    results = {}
    for name in variants:
        if (reason := unavailable(name)) is None:
            results[name] = []
        else:
            print(f"  {name}: not available ({reason})", flush=True)
            out["skipped"][name] = reason
    order = ([(i, n) for i in range(repeats) for n in list(results)] if alternate
             else [(i, n) for n in list(results) for i in range(repeats)])
    for i, name in order:
        if name in out["skipped"]:
            continue
        try:
            results[name].append(run_once(name, workload, overrides, max_steps))
        except RuntimeError as err:
            print(f"  {name}: not available ({err})", flush=True)
            out["skipped"][name] = str(err)
            continue
        print(f"  {name} {i + 1}/{repeats}: {results[name][-1]['step_ms']:.3f} ms/step, "
              f"wall {results[name][-1]['wall_s']:.1f} s", flush=True)
    for name, runs in results.items():
        if name not in out["skipped"]:
            out["variants"][name] = aggregate(runs)
    for num, den in RATIOS:
        if num in out["variants"] and den in out["variants"]:
            for metric in ("step_ms", "epoch_s", "wall_s") if num in WIDE_RATIOS else ("step_ms",):
                key = f"{num} / {den}" + ("" if metric == "step_ms" else f" {metric}")
                out["ratios"][key] = ratio(results[num], results[den], metric, alternate)
    print_table(label, out)
    return out


def ratio(nums, dens, metric, paired):
    """Median of the pair-by-pair ratios when the runs alternated, else the ratio of the medians."""
    if paired:
        return statistics.median(n[metric] / d[metric] for n, d in zip(nums, dens, strict=True))
    return statistics.median(n[metric] for n in nums) / statistics.median(d[metric] for d in dens)


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
    how = "pair by pair, alternating runs" if out["alternate"] else "of medians"
    for name, value in out["ratios"].items():
        print(f"  {name}: {value:.2f}x  ({how})")


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
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the workload's")
    parser.add_argument("--alternate", action="store_true",
                        help="run the variants in turn (A B A B ...) and take ratios pair by pair, "
                             "so that the machine's drift cancels out")
    parser.add_argument("--out", type=Path, help="write all results as JSON here")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")

    start = time.perf_counter()
    if args.sweep:
        points = [("seed", o) for o in SWEEPS[args.sweep]]
    else:
        points = [(args.workload, {"epochs": args.epochs} if args.epochs else {})]
    runs = [run_workload(w, o, variants, args.repeats, args.max_steps, args.alternate) for w, o in points]
    total = time.perf_counter() - start
    print(f"\nwhole benchmark: {total:.1f} s")
    if args.out:
        args.out.write_text(json.dumps(dict(argv=sys.argv, total_s=total, runs=runs), indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
