"""A tracker library's failure is jaxyard's one warning line: MLflow's and SQLAlchemy's logged
tracebacks and wandb's console lines are held back (and counted in the warning), and wandb's
online start waits a bounded time for a server that does not answer.

Nothing reaches the network: wandb's own wait for a server is stood in for (its timer, not
jaxyard's, is what a machine with no network measures).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

import pytest

from jaxyard.core.train.loggers import LoggerHub

sys.path.insert(0, str(Path(__file__).parent))  # the external loggers' test helpers
from test_loggers_external import build, fake_result, fake_run, record  # noqa: E402


def hub_warnings(name: str, logger, run, epochs: int = 0) -> list[str]:
    """Start, log ``epochs`` epochs and finish ``logger`` as a run does; the warnings it gave."""
    hub = LoggerHub({name: logger}, warn=run.warn)
    hub.jaxyard_on_run_start(run)
    records = [record(e) for e in range(1, epochs + 1)]
    for r in records:
        hub.jaxyard_on_epoch_end(run, r)
    hub.jaxyard_on_run_end(run, fake_result(run.directory, records))
    return run.warnings


@pytest.fixture(autouse=True)
def nothing_held():
    """No tracker holding its library's noise from an earlier test: the suite's simulated kills
    (test_loggers_external.py) drop loggers without finishing them, as a killed process would."""
    from jaxyard.plugins._trackers import common

    for noise in list(common._holding):
        noise.release()


def test_mlflow_failing_to_open_its_database_is_one_warning_line(tmp_path, capfd, monkeypatch):
    """mlflow.db that SQLite cannot open (a directory): MLflow retries with a logged warning and
    traceback each time (fewer retries here than its 10, to keep the test short)."""
    pytest.importorskip("sqlalchemy")
    db_utils = pytest.importorskip("mlflow.store.db.utils")
    monkeypatch.setattr(db_utils, "MAX_RETRY_COUNT", 3)
    (tmp_path / "mlflow.db").mkdir()
    stderr = sys.stderr
    capfd.readouterr()
    warnings = hub_warnings("mlflow", build("mlflow", tmp_path), fake_run(tmp_path), epochs=1)
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), err[-2000:]  # MLflow's logged tracebacks held back
    [line] = warnings
    assert line.startswith("Warning: logger 'mlflow' failed in start and was dropped: MlflowError: ")
    assert "unable to open database file" in line and "\n" not in line
    assert re.search(r"\(mlflow's console output held back: \d+ warning/error records; JAXYARD_DEBUG=1 shows it\)$", line), line
    assert sys.stderr is stderr  # and the console is as it was: MLflow's handler prints again
    assert not [f for h in logging.getLogger("mlflow").handlers for f in h.filters if type(f).__name__ == "_Divert"]


def test_mlflow_noise_shows_with_jaxyard_debug(tmp_path, capfd, monkeypatch):
    pytest.importorskip("sqlalchemy")
    db_utils = pytest.importorskip("mlflow.store.db.utils")
    monkeypatch.setattr(db_utils, "MAX_RETRY_COUNT", 2)
    monkeypatch.setenv("JAXYARD_DEBUG", "1")
    (tmp_path / "mlflow.db").mkdir()
    capfd.readouterr()
    [line] = hub_warnings("mlflow", build("mlflow", tmp_path), fake_run(tmp_path))
    assert "SQLAlchemy engine could not be created" in capfd.readouterr().err
    assert "held back" not in line



def test_wandb_online_start_is_bounded_and_its_timeout_is_one_line(tmp_path, capfd, monkeypatch):
    """jaxyard's part of the bound: wandb.init runs with WANDB_INIT_TIMEOUT set to jaxyard's bound
    (unless the user set it), restored after; wandb's timeout, and what it printed meanwhile, is one
    warning saying how long it waited. wandb's own wait is stood in for (its real one, against a
    refusing server, gave up after the bound by hand: with no network it is wandb's timer that
    counts, and a loaded machine makes its service slow to start)."""
    wandb = pytest.importorskip("wandb")
    from jaxyard.plugins._trackers import wandb as tracker

    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    monkeypatch.setattr(tracker, "INIT_TIMEOUT", 0.2, raising=False)  # jaxyard's bound (30 s), shortened for the test
    seen = []

    def init(**kwargs):  # as wandb.init fails when the server never answers within init_timeout
        seen.append(os.environ.get("WANDB_INIT_TIMEOUT"))
        time.sleep(float(seen[-1]))
        print("wandb: Network error (ConnectionError), entering retry loop.", file=sys.stderr)
        raise wandb.errors.CommError(f"Run initialization has timed out after {seen[-1]} sec.\nPlease try again.")

    monkeypatch.setattr(wandb, "init", init)
    capfd.readouterr()
    [line] = hub_warnings("wandb", build("wandb", tmp_path, mode="online"), fake_run(tmp_path), epochs=1)
    assert seen == ["0.2"] and "WANDB_INIT_TIMEOUT" not in os.environ
    assert line.startswith("Warning: logger 'wandb' failed in start and was dropped: WandbError: CommError: Run initialization has timed out")
    assert "mode online: no answer from the W&B server within 0.2 s (WANDB_INIT_TIMEOUT=SECONDS waits longer)" in line
    assert "\n" not in line and "held back: 1 line on stderr" in line
    assert capfd.readouterr().err == ""  # wandb's console line held back (and counted)
