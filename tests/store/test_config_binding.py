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
    for command, fix in ((["resume", out], f"; restore config.toml, or change it deliberately with `jaxyard resume {out} --set KEY=VALUE`"),
                         (["eval", out], "; restore config.toml (eval builds the run from it; it changes nothing)")):  # eval has no --set
        assert_one_line_error(run_cli(command), f"{path} does not match its checkpoint (step 14): ", named, fix)
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


# --- the adversarial review of the binding (0.3.2) ------------------------------------------------


class _StopAtFirstEpochEnd:
    """A kill before the first checkpoint (run.save_every = 5): the run stops after epoch 1, unsaved."""

    @jaxyard.hookimpl(tryfirst=True)
    def jaxyard_on_epoch_end(self, run, record):
        raise KeyboardInterrupt


def _killed_before_its_first_checkpoint(out: Path) -> None:
    registry = jaxyard.build_registry()
    registry.plugin_manager.register(_StopAtFirstEpochEnd(), name="stop")
    config = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"epochs": 4, "batch_size": 16},
                                    sets=[*TINY, "run.save_every=5"])
    with pytest.raises(KeyboardInterrupt):
        jaxyard.train(config, out_dir=out)


def test_a_run_killed_before_its_first_checkpoint_is_bound_too(run_cli, tmp_path):
    """The configuration bound when the run started is the reference while no checkpoint is: an
    emptied config.toml is refused (not the defaults trained over metrics.jsonl); an intact one starts again."""
    out = tmp_path / "run"
    _killed_before_its_first_checkpoint(out)
    path = out / "config.toml"
    text = path.read_text()
    path.write_text("")
    before = _files(out)
    err = assert_one_line_error(run_cli(["resume", out]), f"{path} does not match its bound configuration (config.bound.json; no checkpoint saved): ",
                                "run.epochs 4 -> 10", f"; restore config.toml, or change it deliberately with `jaxyard resume {out} --set KEY=VALUE`")
    assert "No checkpoint to resume from" not in err
    assert _files(out) == before  # metrics.jsonl kept, nothing trained

    path.write_text(text)
    result = run_cli(["resume", out])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "No checkpoint to resume from" in result.stderr and "Epoch 4/4" in result.stdout


def test_a_checkpointer_none_run_is_bound_and_its_checkpointer_named(run_cli, finished_run):
    """Emptied, a `--checkpointer none` run's config.toml names orbax: a mismatch with the run's own
    checkpointer, not "no checkpoint to resume from (checkpointer 'orbax')"."""
    out = finished_run("none").dir
    (out / "config.toml").write_text("")
    before = _files(out)
    err = assert_one_line_error(run_cli(["resume", out]), "does not match its bound configuration (config.bound.json)",
                                "run.checkpointer none -> orbax")
    assert "no checkpoint to resume from" not in err
    assert _files(out) == before


@pytest.mark.parametrize("args, message", [
    (["--epochs", "1"], "--epochs 1: the run has already trained 2 epochs (checkpoint step 14); a run is not made shorter: give --epochs 2 or more"),
    (["--steps", "10"], "--steps 10: the run has already trained 14 steps (checkpoint step 14); a run is not made shorter: give --steps 14 or more"),
    (["--set", "run.epochs=1"], "--set run.epochs=1: the run has already trained 2 epochs (checkpoint step 14)"),
])
def test_resume_never_makes_a_run_shorter_than_it_has_trained(run_cli, finished_run, args, message):
    out = finished_run().dir
    before = _files(out)
    assert_one_line_error(run_cli(["resume", out, *args]), message)
    assert _files(out) == before  # not recorded, config.toml and summary.json as they were


@pytest.mark.parametrize("checkpointer", ["none", "orbax-but-another"])
def test_resume_refuses_changing_the_checkpointer(run_cli, finished_run, checkpointer, tmp_path):
    """The checkpointer holds the run's checkpoints: another one would start the run again from scratch, saying so falsely."""
    out = finished_run().dir
    plugin = []
    if checkpointer != "none":  # a checkpointer of another plugin
        (tmp_path / "other_ckpt.py").write_text(
            "import jaxyard\nfrom jaxyard.plugins.checkpointers import orbax, OrbaxParams\n\n"
            "@jaxyard.hookimpl\ndef jaxyard_register_checkpointers(register):\n"
            f"    register({checkpointer!r}, orbax, params=OrbaxParams)\n")
        plugin = ["--plugin", tmp_path / "other_ckpt.py"]
    before = _files(out)
    assert_one_line_error(run_cli([*plugin, "resume", out, "--epochs", "3", "--set", f"run.checkpointer={checkpointer}"]),
                          f"--set run.checkpointer={checkpointer}: a run keeps its checkpointer (orbax), which holds its checkpoints; "
                          f"to train with {'other_ckpt:' * bool(plugin)}{checkpointer}, start a new run")
    assert _files(out) == before


def test_a_mismatch_with_a_recorded_change_names_the_record(finished_run):
    """A change recorded but not yet checkpointed, then the old config.toml restored by hand: the
    checkpoint holds the old value, so the expected one is named as the record's."""
    out = finished_run().dir
    old = (out / "config.toml").read_bytes()
    registry = jaxyard.build_registry()
    registry.plugin_manager.register(_StopAtStart(), name="stop")
    with pytest.raises(KeyboardInterrupt):
        jaxyard.resume(out, registry=registry, sets=["run.learning_rate=0.002"])
    (out / "config.toml").write_bytes(old)
    with pytest.raises(binding.ConfigMismatch) as caught:
        jaxyard.resume(out, registry=registry)
    assert str(caught.value).startswith(f"{out / 'config.toml'} does not match its checkpoint (step 14) plus the change recorded in "
                                        "changes.jsonl at step 14: run.learning_rate 0.002 -> 0.001; restore config.toml"), str(caught.value)


def test_a_value_given_that_config_toml_holds_changes_nothing(run_cli, finished_run):
    """`resume --epochs 2` of a 2-epoch run: config.toml (its comments with it) and the bound configuration left as they are."""
    out = finished_run().dir
    path = out / "config.toml"
    path.write_text("# my notes on this run\n" + path.read_text())
    before = {p: p.read_bytes() for p in out.glob("config*")}  # config.toml, and the bound configuration
    result = run_cli(["resume", out, "--epochs", "2"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "Changed on resume" not in result.stdout and not (out / binding.CHANGES).exists()
    assert {p: p.read_bytes() for p in before} == before


def test_resume_set_of_a_logger_not_in_the_run_says_how_to_add_it(run_cli, finished_run):
    """resume has no --logger: the way to add one is --set run.loggers=..., which then resolves."""
    from jaxyard.core.train.engine import load_run_config

    out = finished_run().dir
    assert_one_line_error(run_cli(["resume", out, "--set", "logger.tensorboard.subdir=tb"]),
                          "logger 'tensorboard' is not in run.loggers (jsonl, csv); add it with --set run.loggers=jsonl,csv,tensorboard")
    config = load_run_config(out, sets=["run.loggers=jsonl,csv,tensorboard", "logger.tensorboard.subdir=tb"])
    assert config.run.loggers == ("jsonl", "csv", "tensorboard")


def test_a_shorter_resume_of_an_accumulating_run_is_refused_in_its_own_units():
    """With run.accumulate_steps = 4 a checkpoint's step counts optimizer updates (12 = 48 batches,
    4 epochs of 12 batches) while the rounds end in batches: 3 epochs (36 batches) is shorter."""
    import types

    from jaxyard.core.errors import UsageError
    from jaxyard.core.train.resuming import refuse_shorter

    run = types.SimpleNamespace(accumulate_steps=4, steps=0, epochs=3)
    built = types.SimpleNamespace(config=types.SimpleNamespace(run=run), round_ends=(0, 12, 24, 36), steps_per_epoch=12)
    with pytest.raises(UsageError, match=r"^--epochs 3: the run has already trained 4 epochs \(checkpoint step 12\); .* give --epochs 4 or more$"):
        refuse_shorter(built, types.SimpleNamespace(step=12), {"epochs": 3}, ())
    refuse_shorter(built, types.SimpleNamespace(step=9), {"epochs": 3}, ())  # 36 batches: not shorter


def test_a_streamed_checkpoints_position_refuses_a_change_of_its_loader_or_batches():
    """A checkpoint holding a stream's position (grain's, whose state depends on its workers) is
    refused a resume that changes the loader's parameters or the batches, in one line; other keys pass."""
    import types

    from jaxyard.core.errors import UsageError
    from jaxyard.core.store.binding import Difference
    from jaxyard.core.train.resuming import refuse_moved

    config = types.SimpleNamespace(run=types.SimpleNamespace(accumulate_steps=1), loader=types.SimpleNamespace(name="grain"))
    built = types.SimpleNamespace(config=config, stepped=True, round_ends=(0, 5, 10, 15))
    restored = types.SimpleNamespace(step=10, meta={"epoch": 2, "stream": {"epoch": 1, "state": "{}"}})
    for change in (Difference("loader.worker_count", 1, 0), Difference("run.batch_size", 8, 16)):
        with pytest.raises(UsageError, match=rf"^{change.key} .*: checkpoint step 10 holds loader 'grain''s position in its stream"):
            refuse_moved(built, restored, [change])
    refuse_moved(built, restored, [Difference("run.steps", 15, 30)])
