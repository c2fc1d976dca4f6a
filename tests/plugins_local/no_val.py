"""A local test plugin: loaders that give no validation split (the engine carves one from train).

``no-val``: ``Dataset(train, None, test)`` of learnable classes whose first feature is the row's
number in the loader's train split (a test can tell which rows were carved); ``no-val-dict``: the
same as ``{"x": ..., "y": ...}`` splits; ``no-val-stream``: a stream whose sizes say val 0.
"""

import attrs

from jaxyard import Dataset, Split, StreamingDataset, hookimpl, param


@attrs.frozen
class NoValParams:
    train_size: int = param(100, "training examples (before the carve)")
    features: int = param(6, "features per example (the first: the row's number)")


def _arrays(p, n, offset):
    import numpy as np

    rng = np.random.default_rng(offset)
    y = (np.arange(n) % 3).astype(np.int32)
    x = (rng.normal(size=(n, p.features)) + 2.0 * y[:, None]).astype(np.float32)
    x[:, 0] = offset + np.arange(n)
    return x, y


def no_val(p, *, seed):
    """Three classes, no val split."""
    return Dataset(Split(*_arrays(p, p.train_size, 0)), None, Split(*_arrays(p, 30, 10_000)), 3)


def no_val_dict(p, *, seed):
    """Three classes as dict splits, no val split."""
    (x, y), (tx, ty) = _arrays(p, p.train_size, 0), _arrays(p, 30, 10_000)
    return Dataset({"x": x, "y": y}, None, {"x": tx, "y": ty}, 3)


def no_val_stream(p, *, seed):
    """Streamed batches whose sizes give no val split."""
    (x, y) = _arrays(p, p.train_size, 0)

    def batches(split, batch_size, epoch):
        for start in range(0, len(y), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]

    return StreamingDataset(batches, (p.features,), 3, sizes={"train": p.train_size, "val": 0, "test": p.train_size})


@hookimpl
def jaxyard_register_loaders(register):
    register("no-val", no_val, params=NoValParams)
    register("no-val-dict", no_val_dict, params=NoValParams)
    register("no-val-stream", no_val_stream, params=NoValParams)
