"""jaxyard's variants for bench.py, and the local plugin that gives them the benchmark's data.

    python benchmarks/jaxyard_variants.py --variant jaxyard_engine --workload seed --json

jaxyard_engine  `jaxyard.train(config)` in this process (the library call)
jaxyard_cli     `python cli.py run ...` as a child process, start to exit

Both train the same data and math as baselines.py: adamw (weight decay 1e-4), linear warmup
then cosine decay, MLP with dropout 0.1, no checkpoints (their cost is measured separately).
This file is also a jaxyard plugin (`--plugin benchmarks/jaxyard_variants.py`) registering the
loader `bench`, so the CLI trains exactly the data the baselines do.
"""

import time

_start = time.perf_counter()
import attrs  # noqa: E402

import jaxyard  # noqa: E402
from jaxyard import Dataset, Split, hookimpl, param  # noqa: E402

if __name__ == "__main__":
    import jaxyard.core.train.engine  # jax, flax, optax: what the baselines' import_s holds

IMPORT_S = time.perf_counter() - _start

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@attrs.frozen
class BenchParams:
    workload: str = param("seed", "bench.py workload")
    samples: int = param(0, "training samples (0: the workload's)")
    epochs: int = param(0, "epochs the workload config is made for (0: the workload's)")


def bench(p: BenchParams, *, seed):
    """The benchmark's synthetic data (benchmarks/baselines.py make_data)."""
    sys.path.insert(0, str(HERE))
    from bench import workload_config
    from common import make_data

    cfg = workload_config(p.workload, p.samples or None, p.epochs or None)
    (x, y), (xv, yv) = make_data(cfg)
    return Dataset(Split(x, y), Split(xv, yv), Split(xv, yv), cfg["classes"])


@hookimpl
def jaxyard_register_loaders(register):
    register("bench", bench, params=BenchParams)


def settings(cfg, workload, samples, epochs):
    """`--set` strings for a bench.py workload config (the engine and the CLI take the same)."""
    run = dict(optimizer="adamw", scheduler="cosine", model="mlp", loader="bench", checkpointer="none",
               epochs=cfg["epochs"], batch_size=cfg["batch_size"], learning_rate=cfg["lr"], seed=cfg["seed"],
               warmup_steps=cfg["warmup_steps"])
    return [f"run.{k}={json.dumps(v)}" for k, v in run.items()] + [
        f"optimizer.weight_decay={cfg['weight_decay']}",
        f"model.hidden_dims={','.join(map(str, cfg['hidden']))}",
        f"model.dropout_rate={cfg['dropout']}",
        f"loader.workload={json.dumps(workload)}",
        f"loader.samples={samples or 0}",
        f"loader.epochs={epochs or 0}",
    ]


def timings_from(history, train_s):
    from common import Timings

    t = Timings()
    t.chunks = [(r["epoch"] - 1, r["step"] - (history[i - 1]["step"] if i else 0), r["train_time"]) for i, r in enumerate(history)]
    t.val_s = [r["val_time"] for r in history]
    return t, train_s


def run_engine(cfg, workload, samples, epochs):
    registry = jaxyard.build_registry(plugins=[__file__], strict=True)
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), sets=settings(cfg, workload, samples, epochs))
    with tempfile.TemporaryDirectory() as tmp:
        result = jaxyard.train(config, out_dir=Path(tmp) / "run")
    return timings_from(result.history, result.timings["train_s"]), result.history[-1], result.timings["compile_s"]


def run_cli(cfg, workload, samples, epochs):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "cli.py"), "--plugin", __file__, "run",
               *[a for item in settings(cfg, workload, samples, epochs) for a in ("--set", item)],
               "--out", str(out), "--no-compile-cache"]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"jaxyard run failed: {' '.join(cmd)}")
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((out / "summary.json").read_text())
    timings = timings_from(history, summary["timings"]["train_s"])
    return timings, history[-1], summary["timings"]["compile_s"], dict(cli_wall_s=wall, cli_peak_rss_mb=usage.ru_maxrss / 1024)


def main():
    import argparse

    sys.path.insert(0, str(HERE))
    from bench import WORKLOADS, workload_config

    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=("jaxyard_engine", "jaxyard_cli"), required=True)
    parser.add_argument("--workload", choices=WORKLOADS, default="seed")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = workload_config(args.workload, args.samples, args.epochs)
    extra = {}
    if args.variant == "jaxyard_engine":
        (timings, train_s), last, compile_s = run_engine(cfg, args.workload, args.samples, args.epochs)
    else:
        (timings, train_s), last, compile_s, extra = run_cli(cfg, args.workload, args.samples, args.epochs)
    summary = timings.summary(cfg, train_s)
    summary["compile_s"] = compile_s  # measured exactly by the engine (ahead-of-time compile)
    import jax

    result = dict(variant=args.variant, workload=args.workload, backend=jax.default_backend(), import_s=IMPORT_S, **summary,
                  train_loss=last["train_loss"], train_acc=last["train_acc"], val_loss=last["val_loss"], val_acc=last["val_acc"], **extra)
    print(json.dumps(result) if args.json else result)


if __name__ == "__main__":
    main()
