"""A local test plugin: a model with a fixed input size and a streaming loader."""

import attrs

from jaxyard import StreamingDataset, hookimpl, param


@attrs.frozen
class FixedParams:
    in_features: int = param(10, "the only input size this model accepts")


def fixed(p, *, input_shape, num_classes, rngs):
    """A linear model that only takes inputs of in_features values."""
    from flax import nnx

    return nnx.Linear(p.in_features, num_classes, rngs=rngs)


@attrs.frozen
class StreamParams:
    train_size: int = param(100, "training examples (not a multiple of the batch size)")
    features: int = param(16, "features per example")


def stream(p, *, seed):
    """Synthetic data yielded batch by batch from Python."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(4, p.features)) * 2.0
    sizes = {"train": p.train_size, "val": 40, "test": 40}
    data = {}
    for split, n in sizes.items():
        y = rng.integers(0, 4, size=n).astype(np.int32)
        data[split] = ((means[y] + rng.normal(size=(n, p.features))).astype(np.float32), y)

    def batches(split, batch_size, epoch):
        x, y = data[split]
        order = np.random.default_rng([seed, epoch]).permutation(len(y)) if split == "train" else np.arange(len(y))
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]

    return StreamingDataset(batches, (p.features,), 4, sizes=sizes)


@hookimpl
def jaxyard_register_models(register):
    register("fixed", fixed, params=FixedParams)


@hookimpl
def jaxyard_register_loaders(register):
    register("stream", stream, params=StreamParams)
