"""Sweeps across processes: two workers on one study, a killed worker's trial retried by `sweep --resume`.

A file of its own: real processes, and so the suite's two workers share the sweep tests evenly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from test_sweep import sets

from jaxyard.core.experiments import sweep as S

from helpers import clean_environ

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
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "jaxyard.cli", "sweep", "--lr", "1e-3,2e-3", "--prune", "none", "--out", str(out),
           *sets("run.epochs=120", "loader.train_size=64", "run.save_every=120")]
    proc = subprocess.Popen(cmd, env=clean_environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / S.TRIALS / "0000" / "config.toml").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = subprocess.run([*cmd[:4], "--resume", str(out)], env=clean_environ(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "Trial 0: its worker stopped before it finished; queued again" in resumed.stdout
    lines = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
    assert lines[0]["trial"] == 0 and lines[0]["state"] == "failed"
    complete = [x for x in lines if x["state"] == "complete"]
    assert sorted(x["params"]["run.learning_rate"] for x in complete) == [0.001, 0.002]  # each point once, none lost
