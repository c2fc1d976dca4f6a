"""A loader without a validation split (``Dataset(train, None, test)``) gets one carved from train:
run.val_fraction of its rows, chosen by a fixed seed (the same for every run.seed), disjoint from
the rows left to train; the run trains, and the report says how many were carved."""

import json
import math

import numpy as np
import pytest

import jaxyard
from jaxyard.core.train.build import load_data
from jaxyard.core.train.carve import CARVE_SEED, carve_validation

from helpers import LOCAL, assert_one_line_error

NO_VAL = LOCAL / "no_val.py"


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(plugins=[str(NO_VAL)], strict=True)


def config_of(registry, loader="no-val", *sets, seed=0):
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"loader": loader, "seed": seed, "batch_size": 16},
                                  sets=list(sets))


def rows_of(split) -> np.ndarray:
    """The loader's row numbers (its first feature) of a split."""
    x = split["x"] if isinstance(split, dict) else split.x
    return np.asarray(x)[:, 0].astype(int)


def test_a_loader_without_val_trains_and_the_report_says_how_many_were_carved(run_cli, tmp_path):
    out = tmp_path / "r"
    result = run_cli(["--plugin", NO_VAL, "run", "--loader", "no-val", "--epochs", "1", "--batch-size", "16", "--checkpointer", "none",
                      "--set", "run.curves=false", "--set", "model.hidden_dims=16", "--out", out])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "  Train samples: 90\n  Validation samples: 10\n  Test samples: 30\n" in result.stdout
    assert "  Validation: 10 examples carved from train (run.val_fraction = 0.1)\n" in result.stdout
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(record["val_loss"]) and 0.0 <= record["val_acc"] <= 1.0


@pytest.mark.parametrize("loader", ["no-val", "no-val-dict"])
def test_the_carve_is_deterministic_disjoint_and_adds_up(registry, loader):
    """The same rows for every run.seed and every load; val and train split the loader's train rows."""
    data, steps_per_epoch = load_data(config_of(registry, loader, "run.val_fraction=0.25", "loader.train_size=41"))
    again, _ = load_data(config_of(registry, loader, "run.val_fraction=0.25", "loader.train_size=41", seed=7))
    train, val = rows_of(data.train), rows_of(data.val)
    assert data.sizes() == {"train": 31, "val": 10, "test": 30, "val_carved": 10}  # round(41 * 0.25) = 10
    assert steps_per_epoch == 2  # batches of the 31 rows left to train
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(41))
    assert list(train) == sorted(train)  # train keeps the loader's order
    assert np.array_equal(val, rows_of(again.val)) and np.array_equal(train, rows_of(again.train))
    expected = np.sort(np.random.default_rng(CARVE_SEED).permutation(41)[:10])
    assert np.array_equal(val, expected)
    y = data.train["y"] if isinstance(data.train, dict) else data.train.y
    assert np.array_equal(np.asarray(y), train % 3)  # each row's label went with it


def test_a_loader_with_a_val_split_is_not_touched(registry):
    config = config_of(registry, "synthetic")
    data = config.loader.create(seed=0)
    assert carve_validation(config, data) is data


@pytest.mark.parametrize(("loader", "sets", "fragments"), [
    ("no-val", ["run.val_fraction=0"], ["loader 'no-val' gives no validation split and run.val_fraction = 0", "--set run.val_fraction=0.1"]),
    ("no-val", ["loader.train_size=1", "run.batch_size=1"], ["its 1 training example cannot spare run.val_fraction = 0.1"]),
    ("no-val-stream", [], ["loader 'no-val-stream' streams no validation split", "cannot be carved from a stream"]),
])
def test_what_cannot_be_carved_is_refused_in_one_line(run_cli, tmp_path, loader, sets, fragments):
    args = [x for s in sets for x in ("--set", s)]
    result = run_cli(["--plugin", NO_VAL, "run", "--loader", loader, "--epochs", "1", *args, "--out", tmp_path / "x"])
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x").exists()
