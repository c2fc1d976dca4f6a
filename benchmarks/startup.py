"""Start-up cost of the commands users feel: each a fresh process, repeated, median and range.

    python benchmarks/startup.py --repeats 5 --out benchmarks/results-startup.json
    python benchmarks/startup.py --default-only --warm-only --breakdown 3   # issue 22's number, and where it goes

`--help`, `list`, `show` and `plugins` must not import jax; `python -c pass` and
`python -c "import jax"` are the floor and the cost they avoid. `run` is timed with a cold
and a warm persistent compilation cache: the default run (orbax checkpoints, the curves PNG;
issue 22's target: at most 2.0 s warm on 2 cores) and the same with checkpoints off.

`--breakdown [N]` runs the default run N more times (warm cache, under ``-X importtime``) with timers
around its phases and prints them: imports (with the slowest top-level packages), backend start,
build, compile / cached-executable load, training, checkpoint saves and the final wait, the test
split, plotting, and the exit after the last line. The instrumented run is a little slower than
a plain one (importtime's own cost); its phases add up to its whole process (each phase's median is printed).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = [PY, str(ROOT / "cli.py")]

COMMANDS = {
    "python -c pass": [PY, "-c", "pass"],
    'python -c "import jax"': [PY, "-c", "import jax"],
    "cli.py --help": [*CLI, "--help"],
    "cli.py list": [*CLI, "list"],
    "cli.py show optimizer adamw": [*CLI, "show", "optimizer", "adamw"],
    "cli.py plugins": [*CLI, "plugins"],
}

RUNS = {  # name -> the run's options (a fresh --out each time)
    "cli.py run": [],
    "cli.py run --checkpointer none": ["--set", "run.checkpointer=none"],
}

# Run inside the instrumented process: wraps the phases of `cli.py run` with timers and writes
# {phase: [first start, last end, seconds in all, calls]} (time.time(): the parent's clock) to the file in
# argv[1]. It imports the engine first (jax, flax, optax: timed alone), then runs cli.py as `python cli.py`.
_HARNESS = r'''
import atexit, json, sys, time, runpy
marks = {"harness": [time.time(), time.time()]}
out, cli = sys.argv[1], sys.argv[2]
def wrap(owner, name, phase):
    fn = getattr(owner, name)
    def timed(*a, **k):
        t0 = time.time()
        try:
            return fn(*a, **k)
        finally:
            span = marks.setdefault(phase, [t0, 0.0, 0.0, 0])
            span[1] = time.time(); span[2] += span[1] - t0; span[3] += 1
    setattr(owner, name, timed)
class Finder:
    def find_spec(self, name, path=None, target=None):
        if name == "jaxyard.core.train.engine" and "engine" not in marks:
            marks["engine"] = [time.time()]
        return None
sys.meta_path.insert(0, Finder())
def patch():
    from jaxyard.core.train import engine, fit
    from jaxyard.core.store import policy
    from jax._src import xla_bridge
    marks["engine"].append(time.time())
    wrap(xla_bridge, "backends", "backend start")
    wrap(engine, "build", "build")
    wrap(engine, "make_checkpointer", "make checkpointer")
    wrap(fit.Fit, "train", "training (all epochs)")
    wrap(fit.Fit, "save_checkpoint", "checkpoint saves")
    wrap(policy.CheckpointPolicy, "finish", "checkpoint final wait")
    wrap(fit.Fit, "summarise", "test split + summary")
    import jaxyard.core.experiments.plot as plot
    wrap(plot, "plot_curves", "plotting")
    train = engine.train
    def timed_train(*a, **k):
        marks["train"] = [time.time()]
        result = train(*a, **k)
        marks["train"].append(time.time())
        marks["compile_s"] = result.timings.get("compile_s")
        return result
    engine.train = timed_train
import gc
gc.disable()  # as the CLI's run imports the engine (cli._imported_for_good): collector off, then frozen
import jaxyard.core.train.engine as _e  # noqa  (cost counted as the run's imports, as in a plain run)
patch()
gc.freeze(); gc.enable()
atexit.register(lambda: (marks.__setitem__("exit", [time.time()]), open(out, "w").write(json.dumps(marks))))
sys.argv = [cli, *sys.argv[3:]]
runpy.run_path(cli, run_name="__main__")
'''


def timed(cmd, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def user_env(**extra) -> dict:
    """The environment of a measured process: this one's, as a user's Python runs, with its bytecode
    cache (PYTHONDONTWRITEBYTECODE, which this project's machines set, would have every jaxyard
    module compiled from source at each start; the first, untimed run writes the cache)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def time_runs(repeats: int, runs: dict, *, warm_only: bool = False) -> dict:
    """Each run cold (a new compile cache) then warm (the same cache), alternating between the runs;
    ``warm_only``: one untimed run fills a cache, then each repeat is timed warm."""
    results: dict[str, list[float]] = {}
    if warm_only:
        with tempfile.TemporaryDirectory() as tmp:
            env = user_env(XDG_CACHE_HOME=tmp)
            for name, options in runs.items():
                subprocess.run([*CLI, "run", *options, "--out", f"{tmp}/fill-{len(results)}"], check=True, stdout=subprocess.DEVNULL, env=env)
                results[f"{name} (warm compile cache)"] = []
            for i in range(repeats):
                for name, options in runs.items():
                    results[f"{name} (warm compile cache)"].append(timed([*CLI, "run", *options, "--out", f"{tmp}/{i}-{len(name)}"], env))
        return {name: stats(values) for name, values in results.items()}
    for _ in range(repeats):
        for name, options in runs.items():
            with tempfile.TemporaryDirectory() as tmp:
                env = user_env(XDG_CACHE_HOME=tmp)
                run = [*CLI, "run", *options]
                results.setdefault(f"{name} (cold compile cache)", []).append(timed([*run, "--out", f"{tmp}/a"], env))
                results.setdefault(f"{name} (warm compile cache)", []).append(timed([*run, "--out", f"{tmp}/b"], env))
    return {name: stats(values) for name, values in results.items()}


def importtime_top(lines: list[str], top: int = 12) -> list[tuple[str, float]]:
    """The slowest packages from ``-X importtime`` lines: each package's own seconds (its modules,
    less the other packages they import), so jax is not inside flax's figure nor flax inside
    jaxyard's. (Imports made by another thread are counted too; importtime's nesting is approximate
    while two threads import.)"""
    rows = []
    for line in lines:
        if line.startswith("import time:") and "cumulative" not in line and line.count("|") == 2:
            _, cumulative, name = line.split("|")
            rows.append((len(name) - len(name.lstrip()), name.strip(), int(cumulative) / 1e6))
    totals: dict[str, float] = {}
    parents: list[tuple[int, str]] = []  # (indent, package) of the modules enclosing this one
    for indent, name, seconds in reversed(rows):  # importtime prints children first: reversed, parents come first
        while parents and parents[-1][0] >= indent:
            parents.pop()
        package = name.split(".")[0]
        if not parents or parents[-1][1] != package:
            totals[package] = totals.get(package, 0.0) + seconds
            if parents:  # not the importing package's own time
                totals[parents[-1][1]] -= seconds
        parents.append((indent, package))
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def breakdown(options: list[str]) -> dict:
    """One default run (warm cache) with its phases timed; returns {"phases": [(name, s)], "imports": [...], "total": s}."""
    with tempfile.TemporaryDirectory() as tmp:
        env = user_env(XDG_CACHE_HOME=tmp)
        subprocess.run([*CLI, "run", *options, "--out", f"{tmp}/a"], check=True, stdout=subprocess.DEVNULL, env=env)  # warm the cache
        marks_file = f"{tmp}/marks.json"
        t0 = time.time()
        proc = subprocess.run([PY, "-X", "importtime", "-c", _HARNESS, marks_file, str(ROOT / "cli.py"), "run", *options, "--out", f"{tmp}/b"],
                              check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        t_end = time.time()
        m = json.loads(Path(marks_file).read_text())
    total = lambda k: m[k][2] if k in m else 0.0  # noqa: E731
    compile_s = m.get("compile_s") or 0.0
    backend = total("backend start")
    build = total("build") - backend
    saves, wait = total("checkpoint saves"), total("checkpoint final wait")
    training = total("training (all epochs)") - compile_s - saves
    inside = m["train"][1] - m["train"][0]
    known = total("build") + total("make checkpointer") + total("training (all epochs)") + wait + total("test split + summary") + total("plotting")
    phases = [
        ("interpreter start", m["harness"][0] - t0),
        ("import the jaxyard package", m["engine"][0] - m["harness"][0]),
        ("import the engine (jax, flax, optax, ...)", m["engine"][1] - m["engine"][0]),
        ("cli: click, plugins, config, until train()", m["train"][0] - m["engine"][1]),
        ("backend start", backend),
        ("build (data, model, optimizer)", build),
        ("make checkpointer (orbax import)", total("make checkpointer")),
        ("compile / load cached executable", compile_s),
        ("training (epochs, less compile and saves)", training),
        ("checkpoint saves", saves),
        ("checkpoint final wait", wait),
        ("test split + summary", total("test split + summary")),
        ("plotting (matplotlib import + PNG)", total("plotting")),
        ("rest of train() (run dir, events, report)", inside - known),
        ("after train() until exit handlers", m["exit"][0] - m["train"][1]),
        ("exit (jax's clean-up, interpreter teardown)", t_end - m["exit"][0]),
    ]
    return {"phases": phases, "imports": importtime_top(proc.stderr.splitlines()), "total": t_end - t0}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-run", action="store_true", help="skip the `run` timings")
    parser.add_argument("--only-run", action="store_true", help="time only `run` (the default run, and checkpoints off)")
    parser.add_argument("--default-only", action="store_true", help="time only the default run (checkpoints and PNG on)")
    parser.add_argument("--warm-only", action="store_true", help="time `run` with a warm cache only (one untimed run fills it)")
    parser.add_argument("--breakdown", type=int, nargs="?", const=1, default=0, metavar="N",
                        help="N more default runs (1 if not given), their phases and imports timed: the median of each")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results = {}
    if not args.only_run and not args.default_only:
        for name, cmd in COMMANDS.items():
            timed(cmd, user_env())  # warm the file cache (and write the bytecode cache)
            results[name] = stats([timed(cmd, user_env()) for _ in range(args.repeats)])
    if not args.no_run:
        runs = {"cli.py run": RUNS["cli.py run"]} if args.default_only else RUNS
        results.update(time_runs(args.repeats, runs, warm_only=args.warm_only))

    width = max(map(len, results), default=20)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} cores, load average {load:.2f} at the end")
    print(f"{'command':<{width}}  median s  [min-max]")
    for name, s in results.items():
        print(f"{name:<{width}}  {s['median']:8.3f}  [{s['min']:.3f}-{s['max']:.3f}]")
    if args.breakdown:
        runs = [breakdown(RUNS["cli.py run"]) for _ in range(args.breakdown)]
        med = statistics.median
        b = {"total": med(r["total"] for r in runs), "runs": runs,
             "phases": [(name, med(dict(r["phases"])[name] for r in runs)) for name, _ in runs[0]["phases"]],
             "imports": sorted(((name, med(dict(r["imports"]).get(name, 0.0) for r in runs)) for name, _ in runs[0]["imports"]),
                               key=lambda kv: -kv[1])}
        results["breakdown"] = b
        what = "one run" if len(runs) == 1 else f"median of {len(runs)} runs"
        print(f"\nWhere the default run's time goes ({what}, warm cache, under -X importtime): {b['total']:.3f} s")
        for name, seconds in b["phases"]:
            print(f"  {name:<50} {seconds:7.3f}")
        print("Slowest imports by package (its own s, -X importtime):")
        for name, seconds in b["imports"]:
            print(f"  {name:<50} {seconds:7.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
