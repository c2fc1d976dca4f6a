"""Plugins through the CLI: the installed example package, broken plugins, allow- and block-lists."""

from __future__ import annotations

import json
import sys
import tomllib

import pytest

from helpers import BROKEN, BROKEN_CASES, EXAMPLE, EXAMPLE_DIST, assert_one_line_error, fake_entry_point, fake_entry_points

EXAMPLE_COMPONENTS = ["optimizer:signsgd", "scheduler:linear", "model:logreg"]


def _plugins(cli_json, *args, **kwargs):
    """The plugins loaded (listed and not disabled)."""
    return {p["name"]: p for p in cli_json([*args, "plugins", "--json"], **kwargs) if not p["disabled"]}


# --- the example package, installed and found through its entry point -----------------------------


def test_example_plugin_is_discovered_through_its_entry_point(cli_json, example_plugin):
    record = _plugins(cli_json)["example"]
    assert record == {
        "name": "example",
        "source": "entry point",
        "module": "jaxyard_example_plugin",
        "distribution": EXAMPLE_DIST,
        "version": example_plugin,
        "hooks": ["jaxyard_register_models", "jaxyard_register_optimizers", "jaxyard_register_schedulers"],
        "components": EXAMPLE_COMPONENTS,
        "error": None,
        "warnings": [],
        "disabled": False,
        "requires": "jaxyard<0.5,>=0.3",  # the plugin API its package declares
    }


def test_example_components_are_listed(cli_json, run_cli):
    listed = {f"{e['kind']}:{e['name']}": e for e in cli_json(["list", "--json"])}
    for key in EXAMPLE_COMPONENTS:
        assert listed[key]["plugin"] == "example" and listed[key]["distribution"] == EXAMPLE_DIST
    text = run_cli(["list"]).stdout
    assert any(line.split()[0] == "signsgd" and line.endswith("[example]") for line in text.splitlines())


def test_show_example_optimizer(cli_json, example_plugin):
    shown = cli_json(["show", "optimizer", "signsgd", "--json"])
    assert shown["kind"] == "optimizer" and shown["name"] == "signsgd"
    assert shown["plugin"] == "example" and shown["distribution"] == EXAMPLE_DIST and shown["version"] == example_plugin
    assert shown["description"].startswith("signSGD")
    [param] = shown["params"]
    assert param["name"] == "weight_decay" and param["type"] == "float" and param["default"] == 0.0 and param["doc"]
    assert cli_json(["show", "model", "logreg", "--json"])["params"] == []
    assert [p["name"] for p in cli_json(["show", "scheduler", "linear", "--json"])["params"]] == ["end_fraction"]


def test_example_components_resolve_in_a_run(run_cli):
    result = run_cli(
        ["run", "--optimizer", "signsgd", "--scheduler", "linear", "--model", "logreg", "--set", "scheduler.end_fraction=0.25", "--dry-run"]
    )
    assert result.exit_code == 0, result.stderr
    config = tomllib.loads(result.stdout)
    assert config["optimizer"] == {"example:signsgd": {"weight_decay": 0.0}}  # written qualified: unambiguous later
    assert config["scheduler"] == {"example:linear": {"end_fraction": 0.25}}
    assert config["model"] == {"example:logreg": {}}
    bad = run_cli(["run", "--scheduler", "linear", "--set", "scheduler.end_fraction=2", "--dry-run"])
    assert_one_line_error(bad, "end_fraction")


def test_example_components_build_and_step():
    """The factories honour their hook contracts (this one imports jax, flax and optax)."""
    import jax.numpy as jnp
    from flax import nnx

    import jaxyard
    from jaxyard.core.registry.params import build

    reg = jaxyard.build_registry()

    def make(kind, name, values=None, **context):
        entry = reg.get(kind, name)
        return entry.create(build(entry.params, values or {}, where=name), **context)

    schedule = make("scheduler", "linear", {"end_fraction": 0.1}, learning_rate=1.0, decay_steps=10)
    assert [round(float(schedule(s)), 6) for s in (0, 5, 10, 50)] == [1.0, 0.55, 0.1, 0.1]

    tx = make("optimizer", "signsgd", learning_rate=schedule)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    updates, _ = tx.update({"w": jnp.array([0.5, -4.0, 0.0])}, tx.init(params), params)
    assert updates["w"].tolist() == [-1.0, 1.0, 0.0]  # -lr * sign(g), lr = 1 at step 0

    model = make("model", "logreg", input_shape=(4, 2), num_classes=3, rngs=nnx.Rngs(params=0, dropout=1))
    assert isinstance(model, nnx.Module)
    assert model(jnp.ones((5, 4, 2))).shape == (5, 3)


def test_example_module_imports_nothing_heavy():
    source = (EXAMPLE / "jaxyard_example_plugin" / "__init__.py").read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top_level if any(m in line for m in ("jax ", "jax.", "flax", "optax", "orbax"))], top_level


# --- broken plugins through the CLI ----------------------------------------------------------------


@pytest.mark.parametrize("stem, error, leftover", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_broken_plugin_warns_and_list_still_works(run_cli, stem, error, leftover):
    path = str(BROKEN / f"{stem}.py")
    result = run_cli(["--plugin", path, "list", "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == f"Warning: plugin {path} failed to load and was skipped: " + _recorded_error(run_cli, path)
    assert error in result.stderr
    listed = {(e["kind"], e["name"]) for e in json.loads(result.stdout)}
    assert ("optimizer", "adam") in listed and ("optimizer", "signsgd") in listed
    if leftover:
        assert leftover not in listed


def _recorded_error(run_cli, path):
    result = run_cli(["--plugin", path, "plugins", "--json"])
    assert result.exit_code == 0
    [failed] = [p for p in json.loads(result.stdout) if p["error"]]
    assert failed["name"] == path and failed["source"] == "local" and failed["components"] == []
    return failed["error"]


@pytest.mark.parametrize("stem, error, leftover", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_broken_plugin_is_fatal_with_strict_plugins(run_cli, stem, error, leftover):
    path = str(BROKEN / f"{stem}.py")
    err = assert_one_line_error(run_cli(["--strict-plugins", "--plugin", path, "list"]), f"plugin {path} failed: ", error, exit_code=None)
    assert err.startswith("Error: plugin ")
    env_result = run_cli(["--plugin", path, "list"], env={"JAXYARD_STRICT_PLUGINS": "1"})
    assert_one_line_error(env_result, error, exit_code=None)
    assert env_result.stdout == ""


def test_plugins_text_output_shows_failures(run_cli):
    path = str(BROKEN / "misspelled_hook.py")
    result = run_cli(["--plugin", path, "plugins"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    i = lines.index(f"{path}  [local, -]  FAILED")
    assert lines[i + 1].startswith("  error: implements unknown hook jaxyard_register_optimiser")
    assert f"example  [entry point, {EXAMPLE_DIST} 0.1.0]  ok" in lines


def test_broken_entry_point_through_the_cli(run_cli, monkeypatch):
    monkeypatch.syspath_prepend(str(BROKEN))
    fake_entry_points(monkeypatch, fake_entry_point("broken", "raises_on_import"))
    try:
        result = run_cli(["list", "optimizers"])
        assert result.exit_code == 0 and "signsgd" in result.stdout
        assert result.stderr.startswith("Warning: plugin broken (broken-dist 6.6.6) failed to load and was skipped: RuntimeError")
        plugins = {p["name"]: p for p in json.loads(run_cli(["plugins", "--json"]).stdout)}
        assert plugins["broken"]["source"] == "entry point" and "RuntimeError" in plugins["broken"]["error"]
        assert_one_line_error(run_cli(["--strict-plugins", "list"]), "plugin broken (broken-dist 6.6.6) failed", exit_code=None)
        assert run_cli(["--disable", "broken", "--strict-plugins", "list"]).exit_code == 0
        assert run_cli(["--strict-plugins", "list"], env={"JAXYARD_LOAD_PLUGINS": "example"}).exit_code == 0
    finally:
        sys.modules.pop("raises_on_import", None)


def test_env_flags(monkeypatch, run_cli):
    from jaxyard.cli import _compile_cache

    monkeypatch.setenv("JAXYARD_NO_COMPILE_CACHE", "1")
    assert _compile_cache(False) is None
    monkeypatch.setenv("JAXYARD_NO_COMPILE_CACHE", "false")
    monkeypatch.setenv("XDG_CACHE_HOME", "/cache")
    assert str(_compile_cache(False)) == "/cache/jaxyard/jax" and _compile_cache(True) is None
    path = str(BROKEN / "raises_on_import.py")
    assert run_cli(["--strict-plugins", "--plugin", path, "list"], env={"JAXYARD_DEBUG": "0"}).exception.__class__ is SystemExit
    result = run_cli(["--strict-plugins", "--plugin", path, "list"], env={"JAXYARD_DEBUG": "1"})
    assert type(result.exception).__name__ == "PluginError"


# --- allow-list and block-lists ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "allow, loaded",
    [("", False), ("example", True), (EXAMPLE_DIST, True), ("other,example", True), ("other", False)],
)
def test_load_plugins_allow_list(cli_json, allow, loaded):
    plugins = _plugins(cli_json, env={"JAXYARD_LOAD_PLUGINS": allow})
    assert ("example" in plugins) is loaded
    assert all(name in plugins for name in ("jaxyard.plugins.optimizers", "jaxyard.plugins.checkpointers"))
    names = [e["name"] for e in cli_json(["list", "optimizers", "--json"], env={"JAXYARD_LOAD_PLUGINS": allow})]
    assert ("signsgd" in names) is loaded


def test_disable_option_env_and_registry_file(cli_json, run_cli, tmp_path):
    assert "example" not in _plugins(cli_json, "--disable", "example")
    assert "example" not in _plugins(cli_json, env={"JAXYARD_DISABLE_PLUGINS": "example"})
    registry = tmp_path / "registry.toml"
    registry.write_text('[plugins]\ndisabled = ["example"]\n')
    assert "example" not in _plugins(cli_json, "--registry", registry)
    assert "example" in _plugins(cli_json)
    # a disabled plugin's components are unknown names
    result = run_cli(["--disable", "example", "show", "optimizer", "signsgd"])
    assert_one_line_error(result, "unknown optimizer 'signsgd'", "did you mean sgd?")


def test_disable_a_builtin(cli_json, run_cli):
    plugins = _plugins(cli_json, "--disable", "jaxyard.plugins.schedulers")
    assert "jaxyard.plugins.schedulers" not in plugins
    assert [e["name"] for e in cli_json(["--disable", "jaxyard.plugins.schedulers", "list", "schedulers", "--json"])] == ["linear"]


def test_local_plugin_option(cli_json):
    path = str(BROKEN / "good_local.py")
    plugins = _plugins(cli_json, "--plugin", path)
    assert plugins[path]["source"] == "local" and plugins[path]["components"] == ["scheduler:halving"]
    assert cli_json(["--plugin", path, "show", "scheduler", "halving", "--json"])["plugin"] == path


def test_disabled_plugins_are_listed_as_disabled_and_builtins_take_their_short_name(cli_json, run_cli):
    everything = {p["name"]: p for p in cli_json(["--disable", "report", "plugins", "--json"])}
    assert everything["jaxyard.plugins.report"]["disabled"] and not everything["jaxyard.plugins.curves"]["disabled"]
    text = run_cli(["--disable", "report", "plugins"]).stdout
    assert "jaxyard.plugins.report  [builtin, jaxyard" in text and "]  disabled" in text


def test_disabling_a_name_no_plugin_has_warns(run_cli):
    result = run_cli(["--disable", "optimizerz", "list", "optimizers"])
    assert result.exit_code == 0 and "adam" in result.stdout
    assert result.stderr.startswith(
        "Warning: no plugin is named 'optimizerz', so disabling it does nothing (plugins: jaxyard.plugins.tasks, jaxyard.plugins.optimizers,"
    )


def test_unknown_plugin_lookup_is_one_line():
    import jaxyard

    with pytest.raises(jaxyard.UsageError, match=r"unknown plugin 'nope' \(valid: jaxyard.plugins.tasks, jaxyard.plugins.optimizers, "):
        jaxyard.build_registry().plugin("nope")


def test_the_allow_list_is_a_parameter_too():
    import jaxyard

    assert "example" not in [p.name for p in jaxyard.build_registry(load=[]).plugins]
    assert "example" in [p.name for p in jaxyard.build_registry(load=["example"]).plugins]
