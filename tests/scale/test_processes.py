"""A job of several processes: `launch -n 2` (2 processes x 2 host devices, on JAX's own runtime)
against one process on one device, checkpoints moving between the two, a killed process, and the
job's errors.

Each job is real processes joined by `jax.distributed` over loopback; the one-process runs happen
in this test process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LOCAL, PAUSE, as_options, clean_environ, tiny, wait_for

pytestmark = pytest.mark.xdist_group("processes")  # one worker computes the module's reference run

# The tiny workload in batches of 32 (4 steps an epoch, the last partial), 4 epochs, each saved and kept.
SETS = tiny("run.epochs=4", "run.batch_size=32", "run.save_every=1", "run.keep_latest=10")
TOGETHER = str(LOCAL / "exit_together.py")  # a job's processes exit together (its docstring)


def _args(*sets: str) -> list[str]:
    return as_options([*SETS, *sets])


@pytest.fixture
def env():
    return clean_environ()  # the suite's compile cache: the jobs compile the same programs once


def launch(*args: str, env, plugins: tuple[str, ...] = (), **kwargs) -> subprocess.Popen:
    extra = [x for p in plugins for x in ("--plugin", p)]
    return subprocess.Popen([sys.executable, "-m", "jaxyard.cli", "--cpu-devices", "2", "--strict-plugins", *extra, "launch", "-n", "2", "--",
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def config(*sets: str):
    from jaxyard.core.registry.config import resolve_config
    from jaxyard.core.registry.loading import build_registry
    from jaxyard.core.registry.settings import Settings

    return resolve_config(build_registry(), Settings(), sets=[*SETS, *sets])


def numbers(history: list[dict], test: dict) -> list[list[float]]:
    return [[r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"]] for r in history] + [[test["test_loss"], test["test_acc"]]]


def from_run_dir(run_dir: Path) -> list[list[float]]:
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return numbers(history, json.loads((run_dir / "summary.json").read_text())["test"])


def assert_equal_within_1e5(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert y == pytest.approx(x, rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run on one device in one process."""
    from jaxyard.core.train.engine import train

    result = train(config(), out_dir=tmp_path_factory.mktemp("one") / "run")
    return numbers(result.history, result.test)


@pytest.mark.slow
def test_a_two_process_job_matches_one_process_and_only_process_0_writes(reference, env, tmp_path):
    out = tmp_path / "job"
    proc = launch("run", "--out", str(out), *_args("run.shard_params=true"), env=env)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Devices: 4 cpu devices (2 processes x 2), batch split along 'data', state sharded" in stdout
    others = [line for line in stdout.splitlines() if not line.startswith("[0] ")]
    assert not others, (others, stderr[-2000:])  # process 0 reports for the job
    assert_equal_within_1e5(reference, from_run_dir(out))
    written = ["checkpoints", "components.json", "config.bound.json", "config.toml", "metrics.jsonl", "summary.json", "training_curves.png"]
    assert sorted(p.name for p in out.iterdir()) == [".jaxyard.lock", *written]
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12, 16]

    from jaxyard.core.train.engine import evaluate

    assert evaluate(out).test_loss == pytest.approx(reference[-1][0], rel=1e-5)  # one device reads the job's checkpoint


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()[1] == str(pid):
                out.append(int(name))
        except (OSError, IndexError):
            pass
    return out


@pytest.mark.slow
def test_a_killed_process_stops_the_job_and_resume_in_one_process_ends_equal(reference, env, tmp_path):
    """Process 1 is killed while both processes are held after epoch 2 (tests/plugins_local/pause.py):
    the job stops only because the launcher stops process 0."""
    out, pauses = tmp_path / "job", tmp_path / "pauses"
    pauses.mkdir()
    proc = launch("run", "--out", str(out), *_args(), env={**env, "PAUSE_DIR": str(pauses), "PAUSE_AT": "epoch-2"}, plugins=(str(PAUSE),))
    try:
        wait_for((pauses / "paused-epoch-2-p1").exists, proc, what="process 1 ended epoch 2")
        victim = next(p for p in _children(proc.pid) if b"JAXYARD_PROCESS_ID=1" in Path(f"/proc/{p}/environ").read_bytes())
        os.kill(victim, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)  # generous: what counts is that it stops, process 0 being held
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL
    assert "jaxyard launch: process 1 of 2 was killed by SIGKILL; stopping the other 1 process(es)" in stderr
    assert not (out / "summary.json").exists()

    from jaxyard.core.train.engine import resume

    result = resume(out)  # one process, one device, from the job's newest intact checkpoint
    assert_equal_within_1e5(reference, numbers(result.history, result.test))


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_as_a_two_process_job(reference, env, tmp_path):
    import jaxyard
    from jaxyard.core.train.engine import train

    cfg = config()

    class Interrupt:  # stops the run after its epoch-2 checkpoint, as a kill would
        @jaxyard.hookimpl
        def jaxyard_on_checkpoint_saved(self, run, step, path, record):
            if record["epoch"] == 2:
                raise KeyboardInterrupt

    cfg.registry.plugin_manager.register(Interrupt(), name="interrupt")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=tmp_path / "run")
    proc = launch("resume", str(tmp_path / "run"), env=env)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "[0]   Resuming after epoch 2 (checkpoint step 8)" in stdout
    assert_equal_within_1e5(reference, from_run_dir(tmp_path / "run"))


@pytest.mark.slow
def test_process_0s_error_is_every_process_error_in_one_line(env, tmp_path):
    """Each process prints the job's error; they exit together (tests/plugins_local/exit_together.py),
    so the launcher stopping the others when the first one fails cannot cut a process's line off."""
    taken = tmp_path / "a-file"
    taken.write_text("not a run directory")
    exits = tmp_path / "exits"
    exits.mkdir()
    proc = launch("run", "--out", str(taken), *_args(), env={**env, "EXIT_DIR": str(exits)}, plugins=(TOGETHER,))
    _, stderr = proc.communicate()
    assert proc.returncode == 2, stderr
    message = f"run directory {taken} exists and is not a directory; choose another --out"
    lines = stderr.strip().splitlines()
    assert sorted(line for line in lines if not line.startswith("jaxyard launch")) == [f"[0] Error: {message}", f"[1] Error: {message}"], stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in exits.iterdir()) == ["exiting-0", "exiting-1"]


def test_joining_needs_the_whole_address_of_the_job():
    from jaxyard.core.errors import UsageError
    from jaxyard.core.scale.processes import join

    assert join() is False  # no job asked for: nothing happens
    with pytest.raises(UsageError, match="missing --num-processes, --process-id"):
        join("127.0.0.1:1234")
    with pytest.raises(UsageError, match=r"--coordinator 'localhost': expected HOST:PORT"):
        join("localhost", 2, 0)
    with pytest.raises(UsageError, match="--process-id 2: expected 0 to 1"):
        join("127.0.0.1:1234", 2, 2)


def test_launch_refuses_nothing_to_launch(run_cli):
    result = run_cli(["launch", "-n", "2"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: nothing to launch: give the command after --")
    result = run_cli(["launch", "-n", "0", "--", "run"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.stderr
    result = run_cli(["launch", "-n", "2", "--", "--plugin", "x.py", "sweep", "--lr", "1e-3,1e-2"])
    assert result.exit_code == 2
    assert result.stderr == "Error: jaxyard sweep does not join a job: launch runs run, resume, check\n"


def test_one_process_needs_no_collective():
    from jaxyard.core.scale import processes

    assert (processes.count(), processes.index(), processes.is_primary()) == (1, 0, True)
    assert processes.from_primary(lambda: 41 + 1) == 42
    assert processes.broadcast_json({"a": [1]}) == {"a": [1]}


def test_a_collective_broken_by_a_dead_process_is_one_line(monkeypatch):
    from jaxyard.core.errors import PluginError
    from jaxyard.core.scale import processes

    class JaxRuntimeError(RuntimeError):  # jax's name for it; what matters is its message
        pass

    broken = JaxRuntimeError("UNKNOWN: Gloo all-reduce failed: [pair.cc:547] Connection closed by peer [127.0.0.1]:7584\nmore")
    wrapped = PluginError("plugin jaxyard.plugins.checkpointing failed in jaxyard_on_epoch_end: ...")
    wrapped.__cause__ = broken
    assert processes.lost_contact(wrapped) is None  # one process: no job to lose
    monkeypatch.setattr(processes, "count", lambda: 2)
    monkeypatch.setattr(processes, "index", lambda: 0)
    error = processes.lost_contact(wrapped)
    assert str(error).startswith("process 0 lost contact with another process of the job (2 processes): it stopped or failed")
    assert "Connection closed by peer" in str(error) and "\n" not in str(error)
    assert processes.lost_contact(JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")) is None
