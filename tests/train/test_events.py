"""The loop as events: plugins that log, stop, fail; built-ins that can be disabled; loggers
isolated; a storage-only checkpointer getting retention and best from core."""

import json
from pathlib import Path

import pytest

import jaxyard

from helpers import LOCAL, TINY, as_options, assert_one_line_error, tiny


def config(*sets, plugins=(), disable=(), **run):
    registry = jaxyard.build_registry(plugins=[str(LOCAL / p) for p in plugins], disable=disable, strict=True)
    options = {"epochs": 3, "batch_size": 16, **run}
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options, sets=tiny(*sets))


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_a_ten_line_plugin_logs_every_epoch_and_stops_the_run(tmp_path):
    out = tmp_path / "run"
    result = jaxyard.train(config(plugins=["stop_when_good.py"], epochs=5), out_dir=out)
    assert result.stopped_early and result.stop_reason == "epoch 2 is enough"
    assert [r["epoch"] for r in lines(out / "my_log.jsonl")] == [1, 2]
    assert [r["epoch"] for r in lines(out / "metrics.jsonl")] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] and summary["stop_reason"] == "epoch 2 is enough"
    assert (out / "checkpoints" / "14").is_dir()  # the stopping epoch is saved (7 steps per epoch)


def test_events_reach_plugins_in_order_with_what_they_document(tmp_path):
    seen = []

    class Spy:
        @jaxyard.hookimpl
        def jaxyard_on_run_start(self, run):
            seen.append(("start", run.start_epoch, run.num_params, sorted(run.components), run.directory))

        @jaxyard.hookimpl
        def jaxyard_on_epoch_end(self, run, record):
            seen.append(("epoch", record["epoch"], record is run.history[-1]))

        @jaxyard.hookimpl
        def jaxyard_on_checkpoint_saved(self, step, path, record):
            seen.append(("saved", step, path.name, record["epoch"]))

        @jaxyard.hookimpl
        def jaxyard_on_run_end(self, result):
            seen.append(("end", sorted(result.test), result.stopped_early))

    cfg = config("run.save_every=2")
    cfg.registry.plugin_manager.register(Spy(), name="spy")
    out = tmp_path / "run"
    jaxyard.train(cfg, out_dir=out)
    assert seen == [
        ("start", 0, 676, ["checkpointer", "loader", "loggers", "model", "optimizer", "scheduler", "task"], out),
        ("epoch", 1, True),
        ("epoch", 2, True),
        ("saved", 14, "checkpoints", 2),
        ("epoch", 3, True),
        ("saved", 21, "checkpoints", 3),
        ("end", ["test_acc", "test_loss"], False),
    ]


def test_a_plugin_raising_in_an_event_is_one_line_and_keeps_what_was_written(run_cli, tmp_path):
    out = tmp_path / "run"
    args = ["--plugin", LOCAL / "raising_event.py", "run", "--out", out, "--epochs", "4", "--batch-size", "16"]
    args += as_options([*TINY, "run.save_every=1"])
    result = run_cli(args)
    err = assert_one_line_error(result, "failed in jaxyard_on_epoch_end: ZeroDivisionError: my plugin divided by zero", exit_code=1)
    assert "raising_event.py" in err
    # epoch 1 was logged and saved before the plugin failed at epoch 2; resume continues
    assert [r["epoch"] for r in lines(out / "metrics.jsonl")] == [1, 2]
    assert (out / "checkpoints" / "7").is_dir()
    resumed = run_cli(["resume", out])  # without the faulty plugin
    assert resumed.exit_code == 0, resumed.stderr
    assert [r["epoch"] for r in lines(out / "metrics.jsonl")] == [1, 2, 3, 4]


def test_run_failed_reaches_plugins_with_the_error(tmp_path):
    errors = []

    class Watcher:
        @jaxyard.hookimpl
        def jaxyard_on_run_failed(self, error):
            errors.append(error)

        @jaxyard.hookimpl
        def jaxyard_on_epoch_end(self):
            raise RuntimeError("boom")

    cfg = config()
    cfg.registry.plugin_manager.register(Watcher(), name="watcher")
    with pytest.raises(jaxyard.PluginError, match="plugin watcher failed in jaxyard_on_epoch_end: RuntimeError: boom"):
        jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert len(errors) == 1 and isinstance(errors[0], jaxyard.PluginError)


def test_built_in_plugins_can_be_disabled(run_cli, tmp_path):
    out = tmp_path / "run"
    args = ["--disable", "jaxyard.plugins.report", "--disable", "jaxyard.plugins.curves", "run", "--out", out, "--epochs", "2"]
    result = run_cli(args + as_options(TINY))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # the report is a plugin
    assert not (out / "training_curves.png").exists()
    assert len(lines(out / "metrics.jsonl")) == 2


def test_a_failing_logger_is_dropped_and_the_run_goes_on(tmp_path):
    warnings = []
    module = tmp_path / "broken_logger.py"
    module.write_text(
        "import jaxyard\n"
        "class Broken:\n"
        "    def start(self, run): pass\n"
        "    def log_epoch(self, record): raise OSError('disk on fire')\n"
        "    def finish(self, run, status, result=None): raise AssertionError('dropped')\n"
        "@jaxyard.hookimpl\n"
        "def jaxyard_register_loggers(register):\n"
        "    register('broken', lambda p, *, directory: Broken(), description='fails on purpose')\n"
    )
    registry = jaxyard.build_registry(plugins=[str(module)], strict=True)
    cfg = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"epochs": 3, "batch_size": 16}, sets=TINY, loggers=["broken"])
    out = tmp_path / "run"
    result = jaxyard.train(cfg, out_dir=out, warn=warnings.append)
    assert len(result.history) == 3
    assert warnings == ["Warning: logger 'broken' failed in log_epoch and was dropped: OSError: disk on fire"]
    assert len(lines(out / "metrics.jsonl")) == 3 and (out / "checkpoints" / "21").is_dir()


def test_csv_logger_equals_metrics_jsonl(finished_run):
    import csv

    out = finished_run().dir  # logged to jsonl and csv
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    expected = lines(out / "metrics.jsonl")
    assert len(rows) == 2
    assert [{k: float(v) for k, v in r.items()} for r in rows] == [{k: float(v) for k, v in r.items()} for r in expected]


def test_a_storage_only_checkpointer_gets_retention_and_best_from_core(tmp_path):
    """val_loss rises once the tiny net overfits random labels: the best epoch is an early one."""
    sets = ["run.checkpointer=npz", "run.save_every=1", "run.keep_latest=1", "run.keep_best=1", "loader.random_labels=true"]
    cfg = config(*sets, plugins=["npz_checkpointer.py"], epochs=6, learning_rate=3e-2)
    out = tmp_path / "run"
    result = jaxyard.train(cfg, out_dir=out)
    best = min(result.history, key=lambda r: r["val_loss"])
    latest = result.history[-1]
    assert best["step"] != latest["step"], "the workload must make an early epoch best"
    kept = sorted(int(p.name) for p in (out / "checkpoints").iterdir())
    assert kept == sorted({best["step"], latest["step"]})
    evaluation = jaxyard.evaluate(out, checkpoint="best", registry=cfg.registry)
    assert (evaluation.step, evaluation.epoch) == (best["step"], best["epoch"])
    assert jaxyard.evaluate(out, checkpoint="latest", registry=cfg.registry).step == latest["step"]
    assert json.loads((out / "summary.json").read_text())["best"]["step"] == best["step"]


def test_an_incomplete_checkpointer_is_refused_before_the_run_is_written(tmp_path):
    module = tmp_path / "half_checkpointer.py"
    module.write_text(
        "import jaxyard\n"
        "class Half:\n"
        "    def save(self, step, arrays, meta): pass\n"
        "@jaxyard.hookimpl\n"
        "def jaxyard_register_checkpointers(register):\n"
        "    register('half', lambda p, *, directory: Half(), description='no load, steps, delete, wait, close')\n"
    )
    registry = jaxyard.build_registry(plugins=[str(module)], strict=True)
    cfg = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"checkpointer": "half"}, sets=TINY)
    with pytest.raises(jaxyard.PluginError, match=r"checkpointer 'half' .* returned Half, which lacks steps, load, delete, wait, close"):
        jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resuming_a_run_that_stopped_early_trains_no_further_epoch(tmp_path):
    """Killed after the stopping epoch's checkpoint, before the summary: resume ends where it had."""
    cfg = config("run.patience=1", "run.min_delta=1000.0", epochs=6)
    out = tmp_path / "run"
    first = jaxyard.train(cfg, out_dir=out)
    assert first.stopped_early and len(first.history) == 2
    (out / "summary.json").unlink()
    again = jaxyard.resume(out, registry=cfg.registry)
    assert [r["epoch"] for r in again.history] == [1, 2] and again.stop_reason == first.stop_reason


def test_a_checkpointer_failing_to_save_is_named_not_the_plugin_that_asked(tmp_path):
    module = tmp_path / "fragile_checkpointer.py"
    module.write_text((LOCAL / "npz_checkpointer.py").read_text().replace(
        "        import numpy as np\n\n        if (self.directory", "        raise ValueError('disk quota exceeded')\n        if (self.directory", 1))
    registry = jaxyard.build_registry(plugins=[str(module)], strict=True)
    cfg = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"epochs": 2, "batch_size": 16, "checkpointer": "npz"}, sets=TINY)
    with pytest.raises(jaxyard.PluginError,
                       match=r"checkpointer 'npz' \(plugin .*fragile_checkpointer.py\) failed saving step 14: ValueError: disk quota exceeded"):
        jaxyard.train(cfg, out_dir=tmp_path / "run")


def test_a_diverged_epoch_is_not_in_the_history(tmp_path):
    seen = []

    class Watcher:
        @jaxyard.hookimpl
        def jaxyard_on_run_failed(self, run):
            seen.append([r["epoch"] for r in run.history])

    cfg = config("model.dropout_rate=0.0", optimizer="sgd", learning_rate=1e30)
    cfg.registry.plugin_manager.register(Watcher(), name="watcher")
    with pytest.raises(jaxyard.TrainingError, match="training diverged at epoch 1"):
        jaxyard.train(cfg, out_dir=tmp_path / "run")
    assert seen == [[]]
