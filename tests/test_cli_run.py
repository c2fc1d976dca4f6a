"""`jaxyard run`, `resume` and `eval` through click's CliRunner: real training, tiny data."""

import json
import tomllib

from helpers import as_options, assert_one_line_error, tiny

TINY = as_options(tiny())  # 100 training examples: 4 steps an epoch in the default batches of 32


def test_run_prints_the_seed_stages_and_writes_the_run(finished_run):
    """The report: the seven stages of the seed script in order, each numbered once, then the files."""
    run = finished_run()
    out, stdout = run.dir, run.stdout
    stages = ["1. Setting up configuration", "2. Loading data", "3. Creating model", "4. Setting up optimizer",
              "5. Starting training", "6. Evaluating on test set", "7. Plotting training curves"]
    positions = [stdout.index(stage) for stage in stages]
    assert positions == sorted(positions)
    numbered = [line for line in stdout.splitlines() if line[:2] in {f"{i}." for i in range(1, 10)}]
    assert [line[:2] for line in numbered] == ["1.", "2.", "3.", "4.", "5.", "6.", "7."]
    for line in ("  Loggers: jsonl, csv", "Epoch 2/2", "  Train - Loss: ", "  Val   - Loss: ", "Checkpoint saved: step 14 (epoch 2)",
                 "  Test Loss: ", "  Test Accuracy: ", f"Training curves saved to {run.source}"):
        assert line in stdout, line
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["14"]
    assert (out / "training_curves.png").is_file() and len((out / "metrics.csv").read_text().splitlines()) == 3


def test_third_party_components_run_end_to_end(run_cli, tmp_path):
    """The example package's optimizer, schedule and model, found through its entry point, train."""
    out = tmp_path / "run"
    args = ["run", *as_options(tiny(without=["model"])), "--optimizer", "signsgd", "--scheduler", "linear", "--model", "logreg",
            "--checkpointer", "none", "--epochs", "3", "--lr", "1e-3", "--out", out]
    result = run_cli(args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    saved = tomllib.loads((out / "config.toml").read_text())
    # a third-party component is written qualified: the saved config means it whatever is installed later
    assert saved["optimizer"] == {"example:signsgd": {"weight_decay": 0.0}} and saved["run"]["optimizer"] == "example:signsgd"
    assert list(saved["model"]) == ["example:logreg"]


def test_config_file_then_command_line(run_cli, tmp_path):
    experiment = tmp_path / "experiment.toml"
    experiment.write_text('[run]\noptimizer = "sgd"\nepochs = 7\n\n[optimizer.sgd]\nmomentum = 0.9\nnesterov = true\n')
    out = tmp_path / "run"
    result = run_cli(["run", "--config", experiment, *TINY, "--epochs", "1", "--checkpointer", "none", "--out", out])
    assert result.exit_code == 0, result.stderr
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["run"]["epochs"] == 1 and saved["run"]["optimizer"] == "sgd"
    assert saved["optimizer"]["sgd"] == {"momentum": 0.9, "nesterov": True, "weight_decay": 0.0}


def test_saved_config_repeats_the_run(run_cli, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_cli(["run", *TINY, "--epochs", "2", "--checkpointer", "none", "--seed", "5", "--out", first]).exit_code == 0
    assert run_cli(["run", "--config", first / "config.toml", "--out", second]).exit_code == 0

    def numbers(d):
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("time")} for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert numbers(first) == numbers(second)


def test_a_diverging_run_is_one_line_and_exit_1(run_cli, tmp_path):
    args = ["run", *TINY, "--optimizer", "sgd", "--lr", "1e30", "--set", "model.dropout_rate=0.0", "--out", tmp_path / "run"]
    assert_one_line_error(run_cli(args), "training diverged at epoch 1", exit_code=1)


def test_refused_values_write_nothing(run_cli, tmp_path):
    out = tmp_path / "run"
    for bad in (["--lr", "-1"], ["--batch-size", "0"], ["--set", "model.dropout_rate=1.0"], ["--set", "optimizer.b1=high"]):
        assert_one_line_error(run_cli(["run", *TINY, *bad, "--out", out]), exit_code=2)
    assert not out.exists()


def test_eval_and_resume_of_a_finished_run(run_cli, finished_run):
    out = finished_run().dir
    before = (out / "metrics.jsonl").read_text()
    result = run_cli(["eval", out, "--checkpoint", "latest"])
    assert result.exit_code == 0 and "Test Accuracy:" in result.stdout
    assert_one_line_error(run_cli(["eval", out, "--checkpoint", "99"]), "99", exit_code=1)
    assert_one_line_error(run_cli(["eval", out, "--checkpoint", "newest"]), "expected latest, best or a step number")
    result = run_cli(["resume", out])
    assert result.exit_code == 0, result.stderr
    assert (out / "metrics.jsonl").read_text() == before


def test_resume_of_something_else_is_refused(run_cli, tmp_path):
    assert_one_line_error(run_cli(["resume", tmp_path]), "not a jaxyard run directory")


def test_resume_of_a_finished_run_without_checkpoints_changes_nothing(run_cli, finished_run):
    out = finished_run("none").dir
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"}
    assert_one_line_error(run_cli(["resume", out]), "finished and has no checkpoint to resume from")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".jaxyard.lock"} == before  # the lock records its last holder


def test_default_run_directories_never_collide(tmp_path):
    from jaxyard.core.store.rundir import RunDir

    dirs = [RunDir.new(None, base=str(tmp_path), name="mlp-adam-synthetic").path for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert dirs[1].name == dirs[0].name + "-2"


def test_unwritable_out_is_one_line(run_cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(run_cli(["run", *TINY, "--out", blocker / "run"]), "cannot create the run directory")


def test_a_training_process_is_not_walked_again_at_exit(monkeypatch):
    """Start-up (issue 22): `run` and `resume` have the exit freeze what jax made (gc.freeze, once
    per process), so the interpreter's last collections do not walk it again; the library leaves
    the exit of a program that imports it alone."""
    import atexit
    import gc

    import jaxyard.cli as cli_module

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(cli_module._exit_quickly, "done", False, raising=False)
    cli_module._exit_quickly()
    cli_module._exit_quickly()
    assert registered == [gc.freeze]


def test_a_step_is_fsynced_in_parallel_and_its_failure_raised(tmp_path, monkeypatch):
    """Start-up (issue 22): the run's last checkpoint wait fsyncs a step's files several at once (a
    file system commits them together), every one of them, and an fsync that fails is raised."""
    import errno
    import os
    import threading

    import pytest

    from jaxyard.plugins._orbax import durable

    for i in range(6):
        (tmp_path / "step" / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "step" / f"d{i % 2}" / f"f{i}").write_bytes(b"x")
    real, seen, threads = os.fsync, [], set()
    gate = threading.Barrier(2, timeout=2)  # two fsyncs in flight at once, or the barrier breaks

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        seen.append(path)
        threads.add(threading.get_ident())
        if path.endswith(("f0", "f1")):
            gate.wait()
        return real(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name an fsynced descriptor")
    monkeypatch.setattr(os, "fsync", fsync)
    durable.fsync_tree(tmp_path / "step")
    assert len(threads) > 1
    assert sorted(os.path.basename(p) for p in seen) == sorted(["d0", "d1", "step", *(f"f{i}" for i in range(6))])

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        durable.fsync_tree(tmp_path / "step")
