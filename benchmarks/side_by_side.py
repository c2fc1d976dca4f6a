"""jaxyard's compiled epoch against the hand-written lax.scan epoch, alternating in one process.

    python benchmarks/side_by_side.py --workload seed --epochs 60

Fresh-process timings (bench.py) drift with the machine; here both loops train the same data
with the same math, epoch by epoch in turn, and the ratio is taken pair by pair, so drift
cancels out. The jaxyard side includes what the engine does per epoch (the shuffle key, the
compiled epoch, bringing the metric sums to the host) and the host side train() adds: the epoch-end
event through every built-in plugin (report, NaN guard, early stopping, checkpoint cadence) and
the jsonl logger writing metrics.jsonl.

Where Keras 3 is installed (benchmarks/requirements-keras.txt, optional), a third loop takes its
turn too: keras_baseline.py's model and optimizer, one `model.fit(..., initial_epoch=e,
epochs=e + 1)` per epoch (jit_compile, steps_per_execution = one epoch's steps up to 32, no
validation, as on the other two sides), timed by its callback from `on_epoch_begin` to
`on_epoch_end` with the variables blocked on; `--no-keras` leaves it out.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxyard  # noqa: E402
from jaxyard.core.train.build import build  # noqa: E402
from jaxyard.core.train.engine import describe_components, make_loggers  # noqa: E402
from jaxyard.core.train.events import Run, emit  # noqa: E402
from jaxyard.core.train.loggers import LoggerHub  # noqa: E402
from jaxyard.core.train.loop import make_loop, means  # noqa: E402

import baselines  # noqa: E402
import jaxyard_variants  # noqa: E402
from bench import WORKLOADS, workload_config  # noqa: E402


def hand_scan_epoch(cfg, train):
    """baselines.py's jax_scan loop, returned as (state, epoch_fn)."""
    tx = baselines.make_tx(cfg)
    params_key, dropout_key, _ = jax.random.split(jax.random.key(cfg["seed"]), 3)
    params = baselines.init_params(params_key, (cfg["features"], *cfg["hidden"], cfg["classes"]))
    update = baselines.make_update(cfg, tx, dropout_key)
    n, bs = cfg["samples"], cfg["batch_size"]

    @partial(jax.jit, donate_argnums=0)
    def epoch(state, x, y, key):
        def body(state, batch):
            idx, mask = batch
            return update(state, x[idx], y[idx], mask), None

        return jax.lax.scan(body, state, baselines.shuffle(key, n, bs))[0]

    return (params, tx.init(params), jnp.zeros((), jnp.int32)), epoch


def make_keras_epoch(cfg, train):
    """keras_baseline.py's model, one fit() per epoch; returns epoch -> seconds, or None without keras."""
    if importlib.util.find_spec("keras") is None:
        return None
    os.environ["KERAS_BACKEND"] = "jax"
    import keras_baseline

    model = keras_baseline.make_model(cfg)
    steps = baselines.steps_per_epoch(cfg)
    model.compile(optimizer=keras_baseline.make_optimizer(cfg), jit_compile=True, steps_per_execution=min(steps, 32),
                  loss=keras_baseline.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    timings = baselines.Timings()
    timer = keras_baseline.EpochTimer(timings, steps)
    timer.on_test_begin = lambda logs=None: None  # no validation on this side: the epoch is the training
    timer.on_epoch_end = lambda epoch, logs=None: timings.chunks.append((epoch, steps, timer._now() - timer.t0))

    def epoch(e):
        model.fit(*train, batch_size=cfg["batch_size"], initial_epoch=e, epochs=e + 1, shuffle=True, verbose=0, callbacks=[timer])
        return timings.chunks[-1][2]

    return epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=WORKLOADS, default="seed")
    parser.add_argument("--epochs", type=int, default=60, help="timed epochs of each loop")
    parser.add_argument("--no-keras", dest="keras", action="store_false", help="leave the Keras loop out")
    args = parser.parse_args()
    cfg = workload_config(args.workload, epochs=args.epochs + 1)

    registry = jaxyard.build_registry(plugins=[jaxyard_variants.__file__], strict=True)
    sets = jaxyard_variants.settings(cfg, args.workload, None, args.epochs + 1)
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), sets=sets)
    built = build(config)
    loop = make_loop(built)
    # the host side of an epoch as train() runs it: every built-in event plugin, the jsonl logger
    out = Path(tempfile.mkdtemp(prefix="jaxyard-side-by-side-"))
    run = Run(config, out, describe_components(config), built.sizes, built.num_params, built.steps_per_epoch,
              built.total_steps, built.warmup_steps, saver=lambda: run.history[-1]["step"])
    pm = registry.plugin_manager
    pm.register(LoggerHub(make_loggers(config, out), print))
    emit(pm, "jaxyard_on_run_start", run=run)

    def jaxyard_epoch(epoch, events=True):
        t0 = time.perf_counter()
        train_loss, train_acc = means(jax.device_get(loop.train_epoch(epoch)))
        record = {"epoch": epoch, "step": epoch * built.steps_per_epoch, "lr": float(built.epoch_lr[min(epoch, config.run.epochs)]),
                  "train_loss": train_loss, "train_acc": train_acc, "val_loss": train_loss, "val_acc": train_acc,
                  "train_time": time.perf_counter() - t0, "val_time": 0.0}
        if events:
            run.history.append(record)
            emit(pm, "jaxyard_on_epoch_end", run=run, record=record)

    train, _ = baselines.make_data(cfg)
    x, y = jax.device_put(train)
    state, hand_epoch = hand_scan_epoch(cfg, train)
    key = jax.random.key(1)

    keras_epoch = make_keras_epoch(cfg, train) if args.keras else None
    jaxyard_epoch(0)  # compile both
    state = jax.block_until_ready(hand_epoch(state, x, y, key))
    if keras_epoch:
        keras_epoch(0)
    ours, hand, bare, keras = [], [], [], []
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        jaxyard_epoch(epoch)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        jaxyard_epoch(epoch, events=False)  # the same epoch without the host side: what the events cost
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        state = jax.block_until_ready(hand_epoch(state, x, y, jax.random.fold_in(key, epoch)))
        hand.append(time.perf_counter() - t)
        if keras_epoch:
            keras.append(keras_epoch(epoch))

    steps = built.steps_per_epoch
    a, b = statistics.median(ours), statistics.median(hand)
    pairs = [o / h for o, h in zip(ours, hand, strict=True)]
    print(f"{args.workload}: {args.epochs} epochs of {steps} steps each, alternating, backend {jax.default_backend()}")
    print(f"  jaxyard engine  {a * 1e3:8.2f} ms/epoch  {a / steps * 1e3:.3f} ms/step")
    print(f"  hand-written    {b * 1e3:8.2f} ms/epoch  {b / steps * 1e3:.3f} ms/step")
    q = statistics.quantiles(pairs, n=4)
    print(f"  jaxyard / hand-written, pair by pair: median {statistics.median(pairs):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")
    events = [o / e for o, e in zip(ours, bare, strict=True)]
    q = statistics.quantiles(events, n=4)
    print(f"  with events / without, pair by pair: median {statistics.median(events):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}); "
          f"events {(statistics.median(ours) - statistics.median(bare)) * 1e3:.3f} ms/epoch")
    if keras:
        k = statistics.median(keras)
        pairs = [k_ / o for k_, o in zip(keras, ours, strict=True)]
        q = statistics.quantiles(pairs, n=4)
        print(f"  Keras 3 (jax)   {k * 1e3:8.2f} ms/epoch  {k / steps * 1e3:.3f} ms/step")
        print(f"  Keras / jaxyard, pair by pair: median {statistics.median(pairs):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")
    elif args.keras:
        print("  Keras 3: not installed (pip install -r benchmarks/requirements-keras.txt)")


if __name__ == "__main__":
    main()
