"""Built-in experiment loggers: ``jsonl`` (metrics.jsonl, on by default) and ``csv``; the
``tensorboard``, ``mlflow`` and ``wandb`` loggers need their extras (``pip install 'jaxyard[NAME]'``).

Listing components imports this module: the logging libraries are imported by the factories.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

import attrs

from jaxyard import hookimpl, param
from jaxyard.core.registry.params import inside
from jaxyard.core.store.rundir import open_append, write_atomic
from jaxyard.core.train.loggers import MissingExtra, require


def _append(path: Path, text: str) -> None:
    """One ``write`` to a file opened for appending (never through a link): a killed process never leaves a torn line."""
    fd = open_append(path)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@attrs.frozen
class JsonlParams:
    filename: str = param("metrics.jsonl", "file in the run directory", writes=True)


class JsonlLogger:
    """One JSON object per epoch; rewritten from the restored history when a run resumes."""

    def __init__(self, path: Path):
        self.path = path

    def start(self, run) -> None:
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in run.history))

    def log_epoch(self, record: dict) -> None:
        _append(self.path, json.dumps(record) + "\n")

    def finish(self, run, status, result=None) -> None:
        pass


def jsonl(p: JsonlParams, *, directory: Path) -> JsonlLogger:
    """metrics.jsonl: one JSON line per epoch (every metric, lr, timings)."""
    return JsonlLogger(inside(directory, p.filename, what="logger.jsonl.filename"))


@attrs.frozen
class CsvParams:
    filename: str = param("metrics.csv", "file in the run directory", writes=True)


class CsvLogger:
    """A header and one row per epoch; the columns are those of the first record."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] | None = None

    def _rows(self, records) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        for r in records:
            writer.writerow(r)
        return out.getvalue()

    def start(self, run) -> None:
        first = run.history[0] if run.history else None
        self.columns = list(first) if first else None
        header = ",".join(self.columns) + "\n" if self.columns else ""
        write_atomic(self.path, header + (self._rows(run.history) if self.columns else ""))

    def log_epoch(self, record: dict) -> None:
        if self.columns is None:
            self.columns = list(record)
            _append(self.path, ",".join(self.columns) + "\n")
        _append(self.path, self._rows([record]))

    def finish(self, run, status, result=None) -> None:
        pass


def csv_logger(p: CsvParams, *, directory: Path) -> CsvLogger:
    """metrics.csv: a header and one row per epoch, for spreadsheets and pandas."""
    return CsvLogger(inside(directory, p.filename, what="logger.csv.filename"))


@hookimpl
def jaxyard_register_loggers(register):
    register("jsonl", jsonl, params=JsonlParams)
    register("csv", csv_logger, params=CsvParams)
    register("tensorboard", tensorboard_logger, params=TensorboardParams)
    register("mlflow", mlflow_logger, params=MlflowParams)
    register("wandb", wandb_logger, params=WandbParams)


# --- loggers for experiment trackers: each needs its extra --------------------------------------
#
# The factories import the tracker library (and the module wrapping it) only when a run builds
# the logger: `jaxyard list` never pays for tensorboardX, mlflow or wandb.


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@attrs.frozen
class TensorboardParams:
    subdir: str = param("tensorboard", "folder in the run directory for the event files (tensorboard --logdir RUN_DIR)", writes=True)


def tensorboard_logger(p: TensorboardParams, *, directory: Path):
    """TensorBoard event files: per-epoch scalars and the config as text (pip install 'jaxyard[tensorboard]')."""
    require("tensorboardX", what="the tensorboard logger", extra="tensorboard")
    from jaxyard.plugins._trackers.tensorboard import TensorboardLogger

    return TensorboardLogger(inside(directory, p.subdir, what="logger.tensorboard.subdir"))


@attrs.frozen
class MlflowParams:
    tracking_uri: str = param(
        "", "MLflow tracking URI; empty: a SQLite store in the run directory (sqlite:///RUN_DIR/mlflow.db)", outside=True,
    )
    experiment: str = param("jaxyard", "MLflow experiment, created when missing", validator=attrs.validators.min_len(1))
    run_name: str = param("", "MLflow run name; empty: the run directory's name")


def mlflow_logger(p: MlflowParams, *, directory: Path):
    """MLflow: the config as params, per-epoch metrics, test metrics and artifacts (pip install 'jaxyard[mlflow]')."""
    what = "the mlflow logger"
    if not p.tracking_uri:  # its store and artifacts in the run directory: not through a link that leads out
        for name in ("mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm", "mlflow.db.lock", "mlflow-artifacts"):
            inside(directory, name)  # SQLite's companions too: it opens them following links
    if not _installed("mlflow"):  # named first: without mlflow, the database libraries are beside the point
        raise MissingExtra(what, "mlflow", "mlflow")
    if p.tracking_uri == "" or p.tracking_uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        # A database store needs these, which mlflow-skinny leaves out (and mlflow imported
        # without them never offers the store): checked first.
        require("sqlalchemy", what=what, extra="mlflow")
        require("alembic", what=what, extra="mlflow")
    # MLflow 3 sets up its usage telemetry (or not) once, when it is imported: off unless the
    # user has set the variable. Set for the import only.
    added = "MLFLOW_DISABLE_TELEMETRY" not in os.environ
    if added:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    try:
        require("mlflow", what=what, extra="mlflow")
    finally:
        if added:
            os.environ.pop("MLFLOW_DISABLE_TELEMETRY", None)
    from jaxyard.plugins._trackers.mlflow import MlflowLogger

    return MlflowLogger(Path(directory), tracking_uri=p.tracking_uri, experiment=p.experiment, run_name=p.run_name)


@attrs.frozen
class WandbParams:
    mode: str = param(
        "offline",
        "offline (files in RUN_DIR/wandb, upload later with `wandb sync`), online or disabled",
        validator=attrs.validators.in_(("offline", "online", "disabled")),
        outside=lambda mode: mode == "online",
    )
    project: str = param("jaxyard", "W&B project", validator=attrs.validators.min_len(1))
    entity: str = param("", "W&B entity (user or team); empty: your default")
    run_name: str = param("", "W&B run name; empty: the run directory's name")


def wandb_logger(p: WandbParams, *, directory: Path):
    """Weights & Biases, offline unless mode=online: config, per-epoch metrics, test summary (pip install 'jaxyard[wandb]')."""
    require("wandb", what="the wandb logger", extra="wandb")
    inside(directory, "wandb")  # its files: not through a link that leads out of the run directory
    from jaxyard.plugins._trackers.wandb import WandbLogger

    return WandbLogger(Path(directory), mode=p.mode, project=p.project, entity=p.entity, run_name=p.run_name)
