"""The grain loader (``--loader grain``) and grain_stream: batches shuffled by seed and epoch,
a position that restores, worker processes, and one-line errors."""

import json
import sys

import numpy as np
import pytest

from helpers import assert_one_line_error


def write_npz(path, rows=96, val=12, test=12, seed=0):
    """A small classification file in the npz loader's per-split convention (16 features, 4 classes)."""
    rng = np.random.default_rng(seed)
    n = rows + val + test
    x = rng.normal(size=(n, 16)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    np.savez(path, x_train=x[:rows], y_train=y[:rows], x_val=x[rows:rows + val], y_val=y[rows:rows + val],
             x_test=x[rows + val:], y_test=y[rows + val:])
    return path


@pytest.fixture
def data(tmp_path):
    return write_npz(tmp_path / "data.npz")


def stream(path, seed=1, **params):
    from jaxyard.plugins.grain_loader import GrainParams, grain

    return grain(GrainParams(path=str(path), **params), seed=seed)


def epoch_rows(ds, epoch, batch_size=8):
    """The training labels' row order of one epoch, batch by batch, and the batch count."""
    it = iter(ds.batches("train", batch_size, epoch))
    try:
        batches = list(it)
    finally:
        it.close()
    return np.concatenate([b[0][:, 0] for b in batches]), len(batches)


def test_the_grain_loader_shuffles_by_seed_and_epoch_and_resumes_its_position(data):
    """The same seed and epoch give the same order; another seed or epoch another; every row once an
    epoch; val in order; get_state after 5 batches restores on a fresh iterator to the 6th."""
    ds = stream(data)
    assert ds.resumable and ds.sizes() == {"train": 96, "val": 12, "test": 12} and ds.input_shape == (16,) and ds.num_classes == 4
    first, count = epoch_rows(ds, 1)
    assert count == 12
    assert np.array_equal(first, epoch_rows(stream(data), 1)[0])
    assert not np.array_equal(first, epoch_rows(ds, 2)[0])
    assert not np.array_equal(first, epoch_rows(stream(data, seed=2), 1)[0])
    x_train = np.load(data)["x_train"][:, 0]
    assert sorted(first) == sorted(x_train)
    val = [b for b in ds.batches("val", 8, 0)]
    assert np.array_equal(np.concatenate([b[0] for b in val]), np.load(data)["x_val"])

    it = iter(ds.batches("train", 8, 3))
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    sixth = next(it)
    it.close()
    fresh = iter(ds.batches("train", 8, 3))
    fresh.set_state(state)
    again = next(fresh)
    fresh.close()
    assert all(np.array_equal(a, b) for a, b in zip(sixth, again, strict=True))


def test_the_grain_loader_trains_in_rounds(data, run_cli, tmp_path):
    """A streamed grain run in steps (eval_every 5, past an epoch's end): every round validated."""
    out = tmp_path / "run"
    result = run_cli(["run", "--loader", "grain", "--set", f"loader.path={data}", "--set", "model.hidden_dims=32", "--batch-size", "8",
                      "--steps", "15", "--set", "run.eval_every=5", "--set", "loader.prefetch=0", "--checkpointer", "none", "--out", out])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in records)


def test_grain_stream_wraps_a_random_access_source():
    """A plugin's own data source (``__len__``/``__getitem__``, dict examples): batches stacked as dicts,
    the input shape read from the first example, the train split shuffled, val/test in order."""
    from jaxyard.plugins.grain_loader import grain_stream

    class Squares:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"x": np.full((3,), i, np.float32), "y": np.int32(i % 2)}

    ds = grain_stream({"train": Squares(20), "val": Squares(6), "test": Squares(6)}, seed=0, num_classes=2, prefetch=0)
    assert ds.input_shape == (3,) and ds.sizes() == {"train": 20, "val": 6, "test": 6} and ds.resumable
    batches = list(ds.batches("train", 8, 1))
    assert [len(b["y"]) for b in batches] == [8, 8, 4]
    order = np.concatenate([b["x"][:, 0] for b in batches])
    assert sorted(order) == list(range(20)) and list(order) != list(range(20))
    assert list(order) == [v for b in ds.batches("train", 8, 1) for v in b["x"][:, 0]]  # the same seed and epoch: the same order
    assert list(order) != [v for b in ds.batches("train", 8, 2) for v in b["x"][:, 0]]
    assert list(np.concatenate([b["x"][:, 0] for b in ds.batches("val", 4, 0)])) == list(range(6))


def test_grain_stream_needs_every_split():
    from jaxyard import UsageError
    from jaxyard.plugins.grain_loader import grain_stream

    with pytest.raises(UsageError, match="grain_stream: splits has no val, test .*give train, val and test"):
        grain_stream({"train": [1, 2]}, seed=0)


def test_a_missing_grain_names_the_extra(data, run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # import grain raises ImportError
    result = run_cli(["run", "--loader", "grain", "--set", f"loader.path={data}", "--out", tmp_path / "run"])
    assert_one_line_error(result, "loader 'grain' needs grain, which is not installed: pip install 'jaxyard[grain]'")


@pytest.mark.parametrize("path, fragment", [("", "loader 'grain' needs a file: --set loader.path=FILE"),
                                            ("missing.npz", "loader 'grain': no such file missing.npz")], ids=["none", "missing"])
def test_a_bad_path_is_one_line(run_cli, tmp_path, path, fragment, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli(["run", "--loader", "grain", "--set", f"loader.path={path}", "--out", tmp_path / "run"])
    assert_one_line_error(result, fragment)


def test_a_bad_file_is_named_as_the_grain_loaders(tmp_path, run_cli):
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((4, 2)))
    result = run_cli(["run", "--loader", "grain", "--set", f"loader.path={bad}", "--out", tmp_path / "run"])
    assert_one_line_error(result, f"loader 'grain': {bad} holds features; expected x and y")


@pytest.mark.slow
def test_worker_processes_give_the_batches_read_in_process(data):
    """worker_count=2 (grain's worker processes) reads an epoch's batches in the same order as in this
    process, and its position restores too."""
    ds = stream(data, worker_count=2)
    it = iter(ds.batches("train", 8, 1))
    try:
        batches = [next(it) for _ in range(4)]
        state = json.loads(json.dumps(it.get_state()))
        rest = list(it)
    finally:
        it.close()
    order = np.concatenate([b[0][:, 0] for b in batches + rest])
    assert np.array_equal(order, epoch_rows(stream(data), 1)[0])
    fresh = iter(ds.batches("train", 8, 1))
    try:
        fresh.set_state(state)
        assert np.array_equal(next(fresh)[0], rest[0][0])
    finally:
        fresh.close()
