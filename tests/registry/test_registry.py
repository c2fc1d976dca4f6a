"""The registry as a library: discovery, validation of entries, failures, filters, and every entry."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from unittest import mock

import pytest

import jaxyard
from jaxyard.core.errors import PluginError, UnknownComponent, UsageError
from jaxyard.core.registry import params as P
from jaxyard.core.registry.entries import KINDS
from jaxyard.core.registry.loading import build_registry, normalize_kind
from jaxyard.core.registry.settings import load_settings

from helpers import BROKEN, BROKEN_CASES, EXAMPLE_DIST, REPO, fake_entry_point, fake_entry_points

BUILTINS = ("tasks", "optimizers", "schedulers", "models", "loaders", "grain_loader", "hf_datasets", "checkpointers", "loggers", "report", "guards",
            "early_stopping", "checkpointing", "curves", "profiler", "progress")
BUILTIN_PLUGINS = [f"jaxyard.plugins.{m}" for m in BUILTINS]



def _registry(**kwargs):
    return build_registry(load_settings(), **kwargs)


# --- discovery -------------------------------------------------------------------------------------


def test_builtins_and_example_plugin_are_loaded(example_plugin):
    reg = _registry()
    names = [p.name for p in reg.plugins]
    assert names[: len(BUILTIN_PLUGINS)] == BUILTIN_PLUGINS
    assert all(p.ok and p.source == "builtin" and p.distribution == "jaxyard" for p in reg.plugins[:7])
    example = reg.plugin("example")
    assert (example.source, example.module, example.distribution, example.version) == (
        "entry point",
        "jaxyard_example_plugin",
        EXAMPLE_DIST,
        example_plugin,
    )
    assert example.ok and set(example.components) == {"optimizer:signsgd", "scheduler:linear", "model:logreg"}
    assert example.hooks == ("jaxyard_register_models", "jaxyard_register_optimizers", "jaxyard_register_schedulers")
    assert reg.get("optimizer", "signsgd").plugin == "example"
    assert {"adam", "adamw", "sgd", "signsgd"} <= set(reg.names("optimizer"))
    assert reg.failures == []


def test_registry_is_built_fresh_each_time():
    first = _registry(disable=["example"])
    second = _registry()
    assert "signsgd" not in first.names("optimizer")
    assert "signsgd" in second.names("optimizer")


def test_local_plugin_by_path_and_by_module_name(monkeypatch):
    reg = _registry(plugins=[str(BROKEN / "good_local.py")])
    info = reg.plugin(str(BROKEN / "good_local.py"))
    assert info.ok and info.source == "local" and info.components == ("scheduler:halving",)
    assert reg.get("scheduler", "halving").description == "Half the peak learning rate throughout."

    monkeypatch.syspath_prepend(str(BROKEN))
    monkeypatch.delitem(sys.modules, "good_local", raising=False)
    reg = _registry(plugins=["good_local"])
    assert reg.plugin("good_local").ok and "halving" in reg.names("scheduler")
    sys.modules.pop("good_local", None)


def test_missing_local_plugin_is_reported(tmp_path):
    reg = _registry(plugins=[str(tmp_path / "nope.py"), "no_such_module_xyz"])
    errors = {p.name: p.error for p in reg.failures}
    assert "no such file" in errors[str(tmp_path / "nope.py")]
    assert "ModuleNotFoundError" in errors["no_such_module_xyz"]


# --- broken plugins --------------------------------------------------------------------------------


@pytest.mark.parametrize("stem, error, leftover", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_broken_plugin_is_reported_and_skipped(stem, error, leftover):
    path = str(BROKEN / f"{stem}.py")
    seen = []
    reg = _registry(plugins=[path], on_failure=seen.append)
    [failed] = reg.failures
    assert seen == [failed]
    assert failed.name == path and failed.source == "local" and not failed.ok
    assert error in failed.error and "\n" not in failed.error
    assert failed.components == () and failed.hooks == ()
    if leftover:
        assert leftover[1] not in reg.names(leftover[0])
    # everything else is intact: every built-in and the example
    assert all(reg.plugin(name).ok for name in [*BUILTIN_PLUGINS, "example"])
    assert reg.get("optimizer", "adam").plugin == "jaxyard.plugins.optimizers"
    assert reg.plugin_manager.get_plugin(path) is None  # unregistered from pluggy too
    if stem == "raises_on_import":
        assert "jaxyard_local_raises_on_import" not in sys.modules  # no half-imported module left


@pytest.mark.parametrize("stem, error, leftover", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_broken_plugin_is_fatal_in_strict_mode(stem, error, leftover, monkeypatch):
    path = str(BROKEN / f"{stem}.py")
    with pytest.raises(PluginError) as exc:
        _registry(plugins=[path], strict=True)
    message = str(exc.value)
    assert message.startswith(f"plugin {path} failed: ") and error in message and "\n" not in message
    monkeypatch.setenv("JAXYARD_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        _registry(plugins=[path])
    assert _registry(plugins=[path], strict=False).failures  # an explicit argument beats the env


@pytest.mark.parametrize("value, strict", [("1", True), ("true", True), ("yes", True), ("0", False), ("false", False), ("off", False), ("", False)])
def test_strict_env_values(monkeypatch, value, strict):
    monkeypatch.setenv("JAXYARD_STRICT_PLUGINS", value)
    path = str(BROKEN / "raises_on_import.py")
    if strict:
        with pytest.raises(PluginError):
            _registry(plugins=[path])
    else:
        assert _registry(plugins=[path]).failures


def test_a_plugin_named_twice_loads_once():
    path = str(BROKEN / "good_local.py")
    reg = _registry(plugins=[path, path], strict=True)
    assert [p.name for p in reg.plugins].count(path) == 1 and "halving" in reg.names("scheduler")


def test_a_plugin_shadowing_a_built_in_name_is_reachable_qualified_with_a_warning():
    path = str(BROKEN / "duplicate_name.py")
    reg = _registry(plugins=[path], strict=True)  # not a failure: only the one name is affected
    info = reg.plugin(path)
    assert info.ok and info.warnings == (
        f"plugin {path!r} registers optimizer 'adam', which jaxyard has built in: the built-in keeps the name, "
        "this one is 'duplicate_name:adam'",
    )
    assert reg.get("optimizer", "adam").plugin == "jaxyard.plugins.optimizers"
    assert reg.get("optimizer", "jaxyard:adam").plugin == "jaxyard.plugins.optimizers"
    assert reg.get("optimizer", "duplicate_name:adam").plugin == path
    assert reg.get("optimizer", "dup-fine").plugin == path  # the plugin's other components are untouched
    assert "duplicate_name:adam" in reg.names("optimizer") and "adam" in reg.names("optimizer")


TWIN = '''import jaxyard


def f(p, *, learning_rate):
    """Same name in two plugins."""


def g(p, *, learning_rate):
    """Only in STEM."""


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("twin", f)
    register("STEM-only", g)
'''


def _twins(tmp_path):
    paths = []
    for stem in ("first", "second"):
        (tmp_path / f"{stem}.py").write_text(TWIN.replace("STEM", stem))
        paths.append(str(tmp_path / f"{stem}.py"))
    return paths


def test_two_plugins_sharing_a_name_cost_only_that_name(tmp_path):
    first, second = _twins(tmp_path)
    reg = _registry(plugins=[first, second], strict=True)
    assert not reg.failures  # neither plugin is skipped: all their other components stay
    assert reg.get("optimizer", "first-only").plugin == first and reg.get("optimizer", "second-only").plugin == second
    with pytest.raises(UsageError) as info:
        reg.get("optimizer", "twin")
    assert str(info.value) == (
        f"optimizer 'twin' is registered by 2 plugins; choose one: first:twin (plugin {first}), second:twin (plugin {second}) "
        '(or make one the default in a registry file: [plugins] prefer = ["first:twin"])'
    )
    assert reg.get("optimizer", "second:twin").plugin == second
    assert {"first:twin", "second:twin"} <= set(reg.names("optimizer")) and "twin" not in reg.names("optimizer")


def test_a_registry_file_says_which_plugin_a_shared_name_means(tmp_path):
    first, second = _twins(tmp_path)
    user = tmp_path / "mine.toml"
    user.write_text('[plugins]\nprefer = ["second:twin"]\n')
    reg = jaxyard.build_registry(jaxyard.load_settings(user), plugins=[first, second], strict=True)
    assert reg.get("optimizer", "twin").plugin == second
    assert reg.get("optimizer", "first:twin").plugin == first


def test_a_run_with_a_qualified_name_writes_it_and_repeats(run_cli, tmp_path):
    first, second = _twins(tmp_path)
    result = run_cli(["--plugin", first, "--plugin", second, "run", "--optimizer", "twin", "--dry-run"])
    assert result.exit_code == 2 and "choose one: first:twin" in result.stderr
    result = run_cli(["--plugin", first, "--plugin", second, "run", "--optimizer", "second:twin", "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert 'optimizer = "second:twin"' in result.stdout and '[optimizer."second:twin"]' in result.stdout
    saved = tmp_path / "config.toml"
    saved.write_text(result.stdout)
    again = run_cli(["--plugin", first, "--plugin", second, "run", "--config", saved, "--dry-run"])
    assert again.exit_code == 0 and again.stdout == result.stdout


@pytest.mark.parametrize(
    "call, error",
    [
        ("register('Bad Name', f)", "invalid optimizer name 'Bad Name'"),
        ("register('ok', 42)", "factory must be callable"),
        ("register('ok', lambda p, **k: None)", "needs a description"),
        ("register('ok', f, params=dict)", "params must be an attrs class"),
    ],
)
def test_register_validates_each_entry(tmp_path, call, error):
    plugin = tmp_path / "invalid_entry.py"
    plugin.write_text(
        "import jaxyard\n\ndef f(p, *, learning_rate):\n    '''Doc.'''\n\n"
        f"@jaxyard.hookimpl\ndef jaxyard_register_optimizers(register):\n    {call}\n"
    )
    [failed] = _registry(plugins=[str(plugin)]).failures
    assert error in failed.error


# --- entry points (faked, as core/registry/loading.py reads them) -----------------------------------------


@pytest.fixture
def broken_entry_point(monkeypatch):
    monkeypatch.syspath_prepend(str(BROKEN))
    fake_entry_points(monkeypatch, fake_entry_point("broken", "raises_on_import"))
    yield
    sys.modules.pop("raises_on_import", None)


def test_broken_entry_point_is_reported(broken_entry_point):
    reg = _registry()
    failed = reg.plugin("broken")
    assert (failed.source, failed.distribution, failed.version) == ("entry point", "broken-dist", "6.6.6")
    assert "RuntimeError: raises_on_import" in failed.error
    assert failed.label() == "broken (broken-dist 6.6.6)"
    assert reg.plugin("example").ok
    with pytest.raises(PluginError, match=r"^plugin broken \(broken-dist 6\.6\.6\) failed: RuntimeError"):
        _registry(strict=True)


def test_entry_point_allow_list(broken_entry_point, monkeypatch):
    monkeypatch.setenv("JAXYARD_LOAD_PLUGINS", "")
    reg = _registry()
    assert [p.name for p in reg.plugins] == BUILTIN_PLUGINS  # built-ins are not entry points
    monkeypatch.setenv("JAXYARD_LOAD_PLUGINS", "example")
    assert [p.name for p in _registry().plugins] == [*BUILTIN_PLUGINS, "example"]
    monkeypatch.setenv("JAXYARD_LOAD_PLUGINS", f" {EXAMPLE_DIST} , broken-dist")  # distribution names too
    assert [p.name for p in _registry().plugins] == [*BUILTIN_PLUGINS, "broken", "example"]


def test_entry_point_name_taken_by_another_distribution(monkeypatch, example_plugin):
    fake_entry_points(monkeypatch, fake_entry_point("example", "jaxyard_example_plugin", dist="impostor"))
    reg = _registry()
    records = [p for p in reg.plugins if p.name == "example"]
    assert len(records) == 2
    ok, clash = (records if records[0].ok else records[::-1])
    assert ok.distribution == EXAMPLE_DIST and "signsgd" in reg.names("optimizer")
    assert clash.distribution == "impostor"
    assert clash.error == f"entry point name 'example' is already used by distribution {EXAMPLE_DIST!r}"


def test_same_distribution_found_twice_is_not_a_conflict(monkeypatch):
    [example] = [ep for ep in metadata.entry_points(group="jaxyard") if ep.name == "example"]
    fake_entry_points(monkeypatch, example)
    reg = _registry()
    assert [p.name for p in reg.plugins].count("example") == 1 and reg.failures == []


# --- blocking ---------------------------------------------------------------------------------------


def test_disable_by_argument_env_and_registry_file(tmp_path, monkeypatch):
    assert "example" not in [p.name for p in _registry(disable=["example"]).loaded]

    monkeypatch.setenv("JAXYARD_DISABLE_PLUGINS", "example, jaxyard.plugins.models")
    reg = _registry()
    assert {"example", "jaxyard.plugins.models"}.isdisjoint(p.name for p in reg.loaded)
    assert reg.names("model") == []
    monkeypatch.delenv("JAXYARD_DISABLE_PLUGINS")

    user = tmp_path / "registry.toml"
    user.write_text('[plugins]\ndisabled = ["example"]\n')
    reg = build_registry(load_settings(user))
    assert "example" not in [p.name for p in reg.loaded] and "signsgd" not in reg.names("optimizer")


def test_disabled_broken_plugin_is_never_imported():
    path = str(BROKEN / "raises_on_import.py")
    reg = _registry(plugins=[path], disable=[path], strict=True)
    assert reg.failures == [] and path not in [p.name for p in reg.loaded] and reg.plugin(path).disabled


def test_local_plugins_from_registry_file_are_relative_to_it(tmp_path):
    user = tmp_path / "sub" / "registry.toml"
    user.parent.mkdir()
    (tmp_path / "mine.py").write_text((BROKEN / "good_local.py").read_text())
    user.write_text('[plugins]\nlocal = ["../mine.py"]\n')
    reg = build_registry(load_settings(user))
    assert reg.get("scheduler", "halving").plugin == str((tmp_path / "mine.py").resolve())


# --- lookups and filters ----------------------------------------------------------------------------


def test_unknown_name_lists_valid_names_and_close_matches():
    reg = _registry()
    with pytest.raises(UnknownComponent) as exc:
        reg.get("optimizer", "adamx")
    message = str(exc.value)
    assert message.startswith("unknown optimizer 'adamx'; did you mean adam, adamw?")
    assert "(valid: adafactor, adam, adamw, lamb, lion, rmsprop, sgd, signsgd)" in message
    with pytest.raises(UnknownComponent, match=r"valid: .*mlp"):
        reg.get("models", "zzz")


def test_kinds_accept_singular_and_plural_and_refuse_others():
    assert [normalize_kind(k) for k in ("optimizer", "optimizers", "loaders", "tasks")] == ["optimizer", "optimizer", "loader", "task"]
    with pytest.raises(UsageError, match=r"unknown kind 'optimiser'; did you mean optimizer\?"):
        normalize_kind("optimiser")
    with pytest.raises(UsageError, match="valid: task, optimizer, scheduler, model, loader, checkpointer, logger"):
        _registry().entries("layers")


def test_entries_filter_by_kind_and_pattern():
    reg = _registry()
    assert [e.name for e in reg.entries("optimizers", "adam*")] == ["adam", "adamw"]
    assert [e.name for e in reg.entries("optimizer", "*sgd")] == ["sgd", "signsgd"]
    assert {e.kind for e in reg.entries("scheduler")} == {"scheduler"}
    everything = reg.entries()
    assert [KINDS.index(e.kind) for e in everything] == sorted(KINDS.index(e.kind) for e in everything)
    assert reg.entries(pattern="nothing-matches-*") == []


# --- every registered entry -------------------------------------------------------------------------


def _all_entries():
    with mock.patch.dict(os.environ, {k: v for k, v in os.environ.items() if not k.startswith("JAXYARD_")}, clear=True):
        return _registry().entries()


ALL_ENTRIES = _all_entries()
ALL_IDS = [f"{e.kind}:{e.name}" for e in ALL_ENTRIES]


@pytest.mark.parametrize("entry", ALL_ENTRIES, ids=ALL_IDS)
def test_every_entry_shows(entry, run_cli):
    result = run_cli(["show", entry.kind, entry.name])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{entry.kind} {entry.name}: {entry.description}"
    params = P.describe(entry.params)
    if not params:
        assert "  parameters: none" in lines
    for info in params:
        assert any(line.split()[:2] == [info.name, info.type.split()[0]] for line in lines), info.name


def test_public_api_resolves_every_name_and_stays_cheap_until_the_engine_is_used():
    """Every name in jaxyard.__all__ resolves and is in dir(); touching the eager ones imports no jax
    (a fresh process: this one has jax loaded already)."""
    from helpers import probe_imports

    assert set(jaxyard.__all__) <= set(dir(jaxyard))
    assert all(getattr(jaxyard, name) is not None for name in jaxyard.__all__)
    lazy = {"train", "evaluate", "resume", "Evaluation", "check", "__version__"}
    eager = f"[getattr(jaxyard, n) for n in jaxyard.__all__ if n not in {sorted(lazy)!r}]"
    report = probe_imports(["jaxyard", eager], heavy=("jax", "flax", "optax", "orbax"))
    assert [step["heavy"] for step in report] == [[], []]


def test_every_hook_is_documented_used_and_in_the_readme():
    """Meta-test: a new hook needs its reference docstring, a built-in user and a README mention."""
    import inspect

    from jaxyard.core.registry import hookspecs
    from jaxyard.core.registry.entries import HOOKS

    specs = {name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("jaxyard_")}
    events = {name for name in specs if name.startswith("jaxyard_on_")}
    assert specs - events == set(HOOKS.values())
    registry = jaxyard.build_registry(strict=True)
    used = {hook for plugin in registry.plugins if plugin.source == "builtin" for hook in plugin.hooks}
    readme = (REPO / "README.md").read_text()
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        if name in events:
            assert ":param" in doc and len(doc.splitlines()) >= 3, name
            assert name in readme, name
        else:
            assert ":param register:" in doc and "factory" in doc, name
            assert name.removeprefix("jaxyard_register") in readme, name
        assert name in used, f"no built-in plugin implements {name}"


def test_a_qualified_parameter_table_is_used(tmp_path):
    experiment = tmp_path / "exp.toml"
    experiment.write_text('[optimizer."jaxyard:adam"]\nb1 = 0.5\n')
    cfg = jaxyard.resolve_config(_registry(), jaxyard.load_settings(), config_file=str(experiment))
    assert cfg.optimizer.params.b1 == 0.5 and cfg.optimizer.params.weight_decay == 1e-4  # over the shipped [optimizer.adam]
    experiment.write_text('[optimizer."jaxyard:adam"]\nb1 = 0.5\n[optimizer.adam]\nb1 = 0.7\nb2 = 0.9\n')
    cfg = jaxyard.resolve_config(_registry(), jaxyard.load_settings(), config_file=str(experiment))
    assert (cfg.optimizer.params.b1, cfg.optimizer.params.b2) == (0.5, 0.9)  # the qualified table is the more specific


def test_registration_hooks_go_through_pluggys_call_loop():
    """A hook written as a pluggy wrapper registers what it registers (called directly, it would
    only have created a generator), and the components are attributed to its plugin."""
    path = str(BROKEN.parent / "plugins_local" / "wrapper_hook.py")
    registry = build_registry(load_settings(None), plugins=[path], strict=True)
    entry = registry.get("optimizer", "wrapped")
    info = registry.plugin(entry.plugin)
    assert info.error is None and info.components == ("optimizer:wrapped",)
