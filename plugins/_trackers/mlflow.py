"""The ``mlflow`` logger: one MLflow run per jaxyard run, through ``mlflow.MlflowClient``.

Imported by the factory in :mod:`jaxyard.plugins.loggers`, never when components are listed.

Store: ``tracking_uri`` empty means a SQLite database in the run directory,
``sqlite:///RUN_DIR/mlflow.db``, its artifacts in ``RUN_DIR/mlflow-artifacts`` (view it with
``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``, which needs the full ``mlflow``
package). Only the client API is used, with explicit run ids: no active run, nothing global.

Logged: the flattened configuration as params (``run.epochs``, ``optimizer.adam.b1``), the
components as tags (``jaxyard.optimizer = adam``), per-epoch metrics at step = epoch
(``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``lr``, ``time/train``, ``time/val``),
at the end the test metrics and timings at the last epoch's step, the artifacts config.toml,
summary.json and training_curves.png, and the status FINISHED or FAILED.

Artifacts, local store: mlflow.db is data, and it holds absolute artifact locations (MLflow 3.18
makes even a relative ``artifact_location`` absolute, against the working directory). Artifacts
are logged only where the run's and its experiment's locations are in this run directory's
``mlflow-artifacts/`` (links followed, :func:`~jaxyard.core.registry.params.inside`); otherwise
(a copied or moved run directory still names the first one's; an edited mlflow.db names any
place, or a server) none is logged, one warning says why, and params and metrics still go to
mlflow.db.

A tracking server (``http(s)://``): MLflow retries a request 7 times with backoff, 120 s each
(a closed port: 253 s at start). While the logger runs, :data:`HTTP_BOUND` sets MLflow's own
variables (those the user has not set): 3 tries of at most 8 s each, so a start gives up within
about 30 s, in one line saying so.

A SQLite store the user names (a sweep's workers sharing one): the first use of the database
(MLflow creates its tables then, and the experiment) is serialised across processes by an
``fcntl`` lock on ``DB.lock`` beside it.

Resume: the MLflow run id is kept in ``RUN_DIR/mlflow_run.json``; a resumed run continues that
MLflow run. Its metric history is read once at start: restored epochs it lacks are logged
then, and epochs it already holds (logged before the interruption; the resumed run computes
them again bit for bit) are not logged again, so every epoch is there once. MLflow cannot
delete a metric point: had the numbers differed, the first ones would stay.

Quiet and offline: the factory imports mlflow with ``MLFLOW_DISABLE_TELEMETRY=true`` (unless the
variable is set), so MLflow 3 sets up no usage telemetry; MLflow's INFO lines (the database
set-up) and its libraries' deprecation warnings are held back while the store opens. From start
to finish, what MLflow, alembic, SQLAlchemy and urllib3 log to the console (a locked database:
hundreds of lines of tracebacks, some from MLflow's writer thread) and what the calls write to
stderr are held back (:class:`~jaxyard.plugins._trackers.common.Noise`): a failure is one
:class:`MlflowError` line saying how much was held back, which jaxyard's warning shows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.params import inside
from jaxyard.core.store.rundir import write_atomic
from jaxyard.plugins._trackers.common import Noise, final_scalars, scalars

try:
    import fcntl
except ImportError:  # Windows has no fcntl: no lock there
    fcntl = None

RUN_FILE = "mlflow_run.json"
ARTIFACT_DIR = "mlflow-artifacts"
ARTIFACTS = ("config.toml", "summary.json", "training_curves.png")
# MLflow's own variables, for a tracking server, while the logger runs (unless the user set them):
# 3 tries of at most 8 s each, 2 s (and up to 2 s of jitter) between: about 30 s at most.
HTTP_BOUND = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "8", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MAX_PARAMS_PER_BATCH = 100  # MLflow's limits for one log_batch
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000


class MlflowError(Exception):
    """MLflow failed: its first line, and how much of its console output was held back."""


@contextlib.contextmanager
def _quiet():
    """For this block only: MLflow's and alembic's INFO lines held back (creating a database
    prints two), and the deprecation warnings of the store's libraries (SQLAlchemy's, when
    MLflow sets up its tables) not shown."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"adam": {"b1": 0.9}}}`` -> ``{"optimizer.adam.b1": "0.9"}`` (values as JSON, strings as is)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[re.sub(r"[^\w\-. /]", "_", name)] = text[:MAX_PARAM_VALUE]
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


class _HttpBound:
    """:data:`HTTP_BOUND` in the environment (the variables the user has not set) while at least one
    logger holds it: MLflow reads them at each request, its writer thread's too; restored when the
    last one lets go."""

    def __init__(self):
        self.lock = threading.Lock()
        self.holders = 0
        self.added: dict[str, str] = {}

    def hold(self) -> None:
        with self.lock:
            if not self.holders:
                self.added = {k: v for k, v in HTTP_BOUND.items() if k not in os.environ}
                os.environ.update(self.added)
            self.holders += 1

    def release(self) -> None:
        with self.lock:
            self.holders -= 1
            if not self.holders:
                for key, value in self.added.items():
                    if os.environ.get(key) == value:
                        del os.environ[key]
                self.added = {}


_BOUND = _HttpBound()


def _gave_up(err: BaseException) -> bool:
    """Whether MLflow's request failed for want of an answer (refused, timed out) or with a
    transient error each try (408, 429, 5xx: MLflow retries those)."""
    text = str(err)
    return "Max retries exceeded" in text or "timed out" in text.lower() or re.search(r"error code (408|429|5\d\d)\b", text) is not None


def _sqlite_file(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (None for another store, or ``:memory:``)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]  # sqlite:////tmp/x.db: /tmp/x.db; sqlite:///x.db: x.db (the working directory's)
    return path if path and path != ":memory:" else None


@contextlib.contextmanager
def _first_use(uri: str):
    """Held by one process at a time: an exclusive ``fcntl`` lock on ``DB.lock`` beside a SQLite
    store (MLflow creating its tables, or the same experiment, from two processes at once fails:
    "table runs already exists", "duplicate column name"). Where no lock file can be made: none."""
    path = _sqlite_file(uri)
    fd = None
    if path is not None and fcntl is not None:
        with contextlib.suppress(OSError):  # a link there (O_NOFOLLOW), a read-only directory: no lock
            Path(path).parent.mkdir(parents=True, exist_ok=True)  # MLflow makes it anyway; the lock must come first
            fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and the lock with it


class MlflowLogger:
    def __init__(self, directory: Path, *, tracking_uri: str = "", experiment: str = "jaxyard", run_name: str = ""):
        self.directory = Path(directory)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name or self.directory.name
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.logged: dict[str, set[int]] = {}  # metric -> steps the store holds (a resumed run skips them)
        self.last_epoch = 0
        self.pending: list = []  # epochs queued for MLflow's writer thread (waited for by finish)
        self.noise = Noise("mlflow", ("mlflow", "alembic", "sqlalchemy", "urllib3"), MlflowError)
        self.bounded = False  # holding HTTP_BOUND (a tracking server)
        self.artifact_uri: str | None = None  # where this run's artifacts go (local store: checked in this run directory)
        self.refused: str | None = None  # why no artifact is logged (the warning), or None
        self.warned = False

    # --- the store ---------------------------------------------------------------------------

    def _uri(self) -> str:
        return self.tracking_uri or "sqlite:///" + str((self.directory / "mlflow.db").resolve())

    def _artifact_location(self, uri: str) -> str | None:
        """Artifacts next to a SQLite database (MLflow's default would be ./mlruns in the working
        directory); for other stores MLflow (or its server) decides."""
        if not uri.startswith("sqlite:///"):
            return None
        return (Path(uri[len("sqlite:///"):]).parent / "mlflow-artifacts").resolve().as_uri()

    def _saved_run(self) -> str | None:
        try:
            saved = json.loads((self.directory / RUN_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("tracking_uri") != self.tracking_uri:
            return None  # another store now: start a new MLflow run there
        return saved.get("run_id") or None

    def _open_run(self, run) -> bool:
        """Continue the saved MLflow run (True) or create one (False)."""
        run_id = self._saved_run()
        if run_id is not None:
            try:
                found = self.client.get_run(run_id)
            except Exception:  # deleted from the store, or the database is gone: a new run
                found = None
            if found is not None and found.info.lifecycle_stage == "active":
                self.run_id = run_id
                self.client.update_run(run_id, status="RUNNING")
                return True
        uri = self._uri()
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            experiment_id = self.client.create_experiment(self.experiment, artifact_location=self._artifact_location(uri))
        tags = {"jaxyard.run_dir": str(self.directory.resolve())}
        tags.update({f"jaxyard.{kind}": str(name) for kind, name in dict(run.components or {}).items()})
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        record = {"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": self.tracking_uri}
        write_atomic(self.directory / RUN_FILE, json.dumps(record) + "\n")
        return False

    # --- where the artifacts go ----------------------------------------------------------------

    def _check_artifacts(self) -> None:
        """The local store: the run's and its experiment's artifact locations, as mlflow.db holds
        them, must be in this run directory's mlflow-artifacts/; else ``refused`` says why."""
        if self.tracking_uri:  # the user's store: MLflow (or its server) decides
            return
        run = self.client.get_run(self.run_id)
        self.artifact_uri = run.info.artifact_uri
        experiment = self.client.get_experiment(run.info.experiment_id)
        for uri in (run.info.artifact_uri, experiment.artifact_location):
            if self._local_path(uri) is None:
                self._refuse(uri, run.data.tags.get("jaxyard.run_dir"))
                return

    def _refuse(self, uri: str, made_in: str | None) -> None:
        here = str(self.directory.resolve())
        if made_in and made_in != here:
            why = f"this run directory was moved or copied from {made_in}, and mlflow.db keeps that one's artifact location ({uri})"
        else:
            why = f"mlflow.db's artifact location {uri} is not in {Path(here) / ARTIFACT_DIR} (links followed)"
        self.refused = (f"Warning: mlflow logs no artifacts (config.toml, summary.json, the curves): {why}; "
                        f"params and metrics still go to mlflow.db (to log them here, move mlflow.db and mlflow_run.json "
                        f"aside: a new MLflow store and run start in this directory)")

    def _local_path(self, uri: str | None) -> Path | None:
        """``uri`` as a path in this run directory's mlflow-artifacts/, links followed; None if it
        is not a local path or leads elsewhere."""
        if not uri:
            return None
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme == "file" and parts.netloc in ("", "localhost"):
            path = urllib.request.url2pathname(parts.path)
        elif parts.scheme == "":
            path = uri
        else:  # another scheme (a server, a bucket): not this run directory
            return None
        try:
            inside(self.directory, ARTIFACT_DIR)  # mlflow-artifacts/ itself: not a link leading out
            base, real = os.path.realpath(self.directory / ARTIFACT_DIR), os.path.realpath(path)
            return Path(real) if os.path.commonpath([base, real]) == base else None
        except (UsageError, ValueError, OSError):
            return None

    def _artifact_goes_here(self, name: str) -> bool:
        """Whether artifact ``name`` may be logged: a store the user names, or (checked again now,
        a link made since included) a path in this run directory's mlflow-artifacts/."""
        if self.tracking_uri:
            return True
        if self.refused is None and self._local_path(f"{str(self.artifact_uri).rstrip('/')}/{name}") is None:
            self._refuse(f"{self.artifact_uri}/{name}", None)
        return self.refused is None

    # --- the Logger protocol -------------------------------------------------------------------

    def start(self, run) -> None:
        if urllib.parse.urlsplit(self.tracking_uri).scheme in ("http", "https") and not self.bounded:
            _BOUND.hold()
            self.bounded = True
        try:
            with self.noise.call(explain=self._explain):
                changed = self._start(run)
        except Exception:
            self._let_go()  # dropped: finish is not called
            raise
        if changed and callable(getattr(run, "warn", None)):  # jaxyard's own line: after the call, not held back
            run.warn(f"Warning: mlflow keeps the first value of parameters changed on resume: {', '.join(changed)}")
        self._warn_refused(run)

    def _let_go(self) -> None:
        if self.bounded:
            self.bounded = False
            _BOUND.release()

    def _explain(self, err: BaseException) -> str:
        """A tracking server that did not answer in the bound: say so, and how to wait longer."""
        if not self.bounded or not _gave_up(err):
            return ""
        tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")) + 1
        timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
        return (f"; no answer (or only errors) from the MLflow server {self.tracking_uri} in {tries} tries of at most {timeout} s "
                f"(MLFLOW_HTTP_REQUEST_MAX_RETRIES=N and MLFLOW_HTTP_REQUEST_TIMEOUT=SECONDS wait longer)")

    def _warn_refused(self, run) -> None:
        if self.refused and not self.warned and callable(getattr(run, "warn", None)):
            self.warned = True
            run.warn(self.refused)

    def log_epoch(self, record: dict) -> None:
        """Queued: MLflow writes in its own thread (a SQLite transaction costs ~6 ms an epoch).
        A kill may lose queued epochs; the next resume logs those the checkpoint holds."""
        try:
            with self.noise.call():
                self.last_epoch = record["epoch"]
                metrics = self._metrics(record["epoch"], scalars(record))
                if metrics:
                    self.pending.append(self.client.log_batch(self.run_id, metrics=metrics, synchronous=False))
        except Exception:
            self._let_go()  # dropped: finish is not called
            raise

    def finish(self, run, status: str, result=None) -> None:
        try:
            if self.client is None or self.run_id is None:
                self.noise.release()
                return
            self.noise.last_call(run, lambda: self._finish(status, result))
        finally:
            self._let_go()
        self._warn_refused(run)

    def _start(self, run) -> list[str]:
        """Open the store and the MLflow run, log the params and the restored epochs; returns the
        params whose values changed on resume (MLflow keeps the first)."""
        with _quiet(), _first_use(self.tracking_uri):  # a store the user names may be shared (a sweep's workers)
            self.client = MlflowClient(tracking_uri=self._uri())
            resumed = self._open_run(run)
        self._check_artifacts()
        params = flatten(run.config_dict)
        changed: list[str] = []
        if resumed:
            data = self.client.get_run(self.run_id).data
            changed = sorted(k for k, v in params.items() if k in data.params and data.params[k] != v)
            params = {k: v for k, v in params.items() if k not in data.params}  # MLflow params cannot change
            self.logged = {key: {m.step for m in self.client.get_metric_history(self.run_id, key)} for key in data.metrics}
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_PER_BATCH], synchronous=True)
        history = list(run.history)
        self.last_epoch = history[-1]["epoch"] if history else 0
        # Restored epochs the store lacks (say, the logger was added when resuming).
        self._log_metrics([m for record in history for m in self._metrics(record["epoch"], scalars(record))])
        return changed

    def _finish(self, status: str, result) -> None:
        try:
            for operation in self.pending:
                operation.wait()
            self.pending.clear()
            if status == "finished":
                metrics = self._metrics(self.last_epoch, final_scalars(result))
                tags = []
                if result is not None and getattr(result, "stop_reason", None):
                    tags.append(RunTag("jaxyard.stop_reason", str(result.stop_reason)))
                if metrics or tags:
                    self.client.log_batch(self.run_id, metrics=metrics, tags=tags, synchronous=True)
                for name in ARTIFACTS:
                    path = self.directory / name
                    if path.is_file() and self._artifact_goes_here(name):
                        self.client.log_artifact(self.run_id, str(path))
        finally:
            self.client.set_terminated(self.run_id, "FINISHED" if status == "finished" else "FAILED")
            self.client = None

    def _log_metrics(self, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH], synchronous=True)

    def _metrics(self, step: int, values: dict[str, float]) -> list[Metric]:
        """Metrics at ``step``, less those the store already holds."""
        now = _now_ms()
        out = []
        for key, value in values.items():
            if int(step) in self.logged.get(key, ()):
                continue
            out.append(Metric(key, value, now, int(step)))
            self.logged.setdefault(key, set()).add(int(step))
        return out
