"""Bad files for the npz and csv loaders: each is refused with one line naming the file, the
value and the fix -- never a traceback, a numpy warning, a silently dropped row or a wrapped label."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jaxyard
from jaxyard.core.registry.params import build
from jaxyard.plugins.loaders import MAX_INFERRED_CLASSES


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(strict=True)


def load(registry, name, **values):
    entry = registry.get("loader", name)
    return entry.create(build(entry.params, values, where=f"loader {name!r}"), seed=0)


def refused(registry, name, path, *fragments, **values) -> str:
    """Load ``path``; assert a one-line UsageError naming the loader, the file and ``fragments``,
    with no warning on the way. Returns the message."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow / "no data" warnings are stray output
        with pytest.raises(jaxyard.UsageError) as info:
            load(registry, name, path=str(path), **values)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert f"loader {name!r}" in msg and str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    return msg


X = np.random.default_rng(0).normal(size=(50, 3))
Y = np.arange(50) % 3


def with_value(a, index, value):
    a = np.array(a, dtype=np.result_type(a, np.asarray(value)))
    a[index] = value
    return a


def split_arrays(**override):
    arrays = {}
    for s, n in (("train", 8), ("val", 4), ("test", 4)):
        arrays[f"x_{s}"] = np.ones((n, 2))
        arrays[f"y_{s}"] = np.arange(n) % 2
    return {**arrays, **override}


# ------------------------------------------------------------------------ npz

NPZ = {
    # (arrays, fragments the message must hold)
    "more x rows than labels": (dict(x=X, y=Y[:40]), ["x has 50 rows", "y has 40 labels"]),
    "fewer x rows than labels": (dict(x=X[:40], y=Y), ["x has 40 rows", "y has 50 labels"]),
    "split: x_val rows differ from y_val": (split_arrays(x_val=np.ones((7, 2))), ["x_val has 7 rows", "y_val has 4 labels"]),
    "split: 0 training examples": (
        split_arrays(x_train=np.ones((0, 2)), y_train=np.zeros(0, int)),
        ["train split has 0 examples", "x_train"],
    ),
    "split: 0 test examples": (split_arrays(x_test=np.ones((0, 2)), y_test=np.zeros(0, int)), ["test split has 0 examples"]),
    "label 2**31 (wrapped to -2147483648 by int32)": (
        dict(x=X, y=with_value(Y, 7, 2**31)),
        ["label 2147483648 at row 7", "2,147,483,649 classes", "labels must be below 2,147,483,647"],
    ),
    "label 2**32 (wrapped to 0)": (dict(x=X, y=with_value(Y, 7, 2**32)), ["label 4294967296", "row 7"]),
    "label 100000000 (a 51 GB output layer)": (
        dict(x=X, y=with_value(Y, 7, 100_000_000)),
        ["label 100000000 at row 7", "100,000,001 classes", "--set loader.classes=100000001"],
    ),
    "split: huge label in y_test": (split_arrays(y_test=with_value(np.arange(4) % 2, 2, 5_000_000)), ["y_test", "label 5000000"]),
    "negative label": (dict(x=X, y=with_value(Y, 3, -1)), ["-1 at row 3", "non-negative integers"]),
    "inf label": (dict(x=X, y=with_value(Y.astype(float), 9, np.inf)), ["inf at row 9", "non-negative integers"]),
    "nan label": (dict(x=X, y=with_value(Y.astype(float), 9, np.nan)), ["nan at row 9"]),
    "fractional label": (dict(x=X, y=with_value(Y.astype(float), 2, 1.5)), ["1.5 at row 2"]),
    "labels of shape (n, 2)": (dict(x=X, y=np.stack([Y, Y], 1)), ["y has shape (50, 2)", "one label per example"]),
    "a single label": (dict(x=X, y=np.array(3)), ["y has shape ()"]),
    "a single feature value": (dict(x=np.array(1.0), y=Y), ["x is a single value"]),
    "nan feature": (dict(x=with_value(X, (10, 1), np.nan), y=Y), ["x row 10", "holds nan", "split)"]),
    "inf feature": (dict(x=with_value(X, (10, 1), -np.inf), y=Y), ["x row 10", "holds -inf"]),
    "feature too large for float32": (dict(x=with_value(X, (12, 0), 1e300), y=Y), ["x row 12", "1e+300", "too large for float32"]),
    "split: nan feature in x_val": (split_arrays(x_val=with_value(np.ones((4, 2)), (3, 0), np.nan)), ["x_val row 3 (val split)"]),
    "complex features": (dict(x=X + 1j, y=Y), ["x must hold real numbers", "complex128"]),
    "boolean features": (dict(x=X > 0, y=Y), ["x must hold real numbers", "bool"]),
    "string labels": (dict(x=X, y=np.array(["a"] * 50)), ["y must hold labels that are non-negative integers"]),
    "no examples at all": (dict(x=np.ones((0, 3)), y=np.zeros(0, int)), ["0 examples cannot be split"]),
}


@pytest.mark.parametrize("case", list(NPZ), ids=list(NPZ))
def test_npz_bad_input_is_one_line(registry, tmp_path, case):
    arrays, fragments = NPZ[case]
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    refused(registry, "npz", path, *fragments)


def test_npz_nan_feature_names_the_split_it_lands_in(registry, tmp_path):
    path = tmp_path / "data.npz"
    x = np.arange(100 * 2, dtype=np.float64).reshape(100, 2)
    y = np.arange(100) % 2
    good = load(registry, "npz", path=str(_save(path, x, y)), val_fraction=0.2, test_fraction=0.2)
    test_rows = {int(r[0]) // 2 for r in good.test.x}  # which original rows ended up in test
    row = min(test_rows)
    msg = refused(registry, "npz", _save(path, with_value(x, (row, 1), np.nan), y), f"x row {row} (test split)",
                  val_fraction=0.2, test_fraction=0.2)
    assert "fix or drop that row" in msg


def _save(path, x, y):
    np.savez(path, x=x, y=y)
    return path


def test_npz_classes_param(registry, tmp_path):
    path = _save(tmp_path / "data.npz", X, with_value(Y, 7, 2_000_000))
    # above the inferred cap, but the user says so
    data = load(registry, "npz", path=str(path), classes=2_000_001)
    assert data.num_classes == 2_000_001 and data.train.y.dtype == np.int32
    assert int(max(data.train.y.max(), data.val.y.max(), data.test.y.max())) == 2_000_000
    # fewer classes than the labels need
    refused(registry, "npz", _save(path, X, Y), "label 2 at row 2", "loader.classes = 2", "0..1", classes=2)
    # more classes than the labels use: kept (a split may lack the last classes)
    assert load(registry, "npz", path=str(path), classes=5).num_classes == 5
    # the largest inferable count is accepted without the parameter
    path = _save(path, X, with_value(Y, 0, MAX_INFERRED_CLASSES - 1))
    assert load(registry, "npz", path=str(path)).num_classes == MAX_INFERRED_CLASSES


def test_npz_good_files_still_load(registry, tmp_path):
    path = _save(tmp_path / "data.npz", X.astype(np.float16), Y.astype(np.uint8))
    data = load(registry, "npz", path=str(path))
    assert data.num_classes == 3 and data.sizes() == {"train": 40, "val": 5, "test": 5}
    path = _save(tmp_path / "data.npz", X, Y.astype(np.float64))  # integer-valued float labels
    assert load(registry, "npz", path=str(path)).num_classes == 3


def test_npz_path_that_is_a_directory(registry, tmp_path):
    msg = refused(registry, "npz", tmp_path, "is a directory")
    assert "no such file" not in msg


# ------------------------------------------------------------------------ csv


def rows_text(n=30, *, feature=None, label=None, at=5):
    """``a,label`` rows; row ``at`` (0-based) gets the given feature and/or label text."""
    out = ["a,label"]
    for i in range(n):
        f = feature if (i == at and feature is not None) else str(i)
        lab = label if (i == at and label is not None) else str(i % 2)
        out.append(f"{f},{lab}")
    return "\n".join(out) + "\n"


CSV = {
    "empty file": ("", {}, ["is empty"]),
    "blank lines only": ("\n\n\n", {}, ["is empty"]),
    "empty file without header": ("", {"header": False}, ["is empty", "one example per row"]),
    "header only": ("a,b,label\n", {}, ["has a header row but no data rows"]),
    "header and blank lines": ("a,b,label\n\n\n", {}, ["no data rows"]),
    "a single column": ("label\n" + "\n".join(str(i % 2) for i in range(20)) + "\n", {}, ["has 1 column"]),
    "label column out of range": (rows_text(), {"label_column": 5}, ["label_column = 5", "has 2 columns", "0..1"]),
    "feature 1e300 (inf in float32)": (rows_text(feature="1e300"), {}, ["data row 6", "1e+300", "too large for float32", "split)"]),
    "feature 1e400 (inf when parsed)": (rows_text(feature="1e400"), {}, ["data row 6", "holds inf"]),
    "feature nan": (rows_text(feature="nan"), {}, ["data row 6", "holds nan"]),
    "label 2**31": (rows_text(label=str(2**31)), {}, ["label 2147483648", "data row 6", "2,147,483,649 classes"]),
    "label 1e300": (rows_text(label="1e300"), {}, ["label 1e+300 at data row 6", "more than 10^16 classes"]),
    "label inf": (rows_text(label="inf"), {}, ["holds inf at data row 6", "non-negative integers"]),
    "label -3": (rows_text(label="-3"), {}, ["holds -3 at data row 6", "non-negative integers"]),
    "label 0.5": (rows_text(label="0.5"), {}, ["holds 0.5 at data row 6", "non-negative integers"]),
    "text in a number column": (rows_text(feature="abc"), {}, ["cannot parse", "abc"]),
}


@pytest.mark.parametrize("case", list(CSV), ids=list(CSV))
def test_csv_bad_input_is_one_line(registry, tmp_path, case):
    text, values, fragments = CSV[case]
    path = tmp_path / "data.csv"
    path.write_text(text)
    refused(registry, "csv", path, *fragments, **values)


def test_csv_unreadable_file(registry, tmp_path, monkeypatch):
    path = tmp_path / "data.csv"
    path.write_text(rows_text())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(np, "loadtxt", denied)
    refused(registry, "csv", path, "cannot read it", "Permission denied")


def test_csv_classes_param_and_good_file(registry, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(rows_text())
    assert load(registry, "csv", path=str(path)).num_classes == 2
    assert load(registry, "csv", path=str(path), classes=4).num_classes == 4
    refused(registry, "csv", path, "loader.classes = 1", classes=1)
