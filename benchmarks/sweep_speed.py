"""An N-learning-rate sweep of the default workload: one `jaxyard sweep` process against N
`jaxyard run` processes, alternating in one run of this script, each side a fresh process.

Both use JAX's persistent compilation cache, warmed by a first round that is not counted: the
runs then find their own compiled programs in it (the most favourable case for separate
runs); the sweep compiles one program for all its learning rates.

    .venv/bin/python benchmarks/sweep_speed.py --repeats 3            # default workload, 8 rates
    .venv/bin/python benchmarks/sweep_speed.py --repeats 3 --set loader.train_size=2000

Prints each side's wall time per round, the medians and the ratio runs/sweep per round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py")]


def timed(commands: list[list[str]]) -> float:
    start = time.perf_counter()
    for cmd in commands:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2,2e-2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KIND.KEY=VALUE for both sides")
    args = parser.parse_args()
    rates = args.rates.split(",")
    extra = [x for s in args.sets for x in ("--set", s)]
    work = Path(tempfile.mkdtemp(prefix="jaxyard-sweep-bench-"))
    rows = []
    try:
        for round_ in range(args.repeats + 1):  # round 0 warms the compile cache: not counted
            out = work / str(round_)
            sweep = [[*CLI, "sweep", "--lr", args.rates, "--prune", "none", "--out", str(out / "sweep"), *extra]]
            runs = [[*CLI, "run", "--lr", r, "--out", str(out / f"run-{i}"), *extra] for i, r in enumerate(rates)]
            a, b = timed(sweep), timed(runs)
            if round_:
                rows.append((a, b))
                print(f"round {round_}: sweep {a:.1f} s, {len(rates)} runs {b:.1f} s, ratio {b / a:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sweep_s, runs_s = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    ratio = statistics.median(r[1] / r[0] for r in rows)
    print(json.dumps({"rates": len(rates), "repeats": len(rows), "sweep_s": round(sweep_s, 2), "runs_s": round(runs_s, 2),
                      "runs_over_sweep": round(ratio, 2)}))


if __name__ == "__main__":
    main()
