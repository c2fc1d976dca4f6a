"""The failure paths a plugin author meets while upgrading a package: each is one line naming the
component, its plugin and what went wrong, and a run refused before training leaves no directory;
the report says nothing that is not so (no checkpoint saved, no warmup)."""

import pytest

from helpers import LOCAL, as_options, assert_one_line_error, tiny

LOADERS = LOCAL / "failing_loaders.py"
STREAMED = tiny(without=["loader"])  # the faulty stream has parameters of its own


def run(run_cli, out, *args, plugin=LOADERS, sets=None):
    sets = tiny() if sets is None else sets
    return run_cli(["--plugin", plugin, "run", "--out", out, "--epochs", "1", "--batch-size", "16", *args, *as_options(sets)])


@pytest.mark.parametrize("model, returned", [("linen-dense", "Dense"), ("linen-own", "TwoLayers")])
def test_a_model_factory_returning_a_linen_module_is_one_line(run_cli, tmp_path, model, returned):
    """Before: the shapes-only memory check traced the factory first, and a Dense is no pytree (47 lines)."""
    plugin = LOCAL / "linen_model.py"
    result = run(run_cli, tmp_path / "run", "--model", model, plugin=plugin, sets=tiny(without=["model"]))
    assert_one_line_error(result, f"model '{model}' (plugin {plugin}) returned {returned}, not an nnx.Module",
                          "a flax.linen module", "nnx.bridge.ToNNX", exit_code=1)
    assert not (tmp_path / "run").exists()


def test_a_factorys_os_error_names_its_plugin_and_the_exception(run_cli, tmp_path):
    result = run(run_cli, tmp_path / "run", "--loader", "unreadable", sets=[])
    assert_one_line_error(result, f"loader 'unreadable' (plugin {LOADERS}) failed: PermissionError: /data/locked.npz: Permission denied",
                          exit_code=1)


def test_num_classes_zero_is_refused_as_the_loaders(run_cli, tmp_path):
    """Not "outside 0..-1" nor "declares no num_classes": it declared 0."""
    result = run(run_cli, tmp_path / "run", "--loader", "faulty-batches", "--set", "loader.classes=0", sets=STREAMED)
    err = assert_one_line_error(result, f"loader 'faulty-batches' (plugin {LOADERS}) gave num_classes = 0", "at least 1", exit_code=1)
    assert "0..-1" not in err


@pytest.mark.parametrize(
    "fault, fragment",
    [
        ("oversized", "loader 'faulty-batches': train batch 2 of epoch 1 has 21 rows, more than the 16 asked for"),
        ("late-labels", "loader 'faulty-batches': train batch 2 of epoch 1 has labels "),
    ],
)
def test_a_bad_streamed_batch_after_the_first_names_the_loader_and_the_batch(run_cli, tmp_path, fault, fragment):
    """Every streamed batch is checked as the first is: bad labels are not "training diverged"."""
    result = run(run_cli, tmp_path / "run", "--loader", "faulty-batches", "--set", f"loader.fault={fault}", sets=STREAMED)
    err = assert_one_line_error(result, fragment)
    assert "diverged" not in err and (fault != "late-labels" or "outside 0..3 (num_classes)" in err)


@pytest.mark.parametrize("fault, split", [("raises", "train"), ("val-raises", "val")])
def test_a_streamed_loader_failing_at_its_first_batch_leaves_nothing(run_cli, tmp_path, fault, split):
    """One line naming the loader, its plugin and the exception; no run directory, so --out of it again works."""
    out = tmp_path / "run"
    result = run(run_cli, out, "--loader", "faulty-batches", "--set", f"loader.fault={fault}", sets=STREAMED)
    assert_one_line_error(result, f"loader 'faulty-batches' (plugin {LOADERS}) failed giving its first {split} batch: "
                                  "ConnectionError: the data server went away", exit_code=1)
    assert not out.exists()
    again = run(run_cli, out, "--loader", "faulty-batches", sets=STREAMED)
    assert again.exit_code == 0, again.stderr


def test_a_checkpointer_whose_load_raises_is_one_line(run_cli, tmp_path):
    plugin = LOCAL / "failing_checkpointer.py"
    out = tmp_path / "run"
    assert run(run_cli, out, "--checkpointer", "load-raises", plugin=plugin).exit_code == 0
    for command in (["eval", out], ["resume", out]):
        result = run_cli(["--plugin", plugin, *command])
        assert_one_line_error(result, f"checkpointer 'load-raises' (plugin {plugin}) failed loading a checkpoint: "
                                      "ValueError: cannot decode step 7", exit_code=1)


def test_a_checkpointer_whose_load_returns_none_is_one_line(run_cli, tmp_path):
    """Not "NotAnAttrsClassError: <class 'NoneType'> is not an attrs-decorated class"."""
    plugin = LOCAL / "failing_checkpointer.py"
    out = tmp_path / "run"
    assert run(run_cli, out, "--checkpointer", "load-none", plugin=plugin).exit_code == 0
    for command in (["eval", out], ["resume", out], ["eval", out, "--checkpoint", "7"]):
        result = run_cli(["--plugin", plugin, *command])
        assert_one_line_error(result, f"checkpointer 'load-none' (plugin {plugin}) failed loading a checkpoint: "
                                      "TypeError: load(7) returned NoneType, not a jaxyard.Restored", exit_code=1)


def test_check_builds_no_logger_so_refuses_no_logger_destination(run_cli, tmp_path):
    """A data file may not choose a destination for a run; `check` builds no logger, so sends nothing there."""
    experiment = tmp_path / "experiment.toml"
    experiment.write_text('[run]\nloggers = ["mlflow"]\n\n[logger.mlflow]\ntracking_uri = "http://203.0.113.9:5000"\n')
    result = run_cli(["check", "--config", experiment, "--batch-size", "16", *as_options(tiny())])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert_one_line_error(run_cli(["run", "--config", experiment, "--dry-run"]), "sends the run's data outside its run directory")


def test_a_run_whose_output_reader_has_gone_stops_quietly_and_resumes(run_cli, tmp_path, monkeypatch):
    """`jaxyard run | head -2`: the first line the reader will not read stops the run as Ctrl-C does
    (no "plugin jaxyard.plugins.report failed ... BrokenPipeError"), quietly, exit 1 as on any
    broken pipe; its directory resumes."""
    import errno

    import click

    from jaxyard import cli

    echo, printed = click.echo, []

    def head_2(message=None, *args, err=False, **kwargs):
        if not err and len(printed) >= 2:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        printed.append(message) if not err else None
        return echo(message, *args, err=err, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(click, "echo", head_2)
        patch.setattr(cli, "_reader_gone", lambda: True)
        result = run(run_cli, out, "--epochs", "2")
    assert (result.exit_code, result.stderr) == (1, ""), (result.stdout, result.stderr, result.exception)
    assert result.stdout.count("\n") == 2
    again = run_cli(["resume", out])
    assert again.exit_code == 0, (again.stdout, again.stderr)
    assert "Epoch 2/2" in again.stdout


def test_checkpointer_none_prints_no_checkpoint_saved(finished_run):
    stdout = finished_run("none").stdout
    assert "Epoch 2/2" in stdout and "Checkpoint saved" not in stdout


def test_a_constant_schedule_has_no_warmup_note(run_cli, tmp_path):
    """run.warmup_steps = 100 covers a run of 7 steps, but `constant` has no warmup: no "the rate only rises"."""
    result = run(run_cli, tmp_path / "run", "--scheduler", "constant", sets=tiny("run.warmup_steps=100"))
    assert result.exit_code == 0, result.stderr
    assert "warmup 0 steps, 7 steps in all" in result.stdout and "covers the whole run" not in result.stdout
