"""`jaxyard compare` and the sweep figure, on run and sweep directories written by hand (nothing trains)."""

from __future__ import annotations

import json
import re

import pytest

from jaxyard.core.errors import UsageError
from jaxyard.core.experiments import compare as C
from jaxyard.core.registry.settings import dump_toml

from helpers import assert_one_line_error, probe_imports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPTIMIZERS = {"adam": {"b1": 0.9, "b2": 0.999}, "sgd": {"momentum": 0.9, "nesterov": False}}


def make_run(path, *, optimizer="adam", lr=1e-3, seed=0, out="runs", b2=None, accs=(0.5, 0.7, 0.6), summary=True, legacy=False):
    """A run directory as `jaxyard run` writes it; ``legacy``: an earlier version's (no timings, no lr)."""
    path.mkdir(parents=True)
    params = dict(OPTIMIZERS[optimizer], **({"b2": b2} if b2 is not None else {}))
    config = {
        "run": {"optimizer": optimizer, "scheduler": "cosine", "model": "mlp", "loader": "synthetic", "checkpointer": "orbax",
                "epochs": len(accs), "learning_rate": lr, "seed": seed, "eval_batch_size": 1000, "loggers": ["jsonl"], "out": out},
        "optimizer": {optimizer: params},
        "scheduler": {"cosine": {"alpha": 0.0}},
        "model": {"mlp": {"hidden_dims": [256, 128], "dropout_rate": 0.1}},
        "loader": {"synthetic": {"train_size": 1000}},
        "checkpointer": {"orbax": {"async_save": True}},
        "logger": {"jsonl": {"filename": "metrics.jsonl"}},
    }
    (path / "config.toml").write_text(dump_toml(config))
    records = []
    for epoch, acc in enumerate(accs, 1):
        record = {"epoch": epoch, "step": 10 * epoch, "lr": lr, "train_loss": 1 - acc + 0.05, "train_acc": acc + 0.05,
                  "val_loss": round(1 - acc, 6), "val_acc": acc, "train_time": 0.1, "val_time": 0.01}
        if legacy:
            for key in ("lr", "train_time", "val_time"):
                del record[key]
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        best = max(records, key=lambda r: -r["val_loss"])
        (path / "summary.json").write_text(json.dumps({
            "test": {"test_loss": 1 - max(accs) + 0.02, "test_acc": max(accs) - 0.02}, "epochs_run": len(accs), "stopped_early": False,
            "stop_reason": None, "best": {"monitor": "val_loss", **best}, "timings": {}, "versions": {},
        }))
    return path


def make_sweep(path):
    """A sweep over learning rate and b2: trials 0 and 3 complete (3 after a failed try), 1 pruned, 2 failed."""
    path.mkdir(parents=True)
    space = {"run.learning_rate": {"kind": "log", "low": 1e-4, "high": 1e-1}, "optimizer.b2": {"kind": "choice", "choices": [0.99, 0.999]}}
    (path / "sweep.json").write_text(json.dumps({"monitor": "val_loss", "direction": "minimize", "space": space}))
    trials = [(0, "complete", 1e-4, 0.99, (0.4, 0.5, 0.55)), (1, "pruned", 1e-1, 0.999, (0.2, 0.1)), (3, "complete", 1e-2, 0.999, (0.6, 0.8, 0.9))]
    lines = []
    for number, state, lr, b2, accs in trials:
        run_dir = f"trials/{number:04d}"
        make_run(path / run_dir, lr=lr, b2=b2, accs=accs, out=str(path / "trials"), summary=state == "complete")
        history = [json.loads(line) for line in (path / run_dir / "metrics.jsonl").read_text().splitlines()]
        best = min(history, key=lambda r: r["val_loss"])
        lines.append({"trial": number, "state": state, "params": {"run.learning_rate": lr, "optimizer.b2": b2}, "run_dir": run_dir,
                      "best": best, "final": history[-1], "test": None, "value": best["val_loss"], "seconds": 1.0, "error": None})
    failed = {"trial": 2, "state": "failed", "params": {"run.learning_rate": 3e-2, "optimizer.b2": 0.99}, "run_dir": None,
              "best": None, "final": None, "test": None, "value": None, "seconds": 0.1, "error": "TrainingError: NaN loss"}
    first_try = dict(lines[2], state="failed", run_dir=None, value=None, error="OSError: disk full")
    ordered = [lines[0], first_try, lines[1], failed, lines[2]]
    (path / "sweep.jsonl").write_text("".join(json.dumps(line) + "\n" for line in ordered))
    return path


REGRESSION = {"loss": "min", "mse": "min", "r2": "max"}


def make_regression_run(path, *, lr=1e-3, mses=(0.5, 0.2, 0.3), metrics=REGRESSION, summary=True):
    """A run of a task other than classification: its records and summary.json hold the task's
    metrics (``metrics``: base name -> direction, as summary.json records them)."""
    make_run(path, lr=lr, accs=(0.5,) * len(mses), summary=False)
    records = []
    for epoch, mse in enumerate(mses, 1):
        record = {"epoch": epoch, "step": 10 * epoch, "lr": lr}
        for split, shift in (("train", -0.01), ("val", 0.0)):
            record.update({f"{split}_loss": mse + shift, f"{split}_mse": mse + shift, f"{split}_r2": 1 - mse - shift})
        records.append({**record, "train_time": 0.1, "val_time": 0.01})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        best = min(mses)
        (path / "summary.json").write_text(json.dumps({
            "task": "regression", "metrics": metrics, "test": {"test_loss": best + 0.02, "test_mse": best + 0.02, "test_r2": 0.98 - best},
            "epochs_run": len(mses), "stopped_early": False, "stop_reason": None, "timings": {}, "versions": {},
        }))
    return path


@pytest.fixture
def dirs(tmp_path):
    """Three runs (one from an earlier version: no summary.json, no timings) and a sweep."""
    return {
        "adam": make_run(tmp_path / "runs" / "adam", accs=(0.5, 0.7, 0.6), out="runs-a"),
        "sgd": make_run(tmp_path / "runs" / "sgd", optimizer="sgd", lr=1e-2, accs=(0.6, 0.65, 0.75)),
        "legacy": make_run(tmp_path / "old" / "legacy", seed=1, accs=(0.3, 0.4), summary=False, legacy=True),
        "sweep": make_sweep(tmp_path / "lr-sweep"),
    }


def is_png(path) -> tuple[int, int]:
    """The PNG's (height, width), read back by matplotlib."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 0
    return imread(path).shape[:2]


# --- the library ---------------------------------------------------------------------------------


def test_load_runs_and_flattened_config(dirs):
    runs = C.load_runs([dirs["adam"], dirs["legacy"], dirs["sweep"]])
    assert [r.label for r in runs] == ["adam", "legacy", "lr-sweep/0000", "lr-sweep/0001", "lr-sweep/0003"]
    adam, legacy = runs[0], runs[1]
    assert adam.config["run.optimizer"] == "adam" and adam.config["optimizer.b1"] == 0.9 and adam.config["run.learning_rate"] == 1e-3
    assert adam.config["model.hidden_dims"] == [256, 128] and adam.config["logger.jsonl.filename"] == "metrics.jsonl"
    assert [r["epoch"] for r in adam.history] == [1, 2, 3] and adam.summary["epochs_run"] == 3
    assert legacy.summary is None and "train_time" not in legacy.history[0]
    assert runs[3].trial["state"] == "pruned" and runs[4].trial["error"] is None  # the retried trial: its last line wins


def test_labels_stay_unique_and_a_run_given_twice_is_read_once(tmp_path):
    make_run(tmp_path / "a" / "run")
    make_run(tmp_path / "b" / "run")
    runs = C.load_runs([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "a" / "run"])
    assert [r.label for r in runs] == ["a/run", "b/run"]


def test_differing_ignores_what_never_changes_the_numbers(dirs):
    runs = C.load_runs([dirs["adam"], dirs["sgd"], dirs["legacy"]])
    keys = C.differing(runs)
    assert keys == [
        "run.optimizer", "run.epochs", "run.learning_rate", "run.seed", "optimizer.b1", "optimizer.b2", "optimizer.momentum", "optimizer.nesterov"
    ]
    assert "run.out" not in keys  # differs (runs-a, runs), but never affects results
    assert C.differing(runs[:1]) == []


def test_table_best_first_with_final_best_and_test(dirs):
    runs = C.load_runs([dirs["adam"], dirs["sgd"], dirs["legacy"]])
    headers, rows = C.table(runs, "val_acc")
    assert headers == ["run", *C.differing(runs), "epochs", "final val_acc", "best val_acc", "test_acc", "test_loss"]
    assert [row[0] for row in rows] == ["sgd", "adam", "legacy"]
    by_label = {row[0]: dict(zip(headers, row, strict=True)) for row in rows}
    assert by_label["adam"]["final val_acc"] == 0.6 and by_label["adam"]["best val_acc"] == 0.7 and by_label["adam"]["epochs"] == 3
    assert by_label["adam"]["test_acc"] == pytest.approx(0.68) and by_label["sgd"]["optimizer.momentum"] == 0.9
    assert by_label["adam"]["optimizer.momentum"] is None  # adam has no momentum: blank
    assert by_label["legacy"]["epochs"] == 2 and by_label["legacy"]["test_acc"] is None  # no summary.json
    headers, rows = C.table(runs, "val_loss")  # losses: lower is better
    assert [row[0] for row in rows] == ["sgd", "adam", "legacy"] and rows[1][headers.index("best val_loss")] == pytest.approx(0.3)


def test_unknown_metric_names_the_valid_ones(dirs):
    runs = C.load_runs([dirs["adam"]])
    expected = "metric 'val_accuracy' is not recorded by these runs; did you mean val_acc? (valid: train_acc, train_loss, val_acc, val_loss)"
    with pytest.raises(UsageError, match=re.escape(expected)):
        C.table(runs, "val_accuracy")


def test_default_metric_is_the_tasks_first_besides_the_loss(dirs, tmp_path):
    """Classification (and 0.2 runs, without "metrics"): val_acc, as before; regression: val_mse."""
    runs = C.load_runs([dirs["adam"], dirs["sgd"], dirs["legacy"]])
    assert C.default_metric(runs) == "val_acc" and C.table(runs) == C.table(runs, "val_acc")
    assert C.test_columns(runs) == ["test_acc", "test_loss"]
    regression = C.load_runs([make_regression_run(tmp_path / "r1"), make_regression_run(tmp_path / "r2", mses=(0.4, 0.1))])
    assert C.default_metric(regression) == "val_mse" and C.test_columns(regression) == ["test_mse", "test_r2", "test_loss"]
    only_loss = C.load_runs([make_regression_run(tmp_path / "l", metrics={"loss": "min"})])
    assert C.default_metric(only_loss) == "val_loss"


def test_directions_come_from_the_summary(tmp_path):
    """val_r2 is maximized and val_mse minimized because summary.json says so, not by their names."""
    runs = C.load_runs([make_regression_run(tmp_path / "a", mses=(0.5, 0.2, 0.3)), make_regression_run(tmp_path / "b", mses=(0.4, 0.1))])
    assert C.metrics(runs) == ["train_loss", "train_mse", "train_r2", "val_loss", "val_mse", "val_r2"]  # no *_acc, no *_time
    data = C.summarize(runs)
    assert (data["metric"], data["direction"]) == ("val_mse", "min")
    assert [(e["label"], e["best"]) for e in data["runs"]] == [("b", pytest.approx(0.1)), ("a", pytest.approx(0.2))]
    assert data["runs"][0]["test_r2"] == pytest.approx(0.88) and data["runs"][0]["test_mse"] == pytest.approx(0.12)
    r2 = C.summarize(runs, "val_r2")
    assert r2["direction"] == "max" and [e["best"] for e in r2["runs"]] == [pytest.approx(0.9), pytest.approx(0.8)]
    headers, rows = C.table(runs)
    assert headers[-5:] == ["final val_mse", "best val_mse", "test_mse", "test_r2", "test_loss"]
    flipped = C.load_runs([make_regression_run(tmp_path / "c", metrics={"loss": "min", "mse": "max", "r2": "max"})])
    assert C.summarize(flipped, "val_mse")["direction"] == "max"  # whatever the task says, however the name reads


def test_a_metric_two_tasks_rank_opposite_ways_is_refused(tmp_path):
    runs = C.load_runs([make_regression_run(tmp_path / "a"), make_regression_run(tmp_path / "b", metrics={"loss": "min", "mse": "max"})])
    with pytest.raises(UsageError, match=re.escape("metric 'val_mse' is minimized in a but maximized in b: their tasks differ")):
        C.summarize(runs, "val_mse")
    assert C.summarize(runs, "val_loss")["direction"] == "min"  # the loss agrees


def test_a_run_without_its_tasks_metrics_recorded_has_the_02_ones(tmp_path):
    """Stopped before its summary.json: only loss (and acc) have a direction, so only they rank."""
    runs = C.load_runs([make_regression_run(tmp_path / "cut", summary=False)])
    assert C.metrics(runs) == ["train_loss", "val_loss"] and C.default_metric(runs) == "val_loss"
    with pytest.raises(UsageError, match="metric 'val_r2' is not recorded by these runs"):
        C.table(runs, "val_r2")


@pytest.mark.parametrize("name, make, fragment", [
    ("missing", None, "does not exist; expected a run directory (with config.toml) or a sweep directory (with sweep.jsonl)"),
    ("empty", lambda p: p.mkdir(), "is not a run directory (no config.toml) nor a sweep directory (no sweep.jsonl)"),
    ("torn-sweep", lambda p: (p.mkdir(), (p / "sweep.jsonl").write_text('{"trial": 0}\nnot json\n{"trial": 1}\n')),
     "sweep.jsonl:2 is not a JSON line"),
    ("empty-sweep", lambda p: (p.mkdir(), (p / "sweep.jsonl").write_text("")), "no runs to compare in"),
])
def test_bad_paths(tmp_path, name, make, fragment):
    if make:
        make(tmp_path / name)
    with pytest.raises(UsageError, match=re.escape(fragment)):
        C.load_runs([tmp_path / name])


def test_torn_last_lines_are_left_out(dirs):
    with open(dirs["adam"] / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "val_')
    assert len(C.load_runs([dirs["adam"]])[0].history) == 3


def test_plots_are_real_pngs(dirs, tmp_path):
    runs = C.load_runs([dirs["adam"], dirs["sgd"], dirs["legacy"], dirs["sweep"]])
    height, width = is_png(C.plot_compare(runs, "val_loss", tmp_path / "compare.png"))
    assert (width, height) == (1000, 500)
    sweep_png = C.plot_sweep(dirs["sweep"], tmp_path / "sweep.png")
    height, width = is_png(sweep_png)
    assert (width, height) == (1500, 400)  # two parameters and the curves: one row of three panels
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(UsageError, match="metric 'val_f1'"):
        C.plot_sweep(dirs["sweep"], tmp_path / "x.png", metric="val_f1")


# --- the command ---------------------------------------------------------------------------------


def test_compare_text(run_cli, dirs):
    result = run_cli(["compare", dirs["adam"], dirs["sgd"], dirs["legacy"]])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:2] == ["run", "run.optimizer"] and header.rstrip().endswith("test_loss")
    assert [row.split()[0] for row in rows] == ["sgd", "adam", "legacy"]
    assert "0.7000" in rows[1] and "0.6800" in rows[1]
    column = header.index("run.optimizer")
    assert [row[column:].split()[0] for row in rows] == ["sgd", "adam", "adam"]  # aligned under its header


def test_compare_json_and_png(run_cli, dirs, tmp_path):
    png = tmp_path / "out.png"
    result = run_cli(["compare", dirs["sweep"], "--metric", "val_loss", "--json", "--png", png])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # the PNG's line goes to stderr: stdout stays JSON
    assert result.stderr.strip() == f"Plot saved to {png}"
    assert data["metric"] == "val_loss" and data["differing"] == ["run.epochs", "run.learning_rate", "optimizer.b2"]
    assert [(e["label"], e["state"]) for e in data["runs"]] == [
        ("lr-sweep/0003", "complete"), ("lr-sweep/0000", "complete"), ("lr-sweep/0001", "pruned")
    ]
    best = data["runs"][0]
    assert best["best"] == pytest.approx(0.1) and best["best_epoch"] == 3 and best["config"]["run.learning_rate"] == 1e-2
    assert data["runs"][2]["test_acc"] is None and data["runs"][2]["epochs"] == 2
    assert is_png(png)


def test_compare_regression_runs(run_cli, tmp_path):
    """No --metric: the task's first metric besides the loss (val_mse), lowest first; its test metrics."""
    a, b = make_regression_run(tmp_path / "a", mses=(0.5, 0.2, 0.3)), make_regression_run(tmp_path / "b", lr=1e-2, mses=(0.4, 0.1))
    result = run_cli(["compare", a, b])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[-7:] == ["final", "val_mse", "best", "val_mse", "test_mse", "test_r2", "test_loss"]
    assert [row.split()[0] for row in rows] == ["b", "a"]
    result = run_cli(["compare", a, b, "--metric", "val_r2", "--json"])
    data = json.loads(result.stdout)
    assert data["direction"] == "max" and [e["label"] for e in data["runs"]] == ["b", "a"]
    result = run_cli(["compare", a, "--metric", "val_acc"])
    assert_one_line_error(result, "metric 'val_acc' is not recorded", "valid: train_loss, train_mse, train_r2, val_loss, val_mse, val_r2")


def test_sweep_direction_from_its_tasks_metrics(tmp_path):
    """A sweep.json without "direction" (hand-written) takes it from its "metrics"."""
    path = make_sweep(tmp_path / "s")
    (path / "sweep.json").write_text(json.dumps({"monitor": "val_r2", "metrics": REGRESSION, "space": {}}))
    assert C.load_sweep(path).direction == "maximize"
    (path / "sweep.json").write_text(json.dumps({"monitor": "val_acc", "space": {}}))  # 0.2: no metrics
    assert C.load_sweep(path).direction == "maximize"


@pytest.mark.parametrize("args, fragments", [
    (["nowhere"], ["nowhere does not exist", "expected a run directory"]),
    (["RUN", "--metric", "val_f1"], ["metric 'val_f1' is not recorded", "valid: train_acc, train_loss, val_acc, val_loss"]),
])
def test_compare_errors_are_one_line(run_cli, dirs, tmp_path, args, fragments):
    args = [str(dirs["adam"]) if a == "RUN" else str(tmp_path / a) if a == "nowhere" else a for a in args]
    result = run_cli(["compare", *args])
    assert_one_line_error(result, *fragments)
    assert result.stdout == ""


def test_compare_imports_no_jax(dirs, tmp_path):
    """The command reads files and plots: jax, flax, optax and orbax are never imported."""
    for extra, allowed in (([], set()), (["--png", str(tmp_path / "c.png")], {"matplotlib", "numpy"})):
        argv = ["compare", str(dirs["adam"]), str(dirs["sweep"]), "--json", *extra]
        *_, report = probe_imports(["from jaxyard.cli import main", f"main({argv!r})"])
        assert report["exit"] == 0 and set(report["heavy"]) <= allowed, report


def test_compare_figure_keeps_the_best_ten(tmp_path, monkeypatch):
    from jaxyard.core.experiments import plot

    made = {}
    monkeypatch.setattr(plot, "_save", lambda fig, path: made.setdefault("fig", fig) and path)
    runs = C.load_runs([make_run(tmp_path / f"r{i:02d}", seed=i, accs=(0.01, 0.05 + 0.02 * i)) for i in range(12)])
    C.plot_compare(runs, "val_acc", tmp_path / "c.png")
    ax = made["fig"].axes[0]
    assert ax.get_title() == "val_acc per epoch (best 10 of 12 runs)"
    assert [t.get_text().split()[0] for t in ax.get_legend().get_texts()] == [f"r{i:02d}" for i in range(11, 1, -1)]


def test_format_rows():
    headers = ["run", "run.learning_rate", "model.hidden_dims", "optimizer.nesterov", "epochs", "final val_acc", "best val_acc"]
    rows = [["a", 3e-4, [256, 128], False, 3, 0.71234, None]]
    assert C.format_rows(headers, rows) == [["a", "0.0003", "[256, 128]", "false", "3", "0.7123", ""]]
