"""A run saved by an older version of a plugin (a parameter since removed) is not a dead end:
eval and resume name the key, the component and `jaxyard upgrade`; after it, the same numbers."""

from __future__ import annotations

import json
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

import jaxyard
from jaxyard.core.registry.stale import StaleConfig

from helpers import TINY, assert_one_line_error, fake_entry_points

pytestmark = pytest.mark.xdist_group("stale_config")  # the module fixture trains two runs

VERSION = metadata.version("jaxyard")
#: what jaxyard 0.1's orbax checkpointer wrote into every run's config.toml, and 0.2's has not
ORBAX_0_1 = 'keep_latest = 3\nkeep_best = 1\nbest_metric = "val_loss"\nbest_mode = "min"\n'
ORBAX = "checkpointer 'orbax' of plugin jaxyard.plugins.checkpointers"


def _config(registry):
    options = {"epochs": 2, "batch_size": 16, "checkpointer": "orbax"}
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options, sets=[*TINY, "run.save_every=1"])


class _Interrupt:
    """Stops a run at the end of epoch 2, before that epoch's checkpoint: epoch 1's is the newest."""

    @jaxyard.hookimpl
    def jaxyard_on_epoch_end(self, record):
        if record["epoch"] == 2:
            raise RuntimeError("interrupted")


def _as_saved_by_0_1(run_dir: Path) -> str:
    """Put 0.1's orbax parameters into the run's config.toml, as a run saved by 0.1 has them; the
    file as 0.2 wrote it is returned."""
    path = run_dir / "config.toml"
    text = path.read_text()
    assert "[checkpointer.orbax]\n" in text
    path.write_text(text.replace("[checkpointer.orbax]\n", "[checkpointer.orbax]\n" + ORBAX_0_1))
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 2-epoch run and the same run interrupted after epoch 1's checkpoint, both saved
    as if by jaxyard 0.1's orbax checkpointer; the finished run's test numbers read before that."""
    tmp = tmp_path_factory.mktemp("stale")
    registry = jaxyard.build_registry(load=[])
    finished = jaxyard.train(_config(registry), out_dir=tmp / "finished")
    before = jaxyard.evaluate(tmp / "finished", registry=registry)
    registry.plugin_manager.register(_Interrupt(), name="interrupt")
    try:
        with pytest.raises(jaxyard.PluginError, match="interrupted"):
            jaxyard.train(_config(registry), out_dir=tmp / "interrupted")
    finally:
        registry.plugin_manager.unregister(name="interrupt")
    written = {name: _as_saved_by_0_1(tmp / name) for name in ("finished", "interrupted")}
    return types.SimpleNamespace(dir=tmp, finished=finished, before=before, written=written)


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in lines]


def test_eval_and_resume_name_the_stale_keys_the_component_and_the_way_out(runs, run_cli):
    for command, name in (("eval", "finished"), ("resume", "interrupted")):
        run_dir = runs.dir / name
        err = assert_one_line_error(run_cli([command, run_dir]))
        assert err == (
            f"Error: {run_dir}/config.toml: {ORBAX} (jaxyard {VERSION}) has no parameters 'keep_latest', 'keep_best', "
            f"'best_metric', 'best_mode' any more (valid keys: async_save): the run was saved by an older version; "
            f"`jaxyard upgrade {run_dir}` drops them after asking (keeping the old file), see CHANGELOG.md"
        )
    with pytest.raises(StaleConfig) as caught:
        jaxyard.evaluate(runs.dir / "finished", registry=jaxyard.build_registry(load=[]))
    assert [(k.kind, k.table, k.key) for k in caught.value.keys] == [
        ("checkpointer", "orbax", key) for key in ("keep_latest", "keep_best", "best_metric", "best_mode")
    ]


def test_upgrade_asks_keeps_the_old_file_and_eval_gives_the_same_numbers(runs, run_cli):
    run_dir = runs.dir / "finished"
    config = run_dir / "config.toml"
    saved = config.read_text()
    declined = run_cli(["upgrade", run_dir], input="n\n")
    assert declined.exit_code == 1 and config.read_text() == saved and not (run_dir / "config.toml.bak").exists()
    result = run_cli(["upgrade", run_dir], input="y\n")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        f"Keys of {config} that its components no longer take:",
        f"  [checkpointer.orbax] keep_latest = 3 ({ORBAX} (jaxyard {VERSION}); now a [run] setting: this run has run.keep_latest = 3)",
        f"  [checkpointer.orbax] keep_best = 1 ({ORBAX} (jaxyard {VERSION}); now a [run] setting: this run has run.keep_best = 1)",
    ]
    assert lines[5].startswith("Drop 4 keys, keeping the old file as config.toml.bak? [y/N]")
    assert (run_dir / "config.toml.bak").read_text() == saved
    assert config.read_text() == runs.written["finished"]  # exactly the file 0.2 writes: nothing else moved
    assert run_cli(["upgrade", run_dir]).stdout == f"{config}: every key is one its components take; nothing to do\n"

    evaluated = run_cli(["eval", run_dir])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert f"Test Loss: {runs.before.test_loss:.4f}" in evaluated.stdout
    after = jaxyard.evaluate(run_dir, registry=jaxyard.build_registry(load=[]))
    assert (after.step, after.test_loss, after.test_acc) == (runs.before.step, runs.before.test_loss, runs.before.test_acc)


def test_resume_after_upgrade_continues_as_the_uninterrupted_run(runs, run_cli):
    run_dir = runs.dir / "interrupted"
    assert run_cli(["upgrade", "--yes", run_dir]).exit_code == 0
    result = run_cli(["resume", run_dir])
    assert result.exit_code == 0, result.stderr
    assert _metrics(run_dir) == _metrics(runs.dir / "finished")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"] == runs.finished.test


# --- a plugin of its own: version 1 has a parameter, version 2 does not (no training) -------------------------

V1 = '''
import attrs
import jaxyard


@attrs.frozen
class Params:
    momentum: float = jaxyard.param(0.9, "momentum")
    nesterov: bool = jaxyard.param(False, "Nesterov momentum (version 1 only)")


def acme_sgd(params, *, learning_rate):
    """SGD with momentum."""
    import optax

    return optax.sgd(learning_rate, momentum=params.momentum)


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("acme-sgd", acme_sgd, params=Params)
'''
V2 = V1.replace('    nesterov: bool = jaxyard.param(False, "Nesterov momentum (version 1 only)")\n', "")


@pytest.fixture
def acme(tmp_path, monkeypatch):
    """``install(version)``: the entry point ``acme`` of distribution acme-optim at that version."""
    for version, source in (("1", V1), ("2", V2)):
        (tmp_path / f"acme_v{version}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    installed = metadata.entry_points

    def install(version: str) -> None:
        real = metadata.EntryPoint("acme", f"acme_v{version}", "jaxyard")
        dist = types.SimpleNamespace(name="acme-optim", version=f"{version}.0", requires=["jaxyard>=0.2"])
        monkeypatch.setattr(metadata, "entry_points", installed)  # this version replaces the other
        fake_entry_points(monkeypatch, types.SimpleNamespace(name="acme", value=real.value, group="jaxyard", load=real.load, dist=dist))

    yield install
    for version in ("1", "2"):
        sys.modules.pop(f"acme_v{version}", None)


def test_a_parameter_a_plugin_dropped_is_named_with_the_plugin_version_and_dropped_by_upgrade(acme, tmp_path, monkeypatch, run_cli):
    acme("1")
    saved = jaxyard.resolve_config(jaxyard.build_registry(load=["acme"]), jaxyard.load_settings(), options={"optimizer": "acme:acme-sgd"},
                                   sets=["optimizer.nesterov=true"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(saved.to_toml())

    acme("2")  # the plugin upgraded since the run
    registry = jaxyard.build_registry(load=["acme"])
    path = str(run_dir / "config.toml")
    with pytest.raises(StaleConfig, match=r"optimizer 'acme-sgd' of plugin acme \(acme-optim 2\.0\) has no parameter 'nesterov' any more "
                                          r"\(valid keys: momentum\)"):
        jaxyard.resolve_config(registry, jaxyard.Settings(), config_file=path, run_dir=run_dir)
    with pytest.raises(jaxyard.UsageError, match=r"\[optimizer.acme:acme-sgd\]: unknown key 'nesterov'"):  # an experiment file: a typo
        jaxyard.resolve_config(registry, jaxyard.Settings(), config_file=path)

    monkeypatch.setenv("JAXYARD_LOAD_PLUGINS", "acme")
    result = run_cli(["upgrade", "-y", run_dir])
    assert result.exit_code == 0, result.stderr
    assert "  [optimizer.acme:acme-sgd] nesterov = true (optimizer 'acme-sgd' of plugin acme (acme-optim 2.0))" in result.stdout.splitlines()
    upgraded = jaxyard.resolve_config(registry, jaxyard.Settings(), config_file=path, run_dir=run_dir)
    assert upgraded.optimizer.params.momentum == 0.9 and upgraded.to_dict()["run"] == saved.to_dict()["run"]
