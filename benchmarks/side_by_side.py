"""jaxyard's compiled epoch against the hand-written lax.scan epoch, alternating in one process.

    python benchmarks/side_by_side.py --workload seed --epochs 60

Fresh-process timings (bench.py) drift with the machine; here both loops train the same data
with the same math, epoch by epoch in turn, and the ratio is taken pair by pair, so drift
cancels out. The jaxyard side includes what the engine does per epoch (the shuffle key, the
compiled epoch, bringing the metric sums to the host).
"""

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import baselines  # noqa: E402
import jaxyard  # noqa: E402
import jaxyard_variants  # noqa: E402
from bench import WORKLOADS, workload_config  # noqa: E402
from jaxyard.core import engine  # noqa: E402


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=WORKLOADS, default="seed")
    parser.add_argument("--epochs", type=int, default=60, help="timed epochs of each loop")
    args = parser.parse_args()
    cfg = workload_config(args.workload, epochs=args.epochs + 1)

    registry = jaxyard.build_registry(plugins=[jaxyard_variants.__file__], strict=True)
    sets = jaxyard_variants.settings(cfg, args.workload, None, args.epochs + 1)
    built = engine.build(jaxyard.resolve_config(registry, jaxyard.load_settings(), sets=sets))
    loop = engine.Loop(built)

    train, _ = baselines.make_data(cfg)
    x, y = jax.device_put(train)
    state, hand_epoch = hand_scan_epoch(cfg, train)
    key = jax.random.key(1)

    jax.device_get(loop.train_epoch(0))  # compile both
    state = jax.block_until_ready(hand_epoch(state, x, y, key))
    ours, hand = [], []
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        jax.device_get(loop.train_epoch(epoch))
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        state = jax.block_until_ready(hand_epoch(state, x, y, jax.random.fold_in(key, epoch)))
        hand.append(time.perf_counter() - t)

    steps = built.steps_per_epoch
    a, b = statistics.median(ours), statistics.median(hand)
    pairs = [o / h for o, h in zip(ours, hand)]
    print(f"{args.workload}: {args.epochs} epochs of {steps} steps each, alternating, backend {jax.default_backend()}")
    print(f"  jaxyard engine  {a * 1e3:8.2f} ms/epoch  {a / steps * 1e3:.3f} ms/step")
    print(f"  hand-written    {b * 1e3:8.2f} ms/epoch  {b / steps * 1e3:.3f} ms/step")
    q = statistics.quantiles(pairs, n=4)
    print(f"  jaxyard / hand-written, pair by pair: median {statistics.median(pairs):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
