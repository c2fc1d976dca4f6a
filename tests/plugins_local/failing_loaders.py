"""Loaders that fail one way each: an OSError from the factory, num_classes = 0, and a stream of
8 features in 4 classes whose batches go wrong as ``fault`` says (the first ones stay good where
the fault is a later batch's)."""

import attrs

import jaxyard

FAULTS = "none, late-labels (batches after the first), oversized (batch 2), raises (every batch), val-raises (the val split)"


@attrs.frozen
class NoParams:
    pass


@attrs.frozen
class StreamFault:
    fault: str = jaxyard.param("none", f"what goes wrong: {FAULTS}")
    classes: int = jaxyard.param(4, "the num_classes the stream declares")


def unreadable(p, *, seed):
    """Its file cannot be read (an OSError from the factory)."""
    raise PermissionError(13, "Permission denied", "/data/locked.npz")


def stream(p: StreamFault, *, seed):
    """Three batches a split, faulty as p.fault says."""
    import numpy as np

    def batches(split, batch_size, epoch):
        rng = np.random.default_rng([seed, epoch, len(split)])
        for i in range(3):
            if p.fault == "raises" or (p.fault == "val-raises" and split == "val"):
                raise ConnectionError("the data server went away")
            rows = batch_size + 5 if p.fault == "oversized" and i == 1 else batch_size
            x = rng.normal(size=(rows, 8)).astype(np.float32)
            y = rng.integers(0, 4, rows).astype(np.int32)
            if p.fault == "late-labels" and split == "train" and i > 0:
                y[2] = 9
            yield x, y

    return jaxyard.StreamingDataset(batches, (8,), p.classes, sizes={"train": 48, "val": None, "test": None})


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register("unreadable", unreadable, params=NoParams)
    register("faulty-batches", stream, params=StreamFault)
