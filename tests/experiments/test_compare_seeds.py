"""`jaxyard compare` on folders of runs, grouping the runs that differ only in their seed: mean ±
sample standard deviation and n per configuration (run directories written by hand, as in
test_compare.py: compare reads only files)."""

from __future__ import annotations

import json
import re
import statistics

import pytest
from test_compare import make_run, make_sweep

from jaxyard.core.errors import UsageError
from jaxyard.core.experiments import compare as C
from jaxyard.core.experiments import seeds as S

from helpers import assert_one_line_error

# (folder, name, optimizer, lr, seed, val_acc per epoch): 2 configurations x 2 seeds in runs/, one more alone elsewhere
RUNS = [
    ("runs", "adam-s0", "adam", 1e-3, 0, (0.5, 0.7)),
    ("runs", "adam-s1", "adam", 1e-3, 1, (0.6, 0.8)),
    ("runs", "sgd-s0", "sgd", 1e-3, 0, (0.4, 0.6)),
    ("runs", "sgd-s1", "sgd", 1e-3, 1, (0.5, 0.5)),
    ("other", "adam-lr2", "adam", 1e-2, 0, (0.9, 0.9)),
]


@pytest.fixture
def folder(tmp_path):
    for where, name, optimizer, lr, seed, accs in RUNS:
        make_run(tmp_path / where / name, optimizer=optimizer, lr=lr, seed=seed, accs=accs)
    (tmp_path / "runs" / "notes").mkdir()  # a directory that is no run: left out
    return tmp_path


def test_runs_that_differ_only_in_their_seed_are_one_configuration(folder):
    runs = C.load_runs([folder / "runs", folder / "other" / "adam-lr2"])  # a folder and a run directory
    assert [r.label for r in runs] == ["adam-s0", "adam-s1", "sgd-s0", "sgd-s1", "adam-lr2"]
    data = S.group_by_seed(runs)
    assert data["metric"] == "val_acc" and data["stats"] == ["final", "best", "test_acc", "test_loss"]
    assert "run.seed" not in data["differing"] and "run.optimizer" in data["differing"]
    adam_lr2, adam, sgd = data["groups"]  # best mean first
    assert (adam_lr2["n"], adam_lr2["runs"], adam_lr2["best"]) == (1, ["adam-lr2"], {"mean": 0.9, "std": None, "n": 1})
    assert adam["runs"] == ["adam-s0", "adam-s1"] and adam["seeds"] == [0, 1] and adam["config"]["run.learning_rate"] == 1e-3
    assert adam["best"] == {"mean": pytest.approx(0.75), "std": pytest.approx(statistics.stdev([0.7, 0.8])), "n": 2}
    assert adam["final"]["mean"] == pytest.approx(0.75) and adam["test_acc"]["mean"] == pytest.approx(0.73)
    assert sgd["best"]["mean"] == pytest.approx(0.55) and sgd["final"]["std"] == pytest.approx(statistics.stdev([0.6, 0.5]))
    assert S.repeated(data) and not S.repeated(S.group_by_seed(runs[:1] + runs[2:3]))


def test_compare_prints_mean_std_and_n_per_configuration(run_cli, folder):
    result = run_cli(["compare", folder / "runs", folder / "other"])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["run", "run.optimizer", "run.learning_rate"] and " n " in header and "seeds" in header
    assert [row.split()[0] for row in rows] == ["adam-lr2", "adam-s0", "sgd-s0"]
    assert rows[1].split()[1] == "+1" and "0.7500 ± 0.0707" in rows[1] and "0.7300 ± 0.0707" in rows[1] and "0, 1" in rows[1]
    assert "0.9000 " in rows[0] and "±" not in rows[0]  # alone: its value, n = 1
    per_run = run_cli(["compare", folder / "runs", "--per-run"])
    assert [row.split()[0] for row in per_run.stdout.splitlines()[1:]] == ["adam-s1", "adam-s0", "sgd-s0", "sgd-s1"]


def test_compare_json_has_the_groups_beside_the_runs(cli_json, folder):
    data = cli_json(["compare", folder / "runs", "--json", "--metric", "val_loss"])
    assert data["metric"] == "val_loss" and len(data["runs"]) == 4
    assert [(g["label"], g["n"], g["seeds"]) for g in data["groups"]] == [("adam-s0", 2, [0, 1]), ("sgd-s0", 2, [0, 1])]
    assert data["groups"][0]["best"]["mean"] == pytest.approx(0.25) and data["groups"][0]["best"]["n"] == 2


def test_a_sweeps_trials_folder_and_a_folder_holding_a_sweep(tmp_path):
    sweep = make_sweep(tmp_path / "runs" / "lr-sweep")
    assert [r.label for r in C.load_runs([sweep / "trials"])] == ["0000", "0001", "0003"]
    assert [r.label for r in C.load_runs([tmp_path / "runs"])] == ["lr-sweep/0000", "lr-sweep/0001", "lr-sweep/0003"]


def test_a_folder_without_runs_is_one_line(run_cli, tmp_path):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(UsageError, match=re.escape("is not a run directory (no config.toml) nor a sweep directory (no sweep.jsonl), and holds none")):
        C.load_runs([tmp_path / "empty"])
    result = run_cli(["compare", tmp_path / "empty"])
    assert_one_line_error(result, f"{tmp_path / 'empty'} is not a run directory", "or a folder of them")


def test_group_json_is_plain_data(folder):
    text = json.dumps(S.group_by_seed(C.load_runs([folder / "runs"])))
    assert "NaN" not in text and '"std": null' not in text  # every configuration here ran twice
