"""Sweeps across processes: two workers on one study, a killed worker's trial retried by `sweep --resume`.

A file of its own: real processes, and so the suite's two workers share the sweep tests evenly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from test_sweep import sets

from jaxyard.core.experiments import sweep as S

from helpers import PAUSE, clean_environ, wait_for

optuna = pytest.importorskip("optuna")


@pytest.mark.slow
def test_two_workers_share_a_study_without_losing_or_repeating_a_trial(run_cli, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli(["sweep", "--lr", "1e-3,2e-3,3e-3,4e-3,5e-3,6e-3,7e-3,8e-3", "--seed", "0-1", "--workers", "2",
                      "--out", str(out), *sets("run.epochs=1")])
    assert result.exit_code == 0, result.output
    assert "[worker 0] Worker 0:" in result.stdout and "[worker 1] Worker 1:" in result.stdout
    study = optuna.load_study(study_name="sweep", storage=S.storage_of(out, S.load_spec(out)))  # optuna reads the file
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    points = {(t.params["run.learning_rate"], t.params["run.seed"]) for t in done}
    assert len(done) == len(study.trials) == 16 and len(points) == 16
    assert len({x["trial"] for x in map(json.loads, (out / S.RESULTS).read_text().splitlines())}) == 16


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_then_retried_by_resume(tmp_path):
    """The sweep is killed while trial 0 trains (held after its epoch 1 by tests/plugins_local/pause.py)."""
    out, pauses = tmp_path / "sweep", tmp_path / "pauses"
    pauses.mkdir()
    sweep = [sys.executable, "-m", "jaxyard.cli", "sweep"]
    args = ["--lr", "1e-3,2e-3", "--prune", "none", "--out", str(out), *sets("loader.train_size=64")]
    env = clean_environ(PAUSE_DIR=str(pauses), PAUSE_AT="epoch-1")  # the resumed sweep runs without it
    proc = subprocess.Popen([*sweep[:3], "--strict-plugins", "--plugin", str(PAUSE), *sweep[3:], *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for((pauses / "paused-epoch-1").exists, proc, what="trial 0 finished its first epoch")
        assert (out / S.TRIALS / "0000" / "config.toml").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([*sweep, "--resume", str(out)], env=clean_environ(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "Trial 0: its worker stopped before it finished; queued again" in resumed.stdout
    lines = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
    assert lines[0]["trial"] == 0 and lines[0]["state"] == "failed"
    complete = [x for x in lines if x["state"] == "complete"]
    assert sorted(x["params"]["run.learning_rate"] for x in complete) == [0.001, 0.002]  # each point once, none lost
