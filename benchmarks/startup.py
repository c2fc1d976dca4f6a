"""Start-up cost of the commands users feel: each a fresh process, repeated, median and range.

    python benchmarks/startup.py --repeats 5 --out benchmarks/results-startup.json

`--help`, `list`, `show` and `plugins` must not import jax; `python -c pass` and
`python -c "import jax"` are the floor and the cost they avoid. `run` is timed with a cold
and a warm persistent compilation cache (the default run, checkpoints off).
"""

import argparse
import json
import shutil
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


def timed(cmd, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-run", action="store_true", help="skip the `run` timings")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results = {}
    for name, cmd in COMMANDS.items():
        timed(cmd)  # warm the file cache
        results[name] = stats([timed(cmd) for _ in range(args.repeats)])
    if not args.no_run:
        import os

        cold, warm = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "XDG_CACHE_HOME": tmp}
                run = [*CLI, "run", "--set", "run.checkpointer=none"]
                cold.append(timed([*run, "--out", f"{tmp}/a"], env))
                warm.append(timed([*run, "--out", f"{tmp}/b"], env))
                shutil.rmtree(f"{tmp}/a")
        results["cli.py run (cold compile cache)"] = stats(cold)
        results["cli.py run (warm compile cache)"] = stats(warm)

    width = max(map(len, results))
    print(f"{'command':<{width}}  median s  [min-max]")
    for name, s in results.items():
        print(f"{name:<{width}}  {s['median']:8.3f}  [{s['min']:.3f}-{s['max']:.3f}]")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
