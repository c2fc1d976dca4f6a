"""A run is one thing: its config.toml is bound to its checkpoints. A config.toml emptied, cut or
edited by hand is refused by resume and eval in one line naming what changed, and nothing is
written; `resume --epochs/--steps/--set` changes a run deliberately: printed, recorded, carried on."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

import jaxyard
from jaxyard.core.store import binding

from helpers import TINY, assert_one_line_error


def _files(run_dir: Path) -> dict[Path, bytes]:
    """Every file of a run directory but the lock (which records its last holder)."""
    return {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"}


def _cut_after_run_table(text: str) -> str:
    return text[: text.index("\n[", text.index("[run]"))] + "\n"


@pytest.mark.parametrize("damage, named", [
    (lambda text: text.replace("epochs = 2", "epochs = 4"), "run.epochs 2 -> 4"),
    (lambda text: "", "run.epochs 2 -> 10"),  # emptied: the defaults
    (_cut_after_run_table, "model.hidden_dims [32] -> [256, 128]"),  # the components' tables lost: their defaults
    (lambda text: text.replace('model = "mlp"', 'model = "logreg"'), "run.model mlp -> example:logreg"),
], ids=["edited", "emptied", "cut-after-run", "model-switched"])
def test_resume_and_eval_refuse_a_config_toml_that_does_not_match_its_checkpoint(run_cli, finished_run, damage, named):
    out = finished_run().dir
    path = out / "config.toml"
    path.write_text(damage(path.read_text()))
    before = _files(out)
    for command in (["resume", out], ["eval", out]):
        assert_one_line_error(run_cli(command), f"{path} does not match its checkpoint (step 14): ", named,
                              f"; restore config.toml, or change it deliberately with `jaxyard resume {out} --set KEY=VALUE`")
    assert _files(out) == before  # nothing trained, written or deleted


def test_resume_epochs_continues_a_finished_run_and_records_the_change(run_cli, finished_run):
    out = finished_run().dir
    result = run_cli(["resume", out, "--epochs", "3"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout.startswith("Changed on resume: run.epochs 2 -> 3\n"), result.stdout
    assert "Resuming after epoch 2 (checkpoint step 14)" in result.stdout and "Epoch 3/3" in result.stdout
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert tomllib.loads((out / "config.toml").read_text())["run"]["epochs"] == 3
    [change] = [json.loads(line) for line in (out / binding.CHANGES).read_text().splitlines()]
    assert {k: change[k] for k in ("step", "key", "from", "to")} == {"step": 14, "key": "run.epochs", "from": 2, "to": 3}

    newest = _newest(out)
    assert newest.step == 21 and newest.meta["config"]["run"]["epochs"] == 3
    assert newest.meta["config_sha256"] == binding.digest(newest.meta["config"])
    assert "devices" not in newest.meta["config"]["run"]  # a layout may change on resume

    before = _files(out)
    again = run_cli(["resume", out])  # config.toml and the newest checkpoint agree: nothing left to train
    assert again.exit_code == 0 and "Changed on resume" not in again.stdout, (again.stdout, again.stderr)
    assert (out / "metrics.jsonl").read_bytes() == before[out / "metrics.jsonl"]
    for step in ("14", "21"):  # the checkpoint saved before the change is read with it
        assert run_cli(["eval", out, "--checkpoint", step]).exit_code == 0


def _newest(run_dir: Path) -> jaxyard.Restored:
    from jaxyard.plugins._orbax import OrbaxCheckpointer

    storage = OrbaxCheckpointer(run_dir / "checkpoints")
    try:
        return jaxyard.CheckpointPolicy(storage, monitor=jaxyard.Monitor()).restore("latest")
    finally:
        storage.close()


class _StopAtStart:
    """Stops a resumed run as it starts: after its change is committed, before any checkpoint."""

    @jaxyard.hookimpl
    def jaxyard_on_run_start(self, run):
        raise KeyboardInterrupt


def test_a_change_stopped_before_its_first_checkpoint_resumes_with_it(finished_run):
    """The library's resume takes the same changes; a resume stopped before saving leaves config.toml
    changed and the newest checkpoint not: the record of the change reconciles them."""
    out = finished_run().dir
    registry = jaxyard.build_registry()
    registry.plugin_manager.register(_StopAtStart(), name="stop")
    with pytest.raises(KeyboardInterrupt):
        jaxyard.resume(out, registry=registry, epochs=3, sets=["run.patience=5"])
    registry.plugin_manager.unregister(name="stop")
    assert [json.loads(line)["key"] for line in (out / binding.CHANGES).read_text().splitlines()] == ["run.epochs", "run.patience"]
    lines = []
    result = jaxyard.resume(out, registry=registry, echo=lines.append)
    assert not [line for line in lines if line.startswith("Changed on resume")]
    assert len(result.history) == 3


def test_checkpoints_without_a_config_resume_as_before_and_stale_keys_are_not_compared(run_cli, tmp_path, monkeypatch):
    """A checkpoint saved before configurations were bound is not compared; a key the checkpoint
    holds that its component no longer takes (a plugin upgraded since) is no difference."""
    from jaxyard.core.train import fit

    options = {"epochs": 2, "batch_size": 16}
    registry = jaxyard.build_registry()
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options, sets=TINY)

    def with_a_dropped_key(config):
        meta = binding.binding_meta(config)
        meta["config"]["model"]["mlp"]["old_param"] = 1
        return meta

    for name, meta in (("unbound", lambda config: {}), ("stale", with_a_dropped_key)):
        with monkeypatch.context() as patch:
            patch.setattr(fit, "binding_meta", meta)
            jaxyard.train(config, out_dir=tmp_path / name)
    path = tmp_path / "unbound" / "config.toml"
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 3"))
    result = run_cli(["resume", tmp_path / "unbound"])
    assert result.exit_code == 0 and "Epoch 3/3" in result.stdout, (result.stdout, result.stderr)
    result = run_cli(["resume", tmp_path / "stale"])
    assert result.exit_code == 0, (result.stdout, result.stderr)


def test_resume_set_is_checked_like_run_set(run_cli, finished_run):
    out = finished_run().dir
    before = _files(out)
    assert_one_line_error(run_cli(["resume", out, "--set", "model.hidden_dims"]), "expected KIND.KEY=VALUE")
    assert_one_line_error(run_cli(["resume", out, "--set", "optimizer.b1=high"]), "b1")
    assert _files(out) == before
