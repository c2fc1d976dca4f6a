"""The mlflow logger's store is data too, bounded, and shareable.

- mlflow.db holds the artifact locations: artifacts are logged only in this run directory's
  mlflow-artifacts/ (a copied run directory, an edited mlflow.db, a link further down: none, one
  warning; params and metrics still logged).
- a tracking server that does not answer: the start gives up within a bound, in one line.
- a SQLite store two processes open at once (a sweep's workers): both log.

Nothing reaches the network: the "servers" are loopback ports.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the external loggers' test helpers
from test_tracker_noise import hub_warnings  # noqa: E402

from test_loggers_external import build, child_env, fake_run  # noqa: E402

pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

HTTP_VARIABLES = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@pytest.fixture(autouse=True)
def nothing_held():
    from jaxyard.plugins._trackers import common

    for noise in list(common._holding):
        noise.release()


def log_a_run(directory: Path, **params) -> list[str]:
    """A finished run of the mlflow logger in ``directory`` (its config.toml and summary.json
    written); the warnings it gave."""
    (directory / "config.toml").write_text(f"# {directory.name}\n")
    (directory / "summary.json").write_text("{}\n")
    run = fake_run(directory)
    return hub_warnings("mlflow", build("mlflow", directory, **params), run, epochs=2)


def db_set(directory: Path, sql: str, *args) -> None:
    with sqlite3.connect(directory / "mlflow.db") as db:
        db.execute(sql, args)


def metrics_logged(directory: Path) -> set[int]:
    with sqlite3.connect(directory / "mlflow.db") as db:
        return {step for (step,) in db.execute("select step from metrics where key = 'train/loss'")}


def test_a_new_run_logs_its_artifacts_in_its_own_directory(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert log_a_run(run_dir) == []
    [found] = (run_dir / "mlflow-artifacts").rglob("config.toml")
    assert found.read_text() == "# run\n"


def test_a_copied_run_directory_does_not_log_into_the_first_one(tmp_path):
    first, copy = tmp_path / "mbase", tmp_path / "moved"
    first.mkdir()
    log_a_run(first)
    [original] = (first / "mlflow-artifacts").rglob("config.toml")
    shutil.copytree(first, copy, symlinks=True)
    [line] = log_a_run(copy)  # resumed: the same MLflow run, whose artifact location mlflow.db holds
    assert original.read_text() == "# mbase\n"  # not overwritten
    assert line.startswith("Warning: mlflow logs no artifacts (config.toml, summary.json, the curves): ")
    assert f"this run directory was moved or copied from {first.resolve()}" in line and "\n" not in line
    assert line.endswith("params and metrics still go to mlflow.db (to log them here, move mlflow.db and mlflow_run.json aside: "
                         "a new MLflow store and run start in this directory)")
    assert metrics_logged(copy) == {1, 2}


@pytest.mark.parametrize("where", ["file", "path", "experiment"])
def test_an_edited_mlflow_db_cannot_send_artifacts_elsewhere(tmp_path, where):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere" / "mlart"
    run_dir.mkdir()
    log_a_run(run_dir)
    if where == "experiment":  # the location a new MLflow run is given
        db_set(run_dir, "update experiments set artifact_location = ?", elsewhere.as_uri())
        (run_dir / "mlflow_run.json").unlink()
    else:
        db_set(run_dir, "update runs set artifact_uri = ?", elsewhere.as_uri() if where == "file" else str(elsewhere))
    [line] = log_a_run(run_dir)
    assert not (tmp_path / "elsewhere").exists()
    assert f"mlflow.db's artifact location {elsewhere.as_uri() if where != 'path' else elsewhere}" in line
    assert f"is not in {run_dir.resolve() / 'mlflow-artifacts'} (links followed)" in line


def test_a_link_further_down_is_not_followed(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    log_a_run(run_dir)
    [artifacts_dir] = (run_dir / "mlflow-artifacts").glob("*/artifacts")
    shutil.rmtree(artifacts_dir)
    artifacts_dir.symlink_to(elsewhere)  # mlflow-artifacts/<run id>/artifacts -> elsewhere
    [line] = log_a_run(run_dir)
    assert list(elsewhere.iterdir()) == []
    assert "is not in" in line and "(links followed)" in line


def test_an_artifact_file_linked_out_is_not_written_through(tmp_path):
    run_dir, outside = tmp_path / "run", tmp_path / "outside.txt"
    run_dir.mkdir()
    log_a_run(run_dir)
    [config] = (run_dir / "mlflow-artifacts").rglob("config.toml")
    config.unlink()
    outside.write_text("mine\n")
    config.symlink_to(outside)
    [line] = log_a_run(run_dir)
    assert outside.read_text() == "mine\n"
    assert "/config.toml is not in" in line and "(links followed)" in line


@pytest.mark.timeout(60)
def test_an_edited_mlflow_db_naming_a_server_opens_no_connection(tmp_path, monkeypatch):
    """The default store (tracking_uri "") whose mlflow.db names an HTTP artifact location: no
    request reaches the loopback listener (before: PUTs of config.toml, and a 250 s stall)."""
    for key, value in zip(HTTP_VARIABLES, ("2", "0", "0"), strict=True):  # short, should a request go out
        monkeypatch.setenv(key, value)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log_a_run(run_dir)
    db_set(run_dir, "update runs set artifact_uri = ?", f"http://127.0.0.1:{listener.getsockname()[1]}/artifacts")
    try:
        [line] = log_a_run(run_dir)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    finally:
        listener.close()
    assert "mlflow.db's artifact location http://127.0.0.1:" in line
    assert metrics_logged(run_dir) == {1, 2}


# --- a tracking server that does not answer -------------------------------------------------------


class Failing(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(500)
        self.end_headers()

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture(params=["refused", "500"])
def dead_server(request):
    """An MLflow tracking URI on a loopback port that refuses connections, or answers 500."""
    if request.param == "refused":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # bound, never listening
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        sock.close()
        return
    server = HTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(60)  # unbounded, MLflow retries for 253 s: fail rather than wait
def test_a_tracking_server_that_does_not_answer_gives_up_within_the_bound(tmp_path, monkeypatch, capfd, dead_server):
    from jaxyard.plugins._trackers import mlflow as tracker

    for key in HTTP_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    # jaxyard's bound (3 tries of at most 8 s, about 30 s), shortened for the test
    monkeypatch.setattr(tracker, "HTTP_BOUND", dict(zip(HTTP_VARIABLES, ("2", "1", "0"), strict=True)), raising=False)
    capfd.readouterr()
    started = time.monotonic()
    [line] = hub_warnings("mlflow", build("mlflow", tmp_path, tracking_uri=dead_server), fake_run(tmp_path), epochs=1)
    assert time.monotonic() - started < 45  # unbounded: 253 s (a loaded machine may be slow to start, never that slow)
    assert line.startswith("Warning: logger 'mlflow' failed in start and was dropped: MlflowError: ")
    assert (f"; no answer (or only errors) from the MLflow server {dead_server} in 2 tries of at most 2 s "
            "(MLFLOW_HTTP_REQUEST_MAX_RETRIES=N and MLFLOW_HTTP_REQUEST_TIMEOUT=SECONDS wait longer)") in line
    assert "\n" not in line and capfd.readouterr().err == ""
    assert not set(HTTP_VARIABLES) & set(os.environ)  # restored


def test_the_bound_leaves_the_users_own_values_and_is_held_from_start_to_finish(tmp_path, monkeypatch):
    from jaxyard.plugins._trackers import mlflow as tracker

    for key in HTTP_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    seen = []  # what MLflow's requests read, at start, between (its writer thread) and at finish

    def look(*args):
        seen.append({k: os.environ.get(k) for k in HTTP_VARIABLES})
        return []

    monkeypatch.setattr(tracker.MlflowLogger, "_start", look)
    monkeypatch.setattr(tracker.MlflowLogger, "_finish", look)
    logger, run = tracker.MlflowLogger(tmp_path, tracking_uri="http://127.0.0.1:9"), fake_run(tmp_path)
    logger.start(run)
    look()
    logger.client, logger.run_id = object(), "started"
    logger.finish(run, "finished")
    bound = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "99", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    assert seen == [bound] * 3
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert not {"MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"} & set(os.environ)


# --- one SQLite store, two processes ----------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from types import SimpleNamespace
    from jaxyard.plugins._trackers.mlflow import MlflowLogger

    directory, go, store = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    directory.mkdir(parents=True)
    logger = MlflowLogger(directory, tracking_uri=store)
    run = SimpleNamespace(directory=directory, config_dict={"run": {"epochs": 1}}, history=[], start_epoch=0, components={},
                          warn=print)
    Path(str(directory) + ".ready").touch()
    while not go.exists():
        time.sleep(0.002)
    logger.start(run)
    logger.log_epoch({"epoch": 1, "train_loss": 1.0})
    logger.finish(run, "finished")
    print("logged")
""")


@pytest.mark.slow
def test_two_processes_opening_a_new_sqlite_store_at_once_both_log(tmp_path):
    """A sweep's two workers with --set logger.mlflow.tracking_uri=sqlite:///...: each creating
    MLflow's tables at once failed one ("table runs already exists", "duplicate column name"). The
    store's folder does not exist yet: the lock beside it is made first."""
    store, go = f"sqlite:///{tmp_path}/store/shared.db", tmp_path / "go"
    env = {**child_env(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / name), str(go), store], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{n}.ready").exists() for n in ("a", "b")) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both start together
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [o.strip().splitlines()[-1:] for o in outputs] == [["logged"], ["logged"]], outputs
    with sqlite3.connect(tmp_path / "store" / "shared.db") as db:
        assert db.execute("select count(*) from runs where status = 'FINISHED'").fetchone() == (2,)
        assert db.execute("select count(*) from experiments where name = 'jaxyard'").fetchone() == (1,)


def test_the_lock_file_is_not_made_through_a_link(tmp_path):
    from jaxyard.plugins._trackers.mlflow import _first_use

    target = tmp_path / "elsewhere"
    (tmp_path / "x.db.lock").symlink_to(target)
    with _first_use(f"sqlite:///{tmp_path}/x.db"):
        pass
    assert not target.exists()
    with _first_use(f"sqlite:///{tmp_path}/y.db"):
        assert (tmp_path / "y.db.lock").is_file()
