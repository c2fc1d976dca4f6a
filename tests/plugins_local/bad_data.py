"""A loader whose features hold a NaN (row 7 of the validation split)."""

import attrs

from jaxyard import Dataset, Split, hookimpl


@attrs.frozen
class NoParams:
    pass


def nan_features(p, *, seed):
    """Gaussian features with one NaN in the validation split."""
    import numpy as np

    rng = np.random.default_rng(seed)
    splits = [Split(rng.normal(size=(n, 8)).astype(np.float32), rng.integers(0, 2, n).astype(np.int32)) for n in (64, 16, 16)]
    splits[1].x[7, 3] = np.nan
    return Dataset(*splits, num_classes=2)


@hookimpl
def jaxyard_register_loaders(register):
    register("nan-features", nan_features, params=NoParams)
