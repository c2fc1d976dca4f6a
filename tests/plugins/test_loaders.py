"""The built-in loaders on real files: npz (no pickle) and csv, and their errors."""

import sys

import numpy as np
import pytest

import jaxyard
from jaxyard.core.registry.params import build


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(strict=True)


def load(registry, name, **values):
    entry = registry.get("loader", name)
    return entry.create(build(entry.params, values, where=f"loader {name!r}"), seed=0)


def test_npz_with_x_and_y_is_split_by_fractions(registry, tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.arange(200 * 3, dtype=np.float64).reshape(200, 3), y=np.arange(200) % 4)
    data = load(registry, "npz", path=str(path), val_fraction=0.1, test_fraction=0.2)
    assert data.sizes() == {"train": 140, "val": 20, "test": 40}
    assert data.num_classes == 4 and data.input_shape == (3,)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int32
    together = np.concatenate([data.train.x[:, 0], data.val.x[:, 0], data.test.x[:, 0]])
    assert sorted(together) == sorted(np.arange(200) * 3.0)  # a permutation: nothing lost or repeated


def test_npz_with_explicit_splits(registry, tmp_path):
    path = tmp_path / "splits.npz"
    arrays = {}
    for split, n in (("train", 30), ("val", 10), ("test", 12)):
        arrays[f"x_{split}"] = np.ones((n, 2, 2), np.float32)
        arrays[f"y_{split}"] = np.arange(n) % 3
    np.savez(path, **arrays)
    data = load(registry, "npz", path=str(path))
    assert data.sizes() == {"train": 30, "val": 10, "test": 12} and data.input_shape == (2, 2)


def test_npz_refuses_pickled_objects(registry, tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10))
    with pytest.raises(jaxyard.UsageError, match="cannot read"):
        load(registry, "npz", path=str(path))


@pytest.mark.parametrize(
    "path,match",
    [("", "needs a file: --set loader.path=FILE"), ("missing.npz", "no such file")],
)
def test_npz_path_errors(registry, tmp_path, path, match):
    with pytest.raises(jaxyard.UsageError, match=match):
        load(registry, "npz", path=str(tmp_path / path) if path else "")


def test_npz_with_other_arrays_names_what_it_holds(registry, tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, features=np.zeros((5, 2)))
    with pytest.raises(jaxyard.UsageError, match="holds features; expected x and y"):
        load(registry, "npz", path=str(path))


def test_csv_label_column_and_header(registry, tmp_path):
    path = tmp_path / "data.csv"
    rows = ["a,label,b"] + [f"{i},{i % 2},{-i}" for i in range(50)]
    path.write_text("\n".join(rows) + "\n")
    data = load(registry, "csv", path=str(path), label_column=1, val_fraction=0.2, test_fraction=0.2)
    assert data.sizes() == {"train": 30, "val": 10, "test": 10}
    assert data.input_shape == (2,) and data.num_classes == 2
    assert all(x[0] == -x[1] for x in data.train.x)  # the label column was taken out


def test_csv_with_bad_labels(registry, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("x,y\n" + "\n".join(f"{i},{i * 0.5}" for i in range(20)) + "\n")
    with pytest.raises(jaxyard.UsageError, match="labels must be non-negative integers"):
        load(registry, "csv", path=str(path))


def test_npz_trains_end_to_end(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 8)) + 3.0 * np.eye(3, 8)[y]
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    out = tmp_path / "run"
    args = ["run", "--loader", "npz", "--set", f"loader.path={tmp_path / 'mine.npz'}", "--set", "run.warmup_steps=0",
            "--set", "model.hidden_dims=16", "--epochs", "5", "--checkpointer", "none", "--lr", "1e-2", "--out", out]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    assert "Train samples: 240" in result.stdout
    assert float(result.stdout.split("Test Accuracy: ")[1].split()[0]) > 0.8


def test_digits_without_scikit_learn_names_the_extra(registry, monkeypatch):
    for name in ["sklearn", *(m for m in sys.modules if m.startswith("sklearn."))]:  # loaded already by another test, too
        monkeypatch.setitem(sys.modules, name, None)  # `import sklearn...` now raises ImportError
    with pytest.raises(jaxyard.UsageError, match=r"pip install 'jaxyard\[digits\]'"):
        load(registry, "digits")
