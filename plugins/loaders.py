"""Built-in data loaders: synthetic data, scikit-learn's digits, and a user's own arrays."""

from __future__ import annotations

from pathlib import Path

import attrs
from attrs import validators as v

from jaxyard import Dataset, Split, UsageError, hookimpl, param

_fraction = [v.ge(0.0), v.lt(1.0)]


def _split_seed():
    return param(0, "seeds the split into train/val/test (the run's seed does not: every seed sees the same split)", validator=v.ge(0))


@attrs.frozen
class SyntheticParams:
    train_size: int = param(1000, "training examples", validator=v.ge(1))
    val_size: int = param(200, "validation examples", validator=v.ge(1))
    test_size: int = param(200, "test examples", validator=v.ge(1))
    features: int = param(784, "features per example", validator=v.ge(1))
    classes: int = param(10, "number of classes", validator=v.ge(2))
    class_sep: float = param(6.0, "expected distance between two class means, in noise standard deviations", validator=v.ge(0.0))
    random_labels: bool = param(False, "labels drawn at random, as in the Artifex example (nothing to learn)")
    data_seed: int = param(0, "seeds the data; runs with other seeds train on the same data", validator=v.ge(0))


def synthetic(p: SyntheticParams, *, seed):
    """Gaussian classes around random means (learnable), or the seed example's random labels."""
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    means = rng.normal(size=(p.classes, p.features)) * (p.class_sep / np.sqrt(2.0 * p.features))

    def split(n):
        y = rng.integers(0, p.classes, size=n)
        x = rng.normal(size=(n, p.features))
        if p.random_labels:
            return Split(x.astype(np.float32), y.astype(np.int32))
        return Split((x + means[y]).astype(np.float32), y.astype(np.int32))

    return Dataset(split(p.train_size), split(p.val_size), split(p.test_size), p.classes)


@attrs.frozen
class DigitsParams:
    val_fraction: float = param(0.15, "share of the 1,797 images held out for validation", validator=_fraction)
    test_fraction: float = param(0.15, "share held out for testing", validator=_fraction)
    split_seed: int = _split_seed()


def digits(p: DigitsParams, *, seed):
    """The 8x8 handwritten digits shipped with scikit-learn (pip install 'jaxyard[digits]')."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError("loader 'digits' needs scikit-learn: pip install 'jaxyard[digits]'") from None
    import numpy as np

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)
    return _split_arrays(x, data.target.astype(np.int32), p.val_fraction, p.test_fraction, p.split_seed, classes=10)


@attrs.frozen
class NpzParams:
    path: str = param("", "an .npz file holding x and y, or x_train, y_train, x_val, y_val, x_test, y_test")
    val_fraction: float = param(0.1, "share held out for validation when the file has only x and y", validator=_fraction)
    test_fraction: float = param(0.1, "share held out for testing when the file has only x and y", validator=_fraction)
    split_seed: int = _split_seed()


def npz(p: NpzParams, *, seed):
    """Arrays from a NumPy .npz file (read without pickle)."""
    import numpy as np

    path = _existing(p.path, "npz")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:  # not an npz, truncated, pickled objects: numpy raises several kinds
        raise UsageError(f"loader 'npz': cannot read {path}: {type(err).__name__}: {err}") from None
    if all(f"{a}_{s}" in arrays for a in "xy" for s in ("train", "val", "test")):
        splits = [Split(_features(arrays[f"x_{s}"]), _labels(arrays[f"y_{s}"], path)) for s in ("train", "val", "test")]
        classes = int(max(int(s.y.max()) for s in splits)) + 1
        return Dataset(*splits, classes)
    if "x" in arrays and "y" in arrays:
        y = _labels(arrays["y"], path)
        return _split_arrays(_features(arrays["x"]), y, p.val_fraction, p.test_fraction, p.split_seed)
    raise UsageError(
        f"loader 'npz': {path} holds {', '.join(sorted(arrays)) or 'nothing'}; "
        "expected x and y, or x_train, y_train, x_val, y_val, x_test and y_test"
    )


@attrs.frozen
class CsvParams:
    path: str = param("", "a CSV file of numbers, one example per row")
    label_column: int = param(-1, "column holding the integer class label (-1: the last)")
    header: bool = param(True, "the first row holds column names")
    delimiter: str = param(",", "field separator (one character)", validator=v.and_(v.min_len(1), v.max_len(1)))
    val_fraction: float = param(0.1, "share held out for validation", validator=_fraction)
    test_fraction: float = param(0.1, "share held out for testing", validator=_fraction)
    split_seed: int = _split_seed()


def csv(p: CsvParams, *, seed):
    """Rows of numbers from a CSV file, one column holding the class label."""
    import numpy as np

    path = _existing(p.path, "csv")
    try:
        table = np.loadtxt(path, delimiter=p.delimiter, skiprows=int(p.header), dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"loader 'csv': cannot parse {path}: {err}") from None
    columns = table.shape[1]
    if not -columns <= p.label_column < columns or columns < 2:
        raise UsageError(f"loader 'csv': label_column = {p.label_column}, but {path} has {columns} columns")
    y = table[:, p.label_column]
    x = np.delete(table, p.label_column % columns, axis=1)
    return _split_arrays(_features(x), _labels(y, path), p.val_fraction, p.test_fraction, p.split_seed)


def _existing(path: str, loader: str) -> Path:
    if not path:
        raise UsageError(f"loader {loader!r} needs a file: --set loader.path=FILE")
    if not Path(path).is_file():
        raise UsageError(f"loader {loader!r}: no such file {path}")
    return Path(path)


def _features(x):
    import numpy as np

    if not np.issubdtype(x.dtype, np.number):
        raise UsageError(f"features must be numeric, got dtype {x.dtype}")
    return x.astype(np.float32)


def _labels(y, path):
    import numpy as np

    if not np.issubdtype(y.dtype, np.number) or (y != np.round(y)).any() or (y < 0).any():
        raise UsageError(f"{path}: labels must be non-negative integers")
    return y.astype(np.int32)


def _split_arrays(x, y, val_fraction, test_fraction, seed, classes=None):
    import numpy as np

    n = len(y)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n - n_val - n_test < 1 or n_val < 1 or n_test < 1:
        raise UsageError(f"{n} examples cannot be split into train/val/test with fractions {val_fraction} and {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    x, y = x[order], y[order]
    test, val, train = (slice(0, n_test), slice(n_test, n_test + n_val), slice(n_test + n_val, n))
    classes = classes or int(y.max()) + 1
    return Dataset(Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test]), classes)


@hookimpl
def jaxyard_register_loaders(register):
    register("synthetic", synthetic, params=SyntheticParams)
    register("digits", digits, params=DigitsParams)
    register("npz", npz, params=NpzParams)
    register("csv", csv, params=CsvParams)
