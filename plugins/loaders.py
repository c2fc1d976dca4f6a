"""Built-in data loaders: synthetic data (classes, regression targets, multi-label tags, token
sequences), scikit-learn's digits, and a user's own arrays."""

from __future__ import annotations

from pathlib import Path

import attrs
from attrs import validators as v

from jaxyard import Dataset, MissingExtra, Split, UsageError, hookimpl, param

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
class RegressionParams:
    train_size: int = param(4000, "training examples", validator=v.ge(1))
    val_size: int = param(500, "validation examples", validator=v.ge(1))
    test_size: int = param(500, "test examples", validator=v.ge(1))
    features: int = param(8, "features per example", validator=v.ge(1))
    targets: int = param(1, "float targets per example (1: y of shape (n,); more: (n, targets))", validator=v.ge(1))
    waves: int = param(3, "sine waves along random directions added to each target's linear part (0: linear)",
                       validator=v.ge(0))
    noise: float = param(0.1, "standard deviation of the noise added to each target (the signal's is 1)",
                         validator=v.ge(0.0))
    data_seed: int = param(0, "seeds the data; runs with other seeds train on the same data", validator=v.ge(0))


def regression(p: RegressionParams, *, seed):
    """Synthetic regression: float targets from a fixed random function of Gaussian features, plus noise (learnable).

    Each target is a random linear function of the features plus ``waves`` sines along random
    directions, standardized (mean 0, standard deviation 1), plus Gaussian ``noise``: an MLP
    reaches R² of about 0.93 in 3 epochs and 0.96 in 10 (a linear fit 0.6 to 0.75). Features
    float32 (n, features); targets float32 (n,), or (n, targets); ``num_classes`` None.
    """
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    linear = rng.normal(size=(p.features, p.targets)) / np.sqrt(p.features)
    directions = rng.normal(size=(p.features, p.targets * p.waves))
    directions /= np.linalg.norm(directions, axis=0)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=p.targets * p.waves)
    sizes = (p.train_size, p.val_size, p.test_size)
    x = rng.normal(size=(sum(sizes), p.features))
    waves = np.sin(x @ directions + phases).reshape(len(x), p.targets, p.waves).sum(axis=2)
    signal = x @ linear + waves  # a linear fit explains 60-75% of its variance, an MLP 95%
    signal = (signal - signal.mean(axis=0)) / signal.std(axis=0)  # each target: mean 0, standard deviation 1
    y = signal + p.noise * rng.normal(size=signal.shape)
    if p.targets == 1:
        y = y[:, 0]
    x, y = x.astype(np.float32), y.astype(np.float32)
    return Dataset(*_consecutive(x, y, sizes), None)


def _consecutive(x, y, sizes):
    """Train, val and test splits of ``sizes`` rows, in order (the rows are already random)."""
    import numpy as np

    ends = np.cumsum(sizes)
    return [Split(x[a:b], y[a:b]) for a, b in zip((0, *ends[:2]), ends, strict=True)]


@attrs.frozen
class MultilabelParams:
    train_size: int = param(1000, "training examples", validator=v.ge(1))
    val_size: int = param(200, "validation examples", validator=v.ge(1))
    test_size: int = param(200, "test examples", validator=v.ge(1))
    features: int = param(16, "features per example", validator=v.ge(1))
    labels: int = param(5, "0/1 labels per example (1: y of shape (n,), a binary task)", validator=v.ge(1))
    flip: float = param(0.0, "share of labels flipped at random (label noise)", validator=[v.ge(0.0), v.lt(0.5)])
    data_seed: int = param(0, "seeds the data; runs with other seeds train on the same data", validator=v.ge(0))


def multilabel(p: MultilabelParams, *, seed):
    """Synthetic multi-label data: 0/1 labels from thresholded random projections of Gaussian features (learnable).

    Label j is on where a fixed random projection of the features exceeds its threshold (0.25 to
    1 standard deviations: each label is on for about 16% to 40% of the examples, so predicting
    all zeros scores about 0.75 accuracy), then flipped with probability ``flip``. Features float32
    (n, features); labels int32 (n, labels), or (n,) for one label; ``num_classes`` None.
    """
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    projection = rng.normal(size=(p.features, p.labels)) / np.sqrt(p.features)
    # thresholds from 0.25 to 1.0 standard deviations: each label is on for 16% to 40% of the examples
    threshold = np.linspace(0.25, 1.0, p.labels)[rng.permutation(p.labels)]
    sizes = (p.train_size, p.val_size, p.test_size)
    x = rng.normal(size=(sum(sizes), p.features))
    y = x @ projection > threshold
    y ^= rng.random(y.shape) < p.flip
    if p.labels == 1:
        y = y[:, 0]
    x, y = x.astype(np.float32), y.astype(np.int32)
    return Dataset(*_consecutive(x, y, sizes), None)


@attrs.frozen
class TokensParams:
    train_size: int = param(2000, "training sequences", validator=v.ge(1))
    val_size: int = param(200, "validation sequences", validator=v.ge(1))
    test_size: int = param(200, "test sequences", validator=v.ge(1))
    vocab: int = param(24, "tokens in the vocabulary (the Dataset's num_classes)", validator=v.ge(2))
    seq_len: int = param(32, "tokens a model reads per sequence (each row holds seq_len + 1)", validator=v.ge(1))
    concentration: float = param(0.1, "Dirichlet concentration of each next-token distribution (smaller: more predictable)",
                                 validator=v.gt(0.0))
    data_seed: int = param(0, "seeds the data; runs with other seeds train on the same data", validator=v.ge(0))


def tokens(p: TokensParams, *, seed):
    """Synthetic token sequences from a fixed random Markov chain, for the next_token task.

    Each split is ``{"tokens": int32 (n, seq_len + 1)}``; ``num_classes`` is the vocabulary's size.
    The first token is uniform, each next one drawn from its predecessor's row of a random
    transition matrix (Dirichlet rows of ``concentration``): with the defaults a model of the
    previous token reaches a perplexity of about 4.6, a unigram model about 22.
    """
    import numpy as np

    rng = np.random.default_rng(p.data_seed)
    transition = rng.dirichlet(np.full(p.vocab, p.concentration), size=p.vocab)  # row a: P(next | a)
    cumulative = np.cumsum(transition, axis=1)
    cumulative[:, -1] = 1.0
    sizes = (p.train_size, p.val_size, p.test_size)
    rows = np.empty((sum(sizes), p.seq_len + 1), np.int64)
    rows[:, 0] = rng.integers(0, p.vocab, size=len(rows))
    draws = rng.random(rows.shape)
    for t in range(1, p.seq_len + 1):  # inverse-CDF sampling of every row's next token at once
        rows[:, t] = (draws[:, t, None] > cumulative[rows[:, t - 1]]).sum(axis=1)
    rows = np.minimum(rows, p.vocab - 1).astype(np.int32)
    ends = np.cumsum(sizes)
    splits = [{"tokens": rows[a:b]} for a, b in zip((0, *ends[:2]), ends, strict=True)]
    return Dataset(*splits, p.vocab)


@attrs.frozen
class DigitsParams:
    val_fraction: float = param(0.15, "share of the 1,797 images held out for validation", validator=_fraction)
    test_fraction: float = param(0.15, "share held out for testing", validator=_fraction)
    split_seed: int = _split_seed()
    image: bool = param(False, "give each digit as an 8x8x1 image, (n, 8, 8, 1): the cnn's 2-D input "
                               "(false: (n, 8, 8), which the cnn reads as a 1-D signal down the rows, the columns its channels, "
                               "unless model.conv_dims=2)")


def digits(p: DigitsParams, *, seed):
    """The 8x8 handwritten digits shipped with scikit-learn (pip install 'jaxyard[digits]').

    Features float32 in [0, 1] of shape (n, 8, 8), or (n, 8, 8, 1) with ``image`` (an image of
    one channel: the cnn's 2-D input); labels int32 0..9."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingExtra("loader 'digits'", "digits", "scikit-learn") from None
    import numpy as np

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)
    if p.image:
        x = x[..., None]
    return _split_arrays(x, data.target.astype(np.int32), p.val_fraction, p.test_fraction, p.split_seed, classes=10)


#: The most classes the npz and csv loaders infer from the labels (the largest label + 1); a larger
#: count is nearly always a stray value, and its output layer could need gigabytes. Set the
#: loader's ``classes`` parameter to go above it.
MAX_INFERRED_CLASSES = 1_000_000
_MAX_CLASSES = 2**31 - 1  # labels are stored as int32


def _classes_param():
    return param(
        0,
        f"number of classes; 0: the largest label + 1 (at most {MAX_INFERRED_CLASSES:,}; set it to go above)",
        validator=[v.ge(0), v.le(_MAX_CLASSES)],
    )


@attrs.frozen
class NpzParams:
    path: str = param("", "an .npz file holding x and y, or x_train, y_train, x_val, y_val, x_test, y_test")
    val_fraction: float = param(0.1, "share held out for validation when the file has only x and y", validator=_fraction)
    test_fraction: float = param(0.1, "share held out for testing when the file has only x and y", validator=_fraction)
    split_seed: int = _split_seed()
    classes: int = _classes_param()


def npz(p: NpzParams, *, seed):
    """Arrays from a NumPy .npz file (read without pickle)."""
    import numpy as np

    path = _existing(p.path, "npz")
    src = f"loader 'npz': {path}"
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as err:  # not an npz, truncated, pickled objects: numpy raises several kinds
        raise UsageError(f"{src}: cannot read it: {type(err).__name__}: {_first_line(err)}") from None
    if all(f"{a}_{s}" in arrays for a in "xy" for s in _SPLITS):
        splits, labels = [], []
        for s in _SPLITS:
            xkey, ykey = f"x_{s}", f"y_{s}"
            x, y = arrays[xkey], arrays[ykey]
            _check_rows(src, x, y, xkey, ykey)
            if len(y) == 0:
                raise UsageError(
                    f"{src}: the {s} split has 0 examples ({xkey} and {ykey} are empty); every split needs at least one"
                )
            labels.append(_labels(y, src, ykey, p.classes, rows=_index_row))
            x = _features(x, src, xkey)
            _check_finite(x, arrays[xkey], src, lambda row, k=xkey: f"{k} row {row}", split_of=lambda row, s=s: s)
            splits.append(Split(x, labels[-1]))
        classes = p.classes or max(int(y.max()) for y in labels) + 1
        return Dataset(*splits, classes)
    if "x" in arrays and "y" in arrays:
        x, y = arrays["x"], arrays["y"]
        _check_rows(src, x, y, "x", "y")
        labels = _labels(y, src, "y", p.classes, rows=_index_row)
        return _split_arrays(
            _features(x, src, "x"), labels, p.val_fraction, p.test_fraction, p.split_seed,
            classes=p.classes or None, src=src, original=x, where=lambda row: f"x row {row}",
        )
    raise UsageError(
        f"{src} holds {', '.join(sorted(arrays)) or 'nothing'}; "
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
    classes: int = _classes_param()


def csv(p: CsvParams, *, seed):
    """Rows of numbers from a CSV file, one column holding the class label."""
    import warnings

    import numpy as np

    path = _existing(p.path, "csv")
    src = f"loader 'csv': {path}"
    try:
        with warnings.catch_warnings():  # "input contained no data" is reported below, as one line
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, delimiter=p.delimiter, skiprows=int(p.header), dtype=np.float64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"{src}: cannot parse it: {_first_line(err)}") from None
    except OSError as err:
        raise UsageError(f"{src}: cannot read it: {type(err).__name__}: {err.strerror or _first_line(err)}") from None
    if table.size == 0:
        raise UsageError(_no_rows(path, src, p.header))
    columns = table.shape[1]
    if columns < 2:
        raise UsageError(f"{src} has 1 column; expected feature columns and a label column (delimiter {p.delimiter!r})")
    if not -columns <= p.label_column < columns:
        raise UsageError(
            f"{src}: label_column = {p.label_column}, but the file has {columns} columns; "
            f"use 0..{columns - 1} or -1 for the last"
        )
    y = table[:, p.label_column]
    x = np.delete(table, p.label_column % columns, axis=1)
    labels = _labels(y, src, f"label column {p.label_column}", p.classes, rows=_data_row)
    return _split_arrays(
        _features(x, src, "features"), labels, p.val_fraction, p.test_fraction, p.split_seed,
        classes=p.classes or None, src=src, original=x, where=_data_row,
    )


_SPLITS = ("train", "val", "test")


def _index_row(i: int) -> str:
    return f"row {i}"


def _data_row(i: int) -> str:
    return f"data row {i + 1}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _no_rows(path: Path, src: str, header: bool) -> str:
    try:
        with open(path, "rb") as f:
            lines = [line for line in f.read(1 << 16).splitlines() if line.strip()]
    except OSError:
        lines = []
    if header and lines:
        return f"{src} has a header row but no data rows; expected one example per row below it"
    return f"{src} is empty; expected {'a header row and ' if header else ''}one example per row"


def _existing(path: str, loader: str) -> Path:
    if not path:
        raise UsageError(f"loader {loader!r} needs a file: --set loader.path=FILE")
    if Path(path).is_dir():
        raise UsageError(f"loader {loader!r}: {path} is a directory; expected a .{loader} file")
    if not Path(path).is_file():
        raise UsageError(f"loader {loader!r}: no such file {path}")
    return Path(path)


def _number(value) -> str:
    """A value from the file as the user wrote it: 2147483648, not -2147483648 or 2.147483648e+09."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value) if isinstance(value, int) else f"{value:g}"


def _count(label) -> str:
    """How many classes a largest label makes: 2,147,483,649."""
    value = label.item() if hasattr(label, "item") else label
    if float(value) < 1e16:
        return f"{int(value) + 1:,}"
    return "more than 10^16"


def _check_rows(src: str, x, y, xkey: str, ykey: str) -> None:
    """One label per row of features."""
    if x.ndim == 0:
        raise UsageError(f"{src}: {xkey} is a single value (shape ()); expected one row of features per example")
    if y.ndim != 1:
        raise UsageError(f"{src}: {ykey} has shape {y.shape}; expected one label per example, shape ({len(x)},)")
    if len(x) != len(y):
        raise UsageError(
            f"{src}: {xkey} has {len(x)} rows but {ykey} has {len(y)} labels; expected one label per row"
        )


def _features(x, src: str, key: str):
    """Features as float32 (a value too large for float32 becomes inf: see _check_finite)."""
    import numpy as np

    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise UsageError(f"{src}: {key} must hold real numbers, got dtype {x.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        return x.astype(np.float32)


def _check_finite(x32, original, src: str, where, *, split_of) -> None:
    """Refuse NaN or infinite features, naming the first bad row and the split it belongs to.
    Cheap when all is well: one pass of np.isfinite."""
    import numpy as np

    if np.isfinite(x32).all():
        return
    bad = ~np.isfinite(x32.reshape(len(x32), -1))
    row = int(np.argwhere(bad.any(axis=1))[0][0])
    value = np.asarray(original).reshape(len(x32), -1)[row][bad[row]][0]
    what = _number(value)
    if np.isfinite(value):
        what += ", too large for float32 (at most 3.4e38)"
    raise UsageError(
        f"{src}: {where(row)} ({split_of(row)} split) holds {what}; features must be finite numbers: "
        "fix or drop that row"
    )


def _labels(y, src: str, key: str, classes: int, *, rows):
    """Labels as int32, checked on the values as given (before any cast can wrap or saturate them)."""
    import numpy as np

    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise UsageError(f"{src}: {key} must hold labels that are non-negative integers, got dtype {y.dtype}")
    if len(y) == 0:
        return y.astype(np.int32)
    if np.issubdtype(y.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            wrong = ~np.isfinite(y) | (y != np.round(y)) | (y < 0)
        if wrong.any():
            row = int(np.argmax(wrong))
            raise UsageError(f"{src}: {key} holds {_number(y[row])} at {rows(row)}; labels must be non-negative integers")
    elif (y < 0).any():
        row = int(np.argmax(y < 0))
        raise UsageError(f"{src}: {key} holds {_number(y[row])} at {rows(row)}; labels must be non-negative integers")
    row = int(np.argmax(y))
    high = y[row]
    if classes and high >= classes:
        raise UsageError(
            f"{src}: {key} holds label {_number(high)} at {rows(row)}, but loader.classes = {classes}; "
            f"labels must be 0..{classes - 1}"
        )
    if not classes and high >= MAX_INFERRED_CLASSES:
        if high < _MAX_CLASSES:
            fix = f"fix the label, or --set loader.classes={int(high) + 1} if that many classes is right"
        else:
            fix = f"fix the label (labels must be below {_MAX_CLASSES:,})"
        raise UsageError(
            f"{src}: {key} holds label {_number(high)} at {rows(row)}, which would make {_count(high)} classes; "
            f"at most {MAX_INFERRED_CLASSES:,} are inferred from the labels: {fix}"
        )
    return y.astype(np.int32)


def _split_arrays(x, y, val_fraction, test_fraction, seed, classes=None, *, src=None, original=None, where=None):
    import numpy as np

    n = len(y)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    if n - n_val - n_test < 1 or n_val < 1 or n_test < 1:
        prefix = f"{src}: " if src else ""
        raise UsageError(
            f"{prefix}{n} examples cannot be split into train/val/test with fractions {val_fraction} and {test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n)
    test, val, train = (slice(0, n_test), slice(n_test, n_test + n_val), slice(n_test + n_val, n))
    if src is not None:

        def split_of(row: int) -> str:
            position = int(np.flatnonzero(order == row)[0])
            return "test" if position < n_test else "val" if position < n_test + n_val else "train"

        _check_finite(x, x if original is None else original, src, where, split_of=split_of)
    x, y = x[order], y[order]
    classes = classes or int(y.max()) + 1
    return Dataset(Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test]), classes)


#: The standard-library packages whose modules (not their subpackages), sorted, make the text
#: loader's default corpus, read in this order up to ``max_chars``.
STDLIB_PACKAGES = ("json", "logging", "http", "urllib", "email", "unittest", "asyncio")


@attrs.frozen
class TextParams:
    path: str = param("", "a UTF-8 text file; empty: the Python standard library's own source (depends on the Python version)")
    tokenizer: str = param("byte", "byte: UTF-8 bytes (vocabulary 256); char: characters (vocabulary: the text's, sorted)",
                           validator=v.in_(("byte", "char")))
    seq_len: int = param(64, "tokens a model reads per window (each row holds seq_len + 1)", validator=v.ge(1))
    stride: int = param(0, "tokens from one training window's start to the next (0: seq_len; val and test windows never "
                        "overlap)", validator=v.ge(0))
    max_chars: int = param(200_000, "characters read from the start of the text (0: all of it)", validator=v.ge(0))
    val_fraction: float = param(0.05, "share of the text after the training part held out for validation", validator=[v.gt(0.0), v.lt(1.0)])
    test_fraction: float = param(0.05, "share at the end of the text held out for testing", validator=[v.gt(0.0), v.lt(1.0)])


def text(p: TextParams, *, seed):
    """Byte- or character-level token windows of a UTF-8 text file (default: Python's own source), for next_token.

    With no path it reads the standard library's source (the modules of ``STDLIB_PACKAGES`` under
    ``sysconfig``'s stdlib path: the same text for the same Python version), so it runs offline.

    The first ``max_chars`` characters are split by position: train, then the next ``val_fraction``
    (val), then the last ``test_fraction`` (test); each part is cut into windows of ``seq_len + 1``
    tokens on its own, so none crosses two parts. Each split is ``{"tokens": int32 (n, seq_len + 1)}``;
    ``num_classes`` is the vocabulary's size (256 bytes, or the text's distinct characters).
    """
    import numpy as np

    source, corpus = _text_of(p)
    if p.tokenizer == "byte":
        ids, vocab = np.frombuffer(corpus.encode("utf-8"), np.uint8).astype(np.int32), 256
    else:
        points = np.frombuffer(corpus.encode("utf-32-le"), np.uint32)
        alphabet = np.unique(points)
        ids, vocab = np.searchsorted(alphabet, points).astype(np.int32), len(alphabet)
    n, window = len(ids), p.seq_len + 1
    val, test = int(round(n * p.val_fraction)), int(round(n * p.test_fraction))
    splits = []
    for name, start, end in (("train", 0, n - val - test), ("val", n - val - test, n - test), ("test", n - test, n)):
        if end - start < window:
            part = "1 - val_fraction - test_fraction" if name == "train" else f"{name}_fraction"
            raise UsageError(f"{source} gives {n:,} tokens; its {name} part ({part}: {max(end - start, 0):,} tokens) is shorter "
                             f"than one window of seq_len + 1 = {window}: use a longer text (max_chars), a smaller seq_len "
                             f"or other fractions")
        stride = (p.stride or p.seq_len) if name == "train" else p.seq_len
        splits.append({"tokens": np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(ids[start:end], window)[::stride])})
    return Dataset(*splits, vocab)


def _text_of(p: TextParams) -> tuple[str, str]:
    """How the loader's messages name what it reads, and its first ``max_chars`` characters."""
    import sysconfig

    if not p.path:
        root = Path(sysconfig.get_paths()["stdlib"])
        modules = [m for package in STDLIB_PACKAGES for m in sorted((root / package).glob("*.py"))]
        if not modules:
            raise UsageError(f"loader 'text': no Python source under {root} (this Python ships without it); "
                             "pass --set loader.path=FILE, a UTF-8 text file")
        parts: list[str] = []
        while modules and not (p.max_chars and sum(map(len, parts)) >= p.max_chars):
            parts.append(modules.pop(0).read_text(encoding="utf-8"))
        return f"loader 'text': the standard library's source ({root})", "".join(parts)[:p.max_chars or None]
    source, fix = f"loader 'text': {p.path}", "pass --set loader.path=FILE, a UTF-8 text file (empty: the standard library's source)"
    if not Path(p.path).is_file():
        raise UsageError(f"{source} is a directory; {fix}" if Path(p.path).is_dir() else f"{source}: no such file; {fix}")
    try:
        with open(p.path, encoding="utf-8-sig", newline="") as f:
            corpus = f.read(p.max_chars or -1)
    except UnicodeDecodeError as err:
        raise UsageError(f"{source} is not UTF-8 text ({err.reason}: byte 0x{err.object[err.start]:02x}); convert it "
                         "(iconv -t UTF-8) or pass another file") from None
    except OSError as err:
        raise UsageError(f"{source}: cannot read it: {err.strerror or _first_line(err)}") from None
    if not corpus:
        raise UsageError(f"{source} is empty; {fix}")
    return source, corpus


@hookimpl
def jaxyard_register_loaders(register):
    register("synthetic", synthetic, params=SyntheticParams)
    register("digits", digits, params=DigitsParams)
    register("npz", npz, params=NpzParams)
    register("csv", csv, params=CsvParams)
    register("regression", regression, params=RegressionParams)
    register("multilabel", multilabel, params=MultilabelParams)
    register("tokens", tokens, params=TokensParams)
    register("text", text, params=TextParams)
