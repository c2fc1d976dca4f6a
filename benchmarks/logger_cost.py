"""What each experiment logger costs per epoch, on the host, between compiled epochs.

    python benchmarks/logger_cost.py [--epochs 200] [--loggers jsonl,csv,tensorboard,mlflow,wandb]

Each logger is built by its registered factory in a fresh run directory, started with the
default workload's resolved configuration, fed ``--epochs`` records shaped like the default
workload's, and finished. Printed per logger: the median and max of ``log_epoch`` (the cost per
epoch), and the one-off costs of building (imports included), ``start`` and ``finish``.
Medians compare loggers in one process; run it on the machine you care about.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jaxyard
from jaxyard.core.train.engine import describe_components
from jaxyard.core.train.events import Run, RunResult


def record(epoch: int) -> dict:
    return {"epoch": epoch, "step": 32 * epoch, "lr": 1e-3 / epoch, "train_loss": 2.0 / epoch, "train_acc": 1 - 1 / (epoch + 1),
            "val_loss": 2.2 / epoch, "val_acc": 0.9 - 1 / (epoch + 2), "train_time": 0.02, "val_time": 0.002}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--loggers", default="jsonl,csv,tensorboard,mlflow,wandb")
    args = parser.parse_args()
    registry = jaxyard.build_registry()
    names = args.loggers.split(",")
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"epochs": args.epochs}, loggers=names)
    print(f"{'logger':12} {'log_epoch median ms':>20} {'max ms':>8} {'build s':>8} {'start s':>8} {'finish s':>9}")
    for choice in config.loggers:
        directory = Path(tempfile.mkdtemp(prefix=f"jaxyard-logger-{choice.name}-"))
        (directory / "config.toml").write_text(config.to_toml())
        run = Run(config, directory, describe_components(config), {"train": 1000, "val": 200, "test": 200}, 235146, 32,
                  32 * args.epochs, 100)
        t0 = time.perf_counter()
        logger = choice.create(directory=directory)
        t1 = time.perf_counter()
        logger.start(run)
        t2 = time.perf_counter()
        costs = []
        for epoch in range(1, args.epochs + 1):
            r = record(epoch)
            run.history.append(r)
            t = time.perf_counter()
            logger.log_epoch(r)
            costs.append(time.perf_counter() - t)
        result = RunResult(directory, run.history, {"test_loss": 0.4, "test_acc": 0.88}, False, {"total_s": 1.0, "train_s": 0.5, "compile_s": 0.2})
        t3 = time.perf_counter()
        logger.finish(run, "finished", result)
        t4 = time.perf_counter()
        print(f"{choice.name:12} {statistics.median(costs) * 1e3:20.3f} {max(costs) * 1e3:8.2f} {t1 - t0:8.2f} {t2 - t1:8.2f} {t4 - t3:9.3f}")


if __name__ == "__main__":
    main()
