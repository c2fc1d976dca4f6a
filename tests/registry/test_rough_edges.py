"""Plugin authors' rough edges outside training: a directory given as a plugin, `[plugins] prefer`
entries that mean nothing, output into a closed pipe, and `schedule` taking `run`'s options."""

import subprocess
import sys

import pytest

import jaxyard
from jaxyard.core.errors import PluginError, UsageError

from helpers import assert_one_line_error, clean_environ

EMPTY_DIR = "the plugin's module or .py file in it"


def test_a_directory_that_registers_nothing_fails_like_a_broken_plugin(run_cli, tmp_path, monkeypatch):
    """`--plugin DIR` imports DIR as a namespace package from the current directory: no hook, no component."""
    (tmp_path / "myplugins").mkdir()
    monkeypatch.chdir(tmp_path)
    registry = jaxyard.build_registry(plugins=["myplugins"])
    [failed] = registry.failures
    assert failed.name == "myplugins" and failed.error == (
        "myplugins is a directory that implements no jaxyard hook, so it registers nothing: "
        "name the plugin's module or .py file in it (--plugin myplugins/NAME.py)"
    )
    result = run_cli(["--plugin", "myplugins", "list", "optimizers"])
    assert result.exit_code == 0 and "adam" in result.stdout
    assert result.stderr.startswith("Warning: plugin myplugins failed to load and was skipped: myplugins is a directory")
    assert_one_line_error(run_cli(["--plugin", "myplugins", "--strict-plugins", "list"]), EMPTY_DIR, exit_code=1)
    with pytest.raises(PluginError, match="registers nothing"):
        jaxyard.build_registry(plugins=["myplugins"], strict=True)
    path = tmp_path / "myplugins"  # as a path: a directory, never imported
    [failed] = jaxyard.build_registry(plugins=[str(path)]).failures
    assert failed.error == f"{path} is a directory: name the plugin's module or .py file in it (--plugin {path}/NAME.py)"


@pytest.mark.parametrize(
    "prefer, fragments",
    [
        ('["zoo:cnm"]', ["prefer = 'zoo:cnm' names no component: no loaded plugin is named 'zoo'"]),
        ('["jaxyard:cnm"]', ["prefer = 'jaxyard:cnm' names no component: plugin 'jaxyard' registers no 'cnm'; did you mean cnn?"]),
        ('[\n  "example:signsgd",\n  "jaxyard:signsgd",\n]', [", line 2: [plugins] prefer names 'signsgd' twice ('example:signsgd' and "
                                                           "'jaxyard:signsgd'); keep the one you mean"]),
        ('["signsgd"]', ["[plugins] prefer: 'signsgd' is not PLUGIN:NAME"]),
    ],
)
def test_a_prefer_entry_naming_nothing_or_twice_is_an_error_naming_the_file(run_cli, tmp_path, prefer, fragments):
    user = tmp_path / "mine.toml"
    user.write_text(f"[plugins]\nprefer = {prefer}\n")
    assert_one_line_error(run_cli(["--registry", user, "list"]), f"Error: {user}", *fragments)
    with pytest.raises(UsageError):
        jaxyard.build_registry(jaxyard.load_settings(user))


def test_a_prefer_entry_of_a_plugin_left_out_is_not_held_against_it(tmp_path, monkeypatch):
    """Recovering from a bad install ($JAXYARD_LOAD_PLUGINS, --disable) must not trip on the preference."""
    user = tmp_path / "mine.toml"
    user.write_text('[plugins]\nprefer = ["example:signsgd"]\n')
    assert jaxyard.build_registry(jaxyard.load_settings(user), load=[]).get("optimizer", "sgd")
    assert jaxyard.build_registry(jaxyard.load_settings(user), disable=["example"]).get("optimizer", "sgd")
    assert jaxyard.build_registry(jaxyard.load_settings(user)).get("optimizer", "signsgd").plugin == "example"


def test_output_into_a_closed_pipe_exits_quietly():
    """`jaxyard list | head -3`: the reader has gone before the first line; no "Error: Broken pipe", no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxyard.cli", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=clean_environ())
    proc.stdout.close()  # before the process writes a line: its first write meets EPIPE
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 1 and err == "", err


def test_schedule_takes_runs_options(run_cli):
    """The README: `schedule [same options as run]`; those the rate does not depend on are checked, not used."""
    result = run_cli(["schedule", "--model", "cnn", "--optimizer", "sgd", "--logger", "csv", "--seed", "3", "--steps-per-epoch", "10",
                      "--points", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "cosine: peak 0.001, warmup 100 steps, 100 steps (10 epochs of 10)"
    assert_one_line_error(run_cli(["schedule", "--model", "cnm", "--steps-per-epoch", "10"]), "unknown model 'cnm'; did you mean cnn?")


@pytest.mark.parametrize("num_classes", [0, -1, True])
def test_the_kit_refuses_num_classes_below_one_before_any_check(num_classes):
    """Not each model and task check failing on example labels in 0..-1."""
    from jaxyard.core.kit.harness import check_component

    with pytest.raises(UsageError, match=rf"num_classes = {num_classes!r}: .* an int of at least 1"):
        check_component("model:mlp", num_classes=num_classes, tier="api")
