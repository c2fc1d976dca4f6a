"""A sweep that meets the machine's failures: a full disk fails trials (exit 1, one line, `sweep
--resume` retries them), a study.log cut by a write that failed is mended or refused in one line,
and the storage a sweep.json names is used only when the command line names it again.

The full disk is simulated without root: ``os.fsync`` (every file jaxyard writes is fsynced, through
write_atomic) or Optuna's journal append fails with ENOSPC for the files chosen, as the kernel
reports a full disk. The sweeps are the smallest the sweep tests run (the tiny workload, 1 epoch).
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from test_sweep import sets

from jaxyard.core.experiments import sweep as S

from helpers import assert_one_line_error

optuna = pytest.importorskip("optuna")


def lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(test)``: from now on, fsync of a file whose path ``test(path)`` holds fails
    with ENOSPC (as a full disk reports it); ``disk_full(None)``: room again."""
    real = os.fsync
    full = {"test": None}

    def fsync(fd):
        test = full["test"]
        if test is not None and test(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return lambda test: full.__setitem__("test", test)


def test_trials_failed_by_a_full_disk_exit_1_in_one_line_and_resume_runs_them_again(run_cli, tmp_path, disk_full):
    out = tmp_path / "sweep"
    disk_full(lambda path: f"/{S.TRIALS}/0002" in path)  # the disk fills up as trial 2 starts
    result = run_cli(["sweep", "--optimizer", "sgd", "--lr", "0.05,1e9,0.1", "--prune", "none", "--out", str(out),
                      *sets("run.epochs=1")])
    assert_one_line_error(result, f"1 of 3 trials failed: No space left on device; `jaxyard sweep --resume {out}` retries them",
                          exit_code=1)
    assert "Leaderboard" in result.stdout
    by_trial = {x["trial"]: x for x in lines(out)}
    assert by_trial[0]["state"] == "complete" and by_trial[2]["environment"] == "No space left on device"
    assert by_trial[1]["state"] == "failed" and by_trial[1]["environment"] is None  # diverged: the configuration's fault

    disk_full(None)  # room again
    again = run_cli(["sweep", "--resume", str(out)])
    assert again.exit_code == 0, (again.stdout, again.stderr)
    assert again.stdout.startswith("Trial 2: it failed (No space left on device); queued again\n")
    assert "Trial 1:" not in again.stdout  # a diverged trial would diverge again: not retried
    latest = S.results(out)
    assert [(x["trial"], x["state"]) for x in latest] == [(0, "complete"), (1, "failed"), (2, "failed"), (3, "complete")]
    assert latest[2]["retried"] and latest[3]["params"] == {"run.learning_rate": 0.1}
    study = optuna.load_study(study_name="sweep", storage=S.storage_of(out, S.load_spec(out)))
    assert study.trials[3].user_attrs["retry_of"] == 2
    assert "0 complete" in run_cli(["sweep", "--resume", str(out)]).stdout  # nothing left: not retried twice


def test_a_study_log_cut_by_a_failed_write_is_mended_and_one_cut_short_is_refused(run_cli, tmp_path, monkeypatch):
    """The disk fills while trial 1's end is written to the journal: half the line is written."""
    from optuna.storages.journal import JournalFileBackend

    out, real = tmp_path / "sweep", JournalFileBackend.append_logs

    def append_logs(self, logs):
        if any(log.get("trial_id") == 1 and log.get("state") == 1 for log in logs):  # trial 1 told complete
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
            with open(self._file_path, "ab") as f:
                f.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append_logs)
    result = run_cli(["sweep", "--lr", "1e-3,1e-2", "--prune", "none", "--out", str(out), *sets("run.epochs=1")])
    assert_one_line_error(result, "the sweep stopped: No space left on device", f"`jaxyard sweep --resume {out}` goes on", exit_code=1)
    monkeypatch.setattr(JournalFileBackend, "append_logs", real)  # room again
    cut = (out / S.STUDY_FILE).read_bytes()
    assert not cut.endswith(b"\n")

    half = tmp_path / "half"  # a copy whose study.log lost more than its last write
    shutil.copytree(out, half)
    data = (half / S.STUDY_FILE).read_bytes()[: len(cut) // 2]
    (half / S.STUDY_FILE).write_bytes(data)
    refused = run_cli(["sweep", "--resume", str(half)])
    assert_one_line_error(refused, f"{half / S.STUDY_FILE} is cut short", "start a new sweep")
    assert (half / S.STUDY_FILE).read_bytes() == data and not (half / "study.log.torn").exists()  # nothing written

    mended = run_cli(["sweep", "--resume", str(out)])
    assert mended.exit_code == 0, (mended.stdout, mended.stderr)
    assert mended.stderr == (f"Warning: {out / S.STUDY_FILE}: its last line was cut off (a write interrupted by a kill or a full disk); "
                             "the study goes on without that last update (set aside to study.log.torn)\n")
    assert "Trial 1: its worker stopped before it finished; queued again" in mended.stdout
    kept = cut[: cut.rfind(b"\n") + 1]
    assert (out / S.STUDY_FILE).read_bytes().startswith(kept + b'{"op_code"')  # the study went on from its last whole line
    assert cut.endswith((out / "study.log.torn").read_bytes().rstrip(b"\n"))
    assert sorted(x["params"]["run.learning_rate"] for x in S.results(out) if x["state"] == "complete") == [0.001, 0.01]
    again = run_cli(["sweep", "--resume", str(out)])  # the journal reads back whole now
    assert again.exit_code == 0 and again.stderr == "" and "0 complete" in again.stdout


def new_sweep(registry, out, storage=None):
    """A sweep directory of two trials, none run yet."""
    return S.new(S.resolver(registry), options={"learning_rate": "1e-3,1e-2"}, sets=sets("run.epochs=1")[1::2], out=out,
                 prune="none", storage=storage)


@pytest.mark.parametrize("line", ["[1, 2]", '{"op_code": 99}'])
def test_a_study_log_line_that_is_json_but_no_journal_entry_is_named_damaged(run_cli, tmp_path, registry, line):
    """Not a torn write (a whole line), yet no entry Optuna knows: one line naming the file as damaged
    and the way out, not "--storage ...: TypeError" (no --storage was given)."""
    out = tmp_path / "sweep"
    new_sweep(registry, out)
    with open(out / S.STUDY_FILE, "a") as f:
        f.write(line + "\n")
    assert_one_line_error(run_cli(["sweep", "--resume", str(out)]), f"{out / S.STUDY_FILE} is damaged", "start a new sweep")


@pytest.fixture(scope="module")
def registry():
    from jaxyard.core.registry.loading import build_registry

    return build_registry()


def test_a_storage_named_only_by_sweep_json_is_refused_until_the_command_line_names_it(run_cli, tmp_path, registry):
    elsewhere = tmp_path / "elsewhere"
    out = new_sweep(registry, tmp_path / "sweep")
    spec = json.loads((out / S.SPEC).read_text())
    url = f"sqlite:///{elsewhere / 'studies.db'}"
    (out / S.SPEC).write_text(json.dumps({**spec, "storage": url}))  # edited: a database somewhere else
    result = run_cli(["sweep", "--resume", str(out)])
    assert_one_line_error(result, f"{out / S.SPEC} names the study storage {url}, outside the sweep directory",
                          f"jaxyard sweep --resume {out} --storage {url}")
    assert not elsewhere.exists()
    result = run_cli(["sweep", "--resume", str(out), "--storage", f"sqlite:///{tmp_path / 'other.db'}"])
    assert_one_line_error(result, "a resumed sweep cannot change it")
    assert not (tmp_path / "other.db").exists()

    db = f"sqlite:///{tmp_path / 'studies.db'}"  # a sweep started on a database: resumed with it named again
    shared = new_sweep(registry, tmp_path / "shared", storage=db)
    assert_one_line_error(run_cli(["sweep", "--resume", str(shared)]), f"--storage {db}")
    result = run_cli(["sweep", "--resume", str(shared), "--storage", db])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "2 complete" in result.stdout


@pytest.mark.parametrize("line", [
    '{"trial": [1], "state": "complete", "params": {}}',
    '{"trial": 0, "state": "complete", "params": {}, "run_dir": 5}',
    '{"trial": 0, "state": "complete", "params": {}, "value": "low"}',
    '{"trial": 0, "state": "complete", "params": [1]}',
    '{"trial": 0, "state": "complete", "params": {}, "run_dir": "../../elsewhere"}',
], ids=["trial", "run_dir", "value", "params", "run_dir-outside"])
def test_resume_names_a_sweep_jsonl_line_it_cannot_use(run_cli, tmp_path, registry, line):
    out = new_sweep(registry, tmp_path / "sweep")
    (out / S.RESULTS).write_text(line + "\n")
    assert_one_line_error(run_cli(["sweep", "--resume", str(out)]), f"{out / S.RESULTS}:1 is not a trial's line")


@pytest.mark.parametrize("key, value", [("monitor", 5), ("storage", 5), ("trials", "5"), ("sampler", "best"), ("dims", {})])
def test_resume_names_a_sweep_json_value_it_cannot_use(run_cli, tmp_path, registry, key, value):
    out = new_sweep(registry, tmp_path / "sweep")
    spec = json.loads((out / S.SPEC).read_text())
    (out / S.SPEC).write_text(json.dumps({**spec, key: value}))
    assert_one_line_error(run_cli(["sweep", "--resume", str(out)]), f"{out / S.SPEC} is damaged", "start a new sweep")


def test_a_worker_that_stopped_is_in_the_one_line_too_and_a_cut_sweep_jsonl_line_is_not_appended_to(tmp_path, registry):
    out = new_sweep(registry, tmp_path / "sweep")
    assert S.outcome(out) is None
    assert S.outcome(out, [1]) == f"worker 1 stopped before its trials finished; `jaxyard sweep --resume {out}` retries them"
    (out / S.RESULTS).write_bytes(b'{"trial": 0, "state": "compl')  # a line cut by a write that failed
    S._append(out, {"trial": 0, "state": "failed", "params": {}, "run_dir": None, "error": "...", "environment": "Input/output error"})
    assert len(lines(out)) == 1  # the cut line dropped, not glued onto
    assert S.outcome(out, [0, 1]) == (f"1 of 2 trials failed: Input/output error; workers 0, 1 stopped before their trials finished; "
                                      f"`jaxyard sweep --resume {out}` retries them")


@pytest.mark.slow
def test_a_destination_given_to_a_sweep_reaches_its_trials_and_resume_needs_it_again(run_cli, tmp_path):
    """base.toml is a data file: the destination the sweep's command line gave (here an MLflow store
    outside the sweep) is given to each trial as the user's word; `sweep --resume` must give it
    again, and may give nothing else."""
    pytest.importorskip("mlflow")
    out, store = tmp_path / "sweep", f"sqlite:///{tmp_path}/elsewhere/mlflow.db"
    (tmp_path / "elsewhere").mkdir()
    destination = ["--set", f"logger.mlflow.tracking_uri={store}"]
    result = run_cli(["sweep", "--lr", "1e-3,3e-3", "--prune", "none", "--logger", "mlflow", *destination, "--out", str(out),
                      *sets("run.epochs=1")])
    assert result.exit_code == 0, result.output
    assert [x["state"] for x in lines(out)] == ["complete", "complete"]
    assert (tmp_path / "elsewhere" / "mlflow.db").is_file() and not list(out.glob("trials/*/mlflow.db"))

    result = run_cli(["sweep", "--resume", str(out)])
    assert_one_line_error(result, f"{out / S.BASE}: [logger.mlflow] tracking_uri = {store!r}", f"--set logger.mlflow.tracking_uri={store}")
    result = run_cli(["sweep", "--resume", str(out), *destination, "--set", "optimizer.b1=0.8"])
    assert_one_line_error(result, "--set 'optimizer.b1=0.8' cannot change a sweep being resumed")
    result = run_cli(["sweep", "--resume", str(out), *destination])
    assert result.exit_code == 0, result.output
