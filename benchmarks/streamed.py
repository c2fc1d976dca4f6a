"""A streamed epoch against an in-memory one, on the default workload, in one process:

    python benchmarks/streamed.py [--epochs 7] [--json]

The default run (mlp, the synthetic loader's 1000 training rows of 784 features, batch 32) as
- memory: its Dataset on the device, an epoch one compiled scan (the npz loader);
- stream: the same arrays through a StreamingDataset whose batches a Python generator yields,
  shuffled by epoch (one compiled step per batch);
- grain: the same file through ``--loader grain`` (in-process, prefetch 2).
Each is built once and its first epoch (compiling) left out; then the three train an epoch in
turn (so that each sees the machine's load alike), ``--epochs`` times; the median epoch (state
and sums ready) is printed, with each streamed one's ratio to memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import attrs

import jaxyard

HERE = Path(__file__).resolve()


@attrs.frozen
class StreamParams:
    path: str = jaxyard.param("", "the .npz file to stream")


def npz_stream(p: StreamParams, *, seed):
    """The npz loader's arrays, yielded batch by batch by a generator (shuffled by seed and epoch)."""
    import numpy as np

    from jaxyard.core.train.data import as_batch
    from jaxyard.plugins import loaders

    data = loaders.npz(loaders.NpzParams(path=p.path), seed=seed)
    splits = {s: as_batch(getattr(data, s)) for s in ("train", "val", "test")}

    def batches(split, batch_size, epoch):
        x, y = splits[split]
        order = np.random.default_rng([seed, epoch]).permutation(len(y)) if split == "train" else np.arange(len(y))
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]

    return jaxyard.StreamingDataset(batches, data.input_shape, data.num_classes, sizes={s: len(splits[s][1]) for s in splits})


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register("npz-stream", npz_stream, params=StreamParams)


def built_loop(registry, loader: str, path: Path, epochs: int):
    """The run's built state and its loop (make_loop: in memory or streamed), its first epoch trained (compiling)."""
    from jaxyard.core.train.build import build
    from jaxyard.core.train.loop import make_loop

    config = jaxyard.resolve_config(registry, jaxyard.Settings(), options={"loader": loader, "batch_size": 32, "epochs": epochs + 1},
                                    sets=[f"loader.path={path}"])
    built = build(config)
    loop = make_loop(built)
    timed_epoch(built, loop, 1)
    return built, loop


def timed_epoch(built, loop, epoch: int) -> float:
    import jax

    t0 = time.perf_counter()
    sums = loop.train_epoch(epoch)
    jax.block_until_ready((built.state, sums))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=7, help="timed epochs after the first (at least 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import numpy as np

    from jaxyard.plugins import loaders

    registry = jaxyard.build_registry(plugins=[str(HERE)], strict=True)
    data = loaders.synthetic(loaders.SyntheticParams(), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.npz"
        np.savez(path, **{f"{a}_{s}": getattr(getattr(data, s), a) for a in "xy" for s in ("train", "val", "test")})
        variants = {name: built_loop(registry, loader, path, args.epochs) for name, loader in
                    (("memory", "npz"), ("stream", "npz-stream"), ("grain", "grain"))}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for epoch in range(2, max(args.epochs, 5) + 2):  # interleaved: each variant sees the machine's load alike
            for name, (built, loop) in variants.items():
                times[name].append(timed_epoch(built, loop, epoch))
        for _, loop in variants.values():
            getattr(loop, "close", lambda: None)()
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = {f"{name}/memory": median[name] / median["memory"] for name in ("stream", "grain")}
    if args.json:
        print(json.dumps({"epoch_s": median, "ratios": ratios}))
        return
    for name, seconds in median.items():
        print(f"{name:7s} {seconds * 1e3:8.2f} ms an epoch" + (f"  ({ratios[f'{name}/memory']:.2f}x memory)" if name != "memory" else ""))


if __name__ == "__main__":
    sys.exit(main())
