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


# --- only comparable runs are averaged ----------------------------------------------------------


def cut(path, epochs):
    """``path`` as a run stopped after ``epochs`` epochs: its first records, no summary.json."""
    lines = (path / "metrics.jsonl").read_text().splitlines()[:epochs]
    (path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    (path / "summary.json").unlink(missing_ok=True)
    return path


def test_an_unfinished_run_is_a_row_of_its_own(run_cli, tmp_path):
    """Seeds 0-2 finished their 3 epochs; seed 3 crashed after epoch 1: never averaged with them."""
    for seed, accs in enumerate([(0.3, 0.5, 0.4), (0.4, 0.6, 0.5), (0.5, 0.7, 0.6), (0.05, 0.9, 0.9)]):
        make_run(tmp_path / "runs" / f"s{seed}", seed=seed, accs=accs)
    cut(tmp_path / "runs" / "s3", 1)
    runs = C.load_runs([tmp_path / "runs"])
    assert [S.state(r) for r in runs] == ["finished"] * 3 + ["unfinished"]
    finished, unfinished = S.group_by_seed(runs)["groups"]
    assert (finished["state"], finished["seeds"], finished["epochs"]) == ("finished", [0, 1, 2], [3, 3, 3])
    assert finished["final"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.1), "n": 3}
    assert (unfinished["state"], unfinished["seeds"], unfinished["epochs"], unfinished["final"]["mean"]) == ("unfinished", [3], [1], 0.05)
    header, *rows = run_cli(["compare", tmp_path / "runs"]).stdout.splitlines()
    assert header.split()[:2] == ["run", "state"] and "epochs" in header
    assert rows[0].split()[:6] == ["s0", "+2", "finished", "3", "0,", "1,"] and "0.5000 ± 0.1000" in rows[0]
    assert rows[1].split()[:5] == ["s3", "unfinished", "1", "3", "1"] and "±" not in rows[1]


def test_a_sweeps_pruned_trials_are_apart_from_its_complete_ones(tmp_path):
    """Trials of one configuration but their seed: complete ones together, pruned ones by the epoch they reached."""
    sweep = tmp_path / "sw"
    lines = []
    for number, (state, epochs) in enumerate([("complete", 3), ("complete", 3), ("pruned", 2), ("pruned", 2), ("pruned", 1)]):
        run_dir = f"trials/{number:04d}"
        make_run(sweep / run_dir, seed=number, accs=(0.5, 0.6 + number / 100, 0.7), out=str(sweep / "trials"))
        if state == "pruned":
            cut(sweep / run_dir, epochs)
        lines.append({"trial": number, "state": state, "params": {"run.seed": number}, "run_dir": run_dir, "value": 0.5})
    (sweep / "sweep.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    groups = S.group_by_seed(C.load_runs([sweep]))["groups"]
    assert [(g["state"], g["seeds"], g["epochs"]) for g in groups] == [
        ("finished", [0, 1], [3, 3]), ("pruned", [2, 3], [2, 2]), ("pruned", [4], [1])
    ]
    assert groups[1]["final"]["mean"] == pytest.approx(0.625)  # epoch 2 of trials 2 and 3, never with the complete ones


def test_runs_with_the_same_seed_are_no_independent_samples(run_cli, tmp_path):
    make_run(tmp_path / "runs" / "a-s0", seed=0, accs=(0.5, 0.6))
    make_run(tmp_path / "runs" / "a-s0-again", seed=0, accs=(0.5, 0.9))
    make_run(tmp_path / "runs" / "a-s1", seed=1, accs=(0.5, 0.8))
    both, again = S.group_by_seed(C.load_runs([tmp_path / "runs"]))["groups"]
    assert (both["runs"], both["repeats"], both["best"]["std"]) == (["a-s0", "a-s1"], None, pytest.approx(statistics.stdev([0.6, 0.8])))
    assert (again["runs"], again["repeats"], again["n"], again["best"]["std"]) == (["a-s0-again"], "a-s0", 1, None)
    rows = run_cli(["compare", tmp_path / "runs"]).stdout.splitlines()
    assert rows[2].split()[0] == "a-s0-again" and "finished; same seed as a-s0" in rows[2]


def test_folders_are_read_in_natural_order_at_any_depth(tmp_path):
    for name in ("10", "2", "b/1", "a/3"):
        make_run(tmp_path / "runs" / name, seed=int(name[-1]))
    make_run(tmp_path / "runs" / "a" / "3" / "inner")  # inside a run directory: not one of the runs
    assert [r.label for r in C.load_runs([tmp_path / "runs"])] == ["2", "10", "3", "1"]
