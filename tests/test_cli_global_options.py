"""Global options after the command (`jaxyard list --debug`, `run --plugin x.py`): each one takes
effect as before the command, never one of the command's own options or values, nor anything
after `--`."""

from __future__ import annotations

import click
import pytest

from jaxyard.cli import JaxyardGroup, cli

from helpers import BROKEN, assert_one_line_error, probe_imports

GOOD = BROKEN / "good_local.py"


def moved(args: list[str], group: click.Group = cli) -> list[str]:
    """The arguments as the group parses them."""
    return group._globals_first(click.Context(group), args)


@pytest.mark.parametrize("where", ["before", "after"])
def test_plugin_and_disable_after_the_command(run_cli, where):
    options = ["--plugin", str(GOOD), "--disable", "jaxyard.plugins.optimizers"]
    args = [*options, "list", "--json"] if where == "before" else ["list", "--json", *options]
    result = run_cli(args)
    assert result.exit_code == 0, result.stderr
    assert '"halving"' in result.stdout and '"adam"' not in result.stdout


def test_registry_in_its_equals_form_after_the_arguments(run_cli, tmp_path):
    registry = tmp_path / "r.toml"
    registry.write_text("[optimizer.adam]\nb1 = 0.8\n")
    result = run_cli(["show", "optimizer", "adam", f"--registry={registry}"])
    assert result.exit_code == 0, result.stderr
    assert "= 0.8 (registry; default 0.9)" in result.stdout


def test_debug_and_strict_plugins_after_the_command(run_cli):
    plain = run_cli(["show", "optimizer", "nonesuch"])
    assert_one_line_error(plain, "nonesuch")
    debug = run_cli(["show", "optimizer", "--debug", "nonesuch"])
    assert debug.exit_code != 0 and "nonesuch" in str(debug.exception)  # re-raised: a traceback
    broken = BROKEN / "raises_on_import.py"
    assert run_cli(["list", "--plugin", broken]).exit_code == 0  # a warning: skipped
    assert_one_line_error(run_cli(["list", "--plugin", broken, "--strict-plugins"]), "raises_on_import", exit_code=None)


def test_cpu_devices_after_the_command_takes_effect_before_jax_starts():
    *_, report = probe_imports(["from jaxyard.cli import main", "main(['list', 'optimizers', '--cpu-devices', '3'])",
                                "import jax; result = jax.device_count()"], heavy=["jax"])
    assert report["exit"] == 0 and report["result"] == 3


def test_what_is_moved_and_what_is_not():
    assert moved(["run", "--epochs", "2", "--plugin", "x.py", "--debug", "--cpu-devices=4"]) == [
        "--plugin", "x.py", "--debug", "--cpu-devices=4", "run", "--epochs", "2"]
    assert moved(["--debug", "compare", "a", "--metric", "--debug", "b"]) == ["--debug", "compare", "a", "--metric", "--debug", "b"]  # a value
    assert moved(["run", "--set", "x=1", "--", "--debug"]) == ["run", "--set", "x=1", "--", "--debug"]  # after --: untouched
    # launch passes its arguments on: before `--` or its first argument they are its own, after they are the command's
    launched = ["--", "run", "--plugin", "x.py"]
    assert moved(["launch", "-n", "2", "--debug", *launched]) == ["--debug", "launch", "-n", "2", *launched]
    assert moved(["launch", "-n", "2", "run", "--debug"]) == ["launch", "-n", "2", "run", "--debug"]
    assert moved(["nonesuch", "--debug"]) == ["nonesuch", "--debug"]


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_takes_every_global_option_after_it(command):
    """No command has an option of a global option's name (it would keep it: the next test)."""
    values = {"--registry": "r.toml", "--plugin": "x.py", "--disable": "y", "--cpu-devices": "2"}
    given = [x for name in JaxyardGroup.GLOBAL for x in (name, *([values[name]] if name in values else []))]
    assert moved([command, *given, "ARG"]) == [*given, command, "ARG"]


def test_a_commands_own_option_of_that_name_is_its_own():
    @click.group(cls=JaxyardGroup)
    @click.option("--debug", is_flag=True)
    def group(debug):
        pass

    @group.command()
    @click.option("--debug", type=int)
    def own(debug):
        pass

    assert moved(["own", "--debug", "3"], group) == ["own", "--debug", "3"]


def test_a_global_option_without_its_value_is_one_line(run_cli):
    assert_one_line_error(run_cli(["list", "--plugin"]), "--plugin needs a value: put --plugin VALUE before the command")
    assert_one_line_error(run_cli(["run", "--registry", "--", "x"]), "put --registry VALUE before the command")


def test_a_commands_help_lists_only_its_options(run_cli):
    result = run_cli(["run", "--plugin", str(GOOD), "--help"])
    assert result.exit_code == 0 and "--epochs" in result.stdout and "--plugin" not in result.stdout
    assert "Global options may also come after the command" in run_cli(["--help"]).stdout
