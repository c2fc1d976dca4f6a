"""One writer per run directory, and every failure path one line with nothing left behind."""

import json
import signal
import subprocess
import sys

import pytest

import jaxyard

from helpers import BROKEN, LOCAL, PAUSE, REPO, as_options, assert_one_line_error, clean_environ, tiny, wait_for

# A writer as `run --out D` starts one: claim D (locking it), write, then hold it until the file
# argv[2] exists (the test says when: after its rival has given up).
WRITER = """
import os, sys, time
from jaxyard.core.errors import UsageError
from jaxyard.core.store.rundir import RunDir
try:
    d = RunDir.new(sys.argv[1], base="unused", name="x")
except UsageError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
d.write_config(f"owner = {os.getpid()}\\n")
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
print(os.getpid())
"""


def sets(*extra):
    return as_options(tiny(*extra))


@pytest.mark.slow
def test_two_writers_on_one_directory_one_wins_six_times_out_of_six(tmp_path):
    """Two writers started together: one claims the directory and holds it until the other has
    finished, so the loser always meets a live claim (the lock is flock: more races prove nothing new)."""
    env = clean_environ()

    def start(out, release):
        return subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(release)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    races = []
    for batch in range(2):  # three directories at a time, two writers each, started together
        pairs = {tmp_path / f"run{batch * 3 + i}": [] for i in range(3)}
        for out in pairs:
            pairs[out] = [start(out, out.with_name(out.name + ".release")) for _ in range(2)]
        for out, procs in pairs.items():
            wait_for(lambda procs=procs: any(p.poll() is not None for p in procs), what="one of two writers gave up")
            out.with_name(out.name + ".release").touch()  # the loser is done: the winner may finish
            races.append((out, [(p.wait(), *p.communicate()) for p in procs]))
    assert len(races) == 6
    for out, results in races:
        winners = [r for r in results if r[0] == 0]
        losers = [r for r in results if r[0] != 0]
        assert len(winners) == 1 and len(losers) == 1, results
        assert (out / "config.toml").read_text() == f"owner = {winners[0][1].strip()}\n"  # the loser wrote nothing
        err = losers[0][2].strip()
        assert "\n" not in err and ("is being written by pid" in err or "is not empty" in err), err
        assert sorted(p.name for p in out.iterdir()) == [".jaxyard.lock", "config.toml"]


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(tmp_path / "never")], env=clean_environ(),
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_for((out / "config.toml").exists, proc, what="the writer claimed the directory")
        from jaxyard.core.store.rundir import RunDir, RunDirBusy

        with pytest.raises(RunDirBusy, match=rf"is being written by pid {proc.pid} on "):
            RunDir(out).lock()
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    directory = RunDir(out)
    directory.lock()  # the kernel released it with the process
    directory.unlock()


@pytest.mark.slow
def test_readers_and_second_writers_never_disturb_a_training_run(tmp_path, run_cli):
    """While a run trains (saving every epoch, keeping 2): `eval` in a loop, a second `run --out`
    and a `resume` of the same directory. The run ends with the numbers of an undisturbed one.
    The run holds still after epochs 2 and 5 (tests/plugins_local/pause.py) until the readers have
    read and the second writers have been refused; between and after, the readers race its saves."""
    args = ["--epochs", "8", "--batch-size", "10", *sets("loader.train_size=600", "run.save_every=1", "run.keep_latest=2")]
    reference = tmp_path / "reference"
    assert run_cli(["run", "--out", reference, *args]).exit_code == 0
    out, pauses = tmp_path / "run", tmp_path / "pauses"
    pauses.mkdir()
    env = clean_environ(PAUSE_DIR=str(pauses), PAUSE_AT="epoch-2,epoch-5")
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "--strict-plugins", "--plugin", str(PAUSE), "run", "--out", str(out), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    def evaluate():
        try:
            jaxyard.evaluate(out)
        except jaxyard.CheckpointError:
            pass  # a step retention deleted between listing and reading: the reader just tries again

    try:
        wait_for((pauses / "paused-epoch-2").exists, proc, what="epoch 2 ended")
        assert_one_line_error(run_cli(["run", "--out", out, *args]), f"run directory {out} is being written by pid {proc.pid}")
        assert_one_line_error(run_cli(["resume", out]), f"is being written by pid {proc.pid}")
        jaxyard.evaluate(out)  # held still (retention waits too): the latest checkpoint is there to read
        (pauses / "go-epoch-2").touch()
        while not (pauses / "paused-epoch-5").exists() and proc.poll() is None:
            evaluate()
        jaxyard.evaluate(out)
        (pauses / "go-epoch-5").touch()
        while proc.poll() is None:
            evaluate()
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.communicate()[0]
    assert proc.returncode == 0, output

    def metrics(d):
        return [{k: v for k, v in json.loads(line).items() if not k.endswith("time")} for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert metrics(out) == metrics(reference)


def test_bad_sizes_are_one_line_and_leave_nothing(run_cli, tmp_path):
    out = tmp_path / "run"
    cases = [
        (["--epochs", "100000000000000000000"], "more than the step counter holds"),
        (["--epochs", "3000000000"], "use at most 67108863 epochs"),
        (["--batch-size", "1000000000000"], "run.batch_size = 1000000000000 is larger than the 1000 training examples"),
        (["--set", "model.hidden_dims=10000000"], "model 'mlp' has 7,950,000,010 parameters"),
        (["--lr", "inf"], "run.learning_rate: expected a finite number, got inf"),
        (["--lr", "nan"], "run.learning_rate: expected a finite number, got nan"),
        (["--set", "optimizer.b1=nan"], "expected a finite number"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_cli(["run", "--out", out, *args]), fragment)
        assert not out.exists(), args


def test_non_finite_features_name_the_loader_split_and_row(run_cli, tmp_path):
    result = run_cli(["--plugin", LOCAL / "bad_data.py", "run", "--out", tmp_path / "run", "--loader", "nan-features", "--batch-size", "8"])
    assert_one_line_error(result, "loader 'nan-features': val example 7 has a non-finite feature (nan)")
    assert not (tmp_path / "run").exists()


def test_a_plugin_exiting_at_import_is_skipped(run_cli):
    registry = jaxyard.build_registry(plugins=[str(BROKEN / "exits_on_import.py")])
    failed = [p for p in registry.plugins if not p.ok]
    assert len(failed) == 1 and failed[0].error == "SystemExit: 3"
    result = run_cli(["--plugin", BROKEN / "exits_on_import.py", "list", "optimizers"])
    assert result.exit_code == 0 and "adam" in result.stdout and "SystemExit: 3" in result.stderr


def test_schedule_needs_two_points(run_cli):
    result = run_cli(["schedule", "--points", "-3"])
    assert result.exit_code == 2 and "-3 is not in the range x>=2" in result.stderr


def test_checkpoint_steps_are_ascii_digits(run_cli, finished_run):
    out = finished_run().dir
    assert_one_line_error(run_cli(["eval", out, "--checkpoint", "²"]), "--checkpoint '²': expected latest, best or a step number")


def test_a_directory_with_no_committed_config_is_not_a_run(run_cli, tmp_path):
    """A full disk before config.toml leaves config.toml.tmp (at most): the directory may be reused."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml.tmp").write_text("half a config")
    assert run_cli(["run", "--out", out, "--epochs", "1", *sets()]).exit_code == 0
    assert (out / "config.toml").exists() and not (out / "config.toml.tmp").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli(["run", "--out", other, "--epochs", "1", *sets()]), f"run directory {other} is not empty")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_write_atomic_leaves_no_temporary_file_when_the_disk_is_full(tmp_path):
    code = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from jaxyard.core.store.rundir import write_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        "try:\n"
        "    write_atomic(Path(sys.argv[1]), 'x' * 5000)\n"
        "except OSError as err:\n"
        "    print(err.strerror)\n"
    )
    target = tmp_path / "config.toml"
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=clean_environ(), capture_output=True, text=True)
    assert proc.stdout.strip() == "File too large", proc
    assert list(tmp_path.iterdir()) == []


def test_eval_of_a_run_without_checkpoints_writes_nothing(run_cli, finished_run):
    out = finished_run("none").dir
    before = sorted(p.name for p in out.iterdir())
    assert_one_line_error(run_cli(["eval", out]), "no checkpoints saved yet", exit_code=1)
    assert sorted(p.name for p in out.iterdir()) == before


def test_refusing_a_finished_run_leaves_its_lock_record_alone(run_cli, finished_run):
    out = finished_run().dir
    record = (out / ".jaxyard.lock").read_bytes()
    assert_one_line_error(run_cli(["run", "--out", out, "--epochs", "1", *sets()]), "is not empty")
    assert (out / ".jaxyard.lock").read_bytes() == record
