"""The plugin API announces its changes: a recorded signature snapshot guarded by the version and
CHANGELOG.md, and the jaxyard a plugin's package requires, checked when it loads.

Re-record the snapshot (after bumping the version and adding a CHANGELOG.md section) with:

    python tests/registry/test_plugin_api.py --record
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tomllib
import types
from importlib import metadata

import pytest

import jaxyard
from jaxyard.core.errors import UsageError
from jaxyard.core.registry import api, hookspecs
from jaxyard.core.registry.entries import FACTORY_KEYWORDS
from jaxyard.core.registry.loading import build_registry
from jaxyard.core.registry.settings import load_settings

if __name__ == "__main__":  # run as a script (--record): the tests' helpers are one folder up
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import BROKEN, REPO, assert_one_line_error, fake_entry_points

SNAPSHOT = REPO / "tests" / "registry" / "plugin_api.json"
RECORD = "python tests/registry/test_plugin_api.py --record"
#: what plugins implement (Checkpointer, Logger) or build and return (the rest), by public name
CLASSES = {
    "Checkpointer": jaxyard.Checkpointer, "Logger": jaxyard.Logger, "Restored": jaxyard.Restored,
    "Split": jaxyard.Split, "Dataset": jaxyard.Dataset, "StreamingDataset": jaxyard.StreamingDataset, "Task": jaxyard.Task,
    "Run": jaxyard.Run,
}
VERSION = metadata.version("jaxyard")


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def record_snapshot() -> str:
    """Re-record tests/registry/plugin_api.json for the checkout's version (refused without a bump and a CHANGELOG section)."""
    return api.record(SNAPSHOT, api.surface(CLASSES), version=project_version(), changelog=(REPO / api.CHANGELOG).read_text())


# --- the snapshot ------------------------------------------------------------------------------------


def test_the_plugin_api_is_as_recorded():
    snapshot = api.load_snapshot(SNAPSHOT)
    differences = api.compare(snapshot["surface"], api.surface(CLASSES))
    assert not differences, api.changed_message(differences, snapshot, RECORD)


def test_the_record_belongs_to_this_release_and_its_changelog():
    snapshot = api.load_snapshot(SNAPSHOT)
    major, minor, *_ = snapshot["version"].split(".")
    assert snapshot["plugin_api"] == api.PLUGIN_API == f"{major}.{minor}"
    assert tuple(map(int, project_version().split("."))) >= tuple(map(int, snapshot["version"].split(".")))
    changelog = (REPO / api.CHANGELOG).read_text()
    for version in {project_version(), snapshot["version"]}:
        assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M), version


def test_the_snapshot_covers_every_hook_kind_and_contract():
    live = api.surface(CLASSES)
    assert set(live["hooks"]) == {n for n in vars(hookspecs) if n.startswith("jaxyard_") and callable(getattr(hookspecs, n))}
    assert live["factory_keywords"]["model"] == ["input_shape", "rngs"]
    assert set(live["classes"]["Checkpointer"]) == {"save", "steps", "load", "delete", "wait", "close"}
    assert set(live["classes"]["Logger"]) == {"start", "log_epoch", "finish"}
    assert live["hooks"]["jaxyard_register_models"] == "(register: RegisterFn) -> None"
    assert live["register"].startswith("(name: str, factory: Callable[..., Any], *, params: type | None = None")


def test_a_changed_hook_signature_fails_with_the_steps_to_take(monkeypatch):
    @hookspecs.hookspec
    def jaxyard_register_models(register: RegisterFn, device: str) -> None:  # noqa: F821 - as the spec module writes it
        """Register models (a new argument)."""

    monkeypatch.setattr(hookspecs, "jaxyard_register_models", jaxyard_register_models)
    snapshot = api.load_snapshot(SNAPSHOT)
    differences = api.compare(snapshot["surface"], api.surface(CLASSES))
    assert differences == [
        "hooks.jaxyard_register_models: (register: RegisterFn) -> None became (register: RegisterFn, device: str) -> None"
    ]
    message = api.changed_message(differences, snapshot, RECORD)
    for step in ("bump the version in pyproject.toml", "PLUGIN_API", "CHANGELOG.md", f"re-record with: {RECORD}"):
        assert step in message


def test_a_changed_factory_keyword_or_protocol_method_fails_it(monkeypatch):
    monkeypatch.setitem(FACTORY_KEYWORDS, "loader", ("seed", "split"))

    class Checkpointer(jaxyard.Checkpointer):
        def save(self, step: int, arrays: dict, meta: dict, *, force: bool = False) -> None: ...

    live = api.surface({**CLASSES, "Checkpointer": Checkpointer})
    differences = api.compare(api.load_snapshot(SNAPSHOT)["surface"], live)
    assert "factory_keywords.loader: ['seed'] became ['seed', 'split']" in differences
    [save] = [d for d in differences if d.startswith("classes.Checkpointer.save: ")]
    assert save.endswith("became (step: int, arrays: dict, meta: dict, *, force: bool = False) -> None")


def test_re_recording_refuses_without_a_version_bump_plugin_api_and_changelog_section(tmp_path):
    snapshot = tmp_path / "plugin_api.json"
    shutil.copy(SNAPSHOT, snapshot)
    recorded = api.load_snapshot(snapshot)
    live = api.surface(CLASSES)
    live["hooks"]["jaxyard_on_run_start"] = "(run: Run, resumed: bool) -> None"
    version = recorded["version"]
    with pytest.raises(UsageError, match=rf"the plugin API changed but the version is still {re.escape(version)}"):
        api.record(snapshot, live, version=version, changelog=f"## [{version}] - 2026-12-06\n")
    major, minor, patch = map(int, version.split("."))
    with pytest.raises(UsageError, match="a change needs a new minor version at least"):
        api.record(snapshot, live, version=f"{major}.{minor}.{patch + 1}", changelog="")
    new = f"{major}.{minor + 1}.0"
    with pytest.raises(UsageError, match=rf"CHANGELOG.md has no section '## \[{re.escape(new)}\]'"):
        api.record(snapshot, live, version=new, plugin_api=f"{major}.{minor + 1}", changelog=f"## [{version}] - 2026-12-06\n")
    assert api.load_snapshot(snapshot) == recorded  # every refusal left it alone
    done = api.record(snapshot, live, version=new, plugin_api=f"{major}.{minor + 1}", changelog=f"## [{new}] - 2027-01-01\n")
    assert done.endswith(f"recorded the plugin API of jaxyard {new} (plugin API {major}.{minor + 1})")
    again = api.load_snapshot(snapshot)
    assert (again["version"], api.compare(again["surface"], live)) == (new, [])


def test_re_recording_an_unchanged_api_changes_nothing(tmp_path):
    snapshot = tmp_path / "plugin_api.json"
    shutil.copy(SNAPSHOT, snapshot)
    before = snapshot.read_text()
    assert "nothing to re-record" in api.record(snapshot, api.surface(CLASSES), version="9.9.9", changelog="")
    assert snapshot.read_text() == before


# --- the jaxyard a plugin requires ----------------------------------------------------------------------


def _entry_point(name, module, requires, dist="old-dist", version="1.2"):
    """An entry point whose distribution declares ``requires`` (Requires-Dist lines)."""
    real = metadata.EntryPoint(name, module, "jaxyard")
    return types.SimpleNamespace(name=name, value=module, group="jaxyard", load=real.load,
                                 dist=types.SimpleNamespace(name=dist, version=version, requires=requires))


def test_the_declared_requirement_is_the_one_on_jaxyard_outside_extras():
    def declared(*requires):
        return api.declared_requirement(types.SimpleNamespace(requires=list(requires)))

    assert declared("numpy>=1.25", "Jaxyard>=0.2,<0.3") == "<0.3,>=0.2"
    assert declared("jaxyard") == ""
    assert declared('jaxyard<0.2; extra == "test"', "numpy") is None
    assert declared() is None and api.declared_requirement(types.SimpleNamespace()) is None


def test_a_plugin_requiring_another_jaxyard_is_refused_before_it_is_imported(monkeypatch, run_cli):
    fake_entry_points(monkeypatch, _entry_point("old", "module_that_does_not_exist", ["numpy", "jaxyard<0.2"]))
    reg = build_registry(load_settings())
    expected = (
        f"requires jaxyard<0.2 but this is jaxyard {VERSION}; upgrade it (pip install -U old-dist) "
        f"or pin jaxyard (pip install 'jaxyard<0.2'); see CHANGELOG.md"
    )
    assert reg.plugin("old").error == expected  # not a ModuleNotFoundError: it was never imported
    assert reg.requirement("old") == "<0.2" and reg.plugin("example").ok
    result = run_cli(["list", "optimizers"])
    assert result.exit_code == 0
    assert result.stderr.strip() == f"Warning: plugin old (old-dist 1.2) failed to load and was skipped: {expected}"
    assert_one_line_error(run_cli(["--strict-plugins", "list"]), f"plugin old (old-dist 1.2) failed: {expected}", exit_code=None)


def test_a_plugin_whose_requirement_is_met_loads_and_plugins_shows_it(monkeypatch, tmp_path, run_cli):
    (tmp_path / "modern_plugin.py").write_text(
        "import jaxyard\n\n\n@jaxyard.hookimpl\ndef jaxyard_register_optimizers(register):\n"
        "    register('modern-sgd', lambda params, *, learning_rate: None, description='plain SGD')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, _entry_point("modern", "modern_plugin", ["jaxyard>=0.2"], dist="modern-dist"))
    try:
        assert build_registry(load_settings()).plugin("modern").components == ("optimizer:modern-sgd",)
        lines = run_cli(["plugins"]).stdout.splitlines()
        i = lines.index("modern  [entry point, modern-dist 1.2]  ok")
        assert lines[i + 1] == "  requires: jaxyard>=0.2"
        example = lines.index("example  [entry point, jaxyard-example-plugin 0.1.0]  ok")
        assert lines[example + 1] == "  requires: jaxyard<0.5,>=0.3"  # the example package declares the API it needs
        assert lines[-1].startswith(f"jaxyard {VERSION}, plugin API {api.PLUGIN_API} ")
        plugins = {p["name"]: p for p in json.loads(run_cli(["plugins", "--json"]).stdout)}
        assert (plugins["modern"]["requires"], plugins["example"]["requires"], plugins["jaxyard.plugins.models"]["requires"]) == (
            "jaxyard>=0.2", "jaxyard<0.5,>=0.3", None
        )
    finally:
        sys.modules.pop("modern_plugin", None)


def test_a_contract_failure_names_the_jaxyard_the_plugin_was_written_for(monkeypatch):
    monkeypatch.syspath_prepend(str(BROKEN))
    fake_entry_points(monkeypatch, _entry_point("seedless", "factory_missing_keyword", ["jaxyard>=0.1"]))
    try:
        local = str(BROKEN / "param_without_type.py")
        reg = build_registry(load_settings(), plugins=[local, str(BROKEN / "raises_on_import.py")])
        assert reg.plugin("seedless").error == (
            "loader 'seedless': factory(params) does not accept seed, which jaxyard passes; expected def factory(params, *, seed); "
            f"it was written for jaxyard>=0.1 and this is jaxyard {VERSION} (plugin API {api.PLUGIN_API}): see CHANGELOG.md"
        )
        assert reg.plugin(local).error.endswith(f"; this is jaxyard {VERSION} (plugin API {api.PLUGIN_API}): see CHANGELOG.md for what changed")
        assert "CHANGELOG" not in reg.plugin(str(BROKEN / "raises_on_import.py")).error  # its own bug, not the API
    finally:
        for module in ("factory_missing_keyword",):
            sys.modules.pop(module, None)


def test_an_import_of_a_jaxyard_name_that_is_gone_is_an_api_failure(monkeypatch, tmp_path):
    (tmp_path / "gone_name.py").write_text("from jaxyard import KeepLatestCheckpointer  # removed in an imagined release\n")
    reg = build_registry(load_settings(), plugins=[str(tmp_path / "gone_name.py")])
    error = reg.plugin(str(tmp_path / "gone_name.py")).error
    assert error.startswith("ImportError: cannot import name 'KeepLatestCheckpointer' from 'jaxyard'")
    assert error.endswith("see CHANGELOG.md for what changed")


if __name__ == "__main__":  # python tests/registry/test_plugin_api.py --record
    if sys.argv[1:] != ["--record"]:
        sys.exit(f"usage: {RECORD}")
    try:
        print(record_snapshot())
    except UsageError as err:
        sys.exit(f"not recorded: {err}")
