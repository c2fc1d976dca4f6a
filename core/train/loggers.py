"""Experiment loggers: the interface a logger implements, and the hub that feeds the run's loggers.

A logger is a component (``jaxyard_register_loggers``) chosen with ``--logger NAME`` or
``run.loggers``; its factory is called as ``factory(params, *, directory)`` with the run
directory. The engine feeds every chosen logger through the run's events, each one isolated:
a logger that raises is reported once, naming it, and dropped; the run, its metrics.jsonl and
its checkpoints go on.

Resuming: ``start(run)`` receives ``run.history``, the epochs the restored checkpoint holds.
A logger must end up holding exactly those epochs before the next ``log_epoch``: drop any
later ones it wrote before the interruption (a file rewritten, a TensorBoard ``purge_step``),
or skip epochs it already has when the resumed run logs them again (the numbers are
bit-identical). So a kill and a resume leave every epoch exactly once.
"""

from __future__ import annotations

import typing
from typing import Protocol

from jaxyard.core.errors import MissingExtra
from jaxyard.core.registry.hookspecs import hookimpl

if typing.TYPE_CHECKING:  # pragma: no cover
    from jaxyard.core.train.events import Run, RunResult


__all__ = ["LOGGER_METHODS", "Logger", "LoggerHub", "MissingExtra", "require"]


def require(module: str, *, what: str, extra: str):
    """Import ``module`` or raise :class:`MissingExtra` naming ``pip install 'jaxyard[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(what, extra, module) from None


@typing.runtime_checkable
class Logger(Protocol):
    """Receives a run's configuration, each epoch's metrics and its end. The reference for authors."""

    def start(self, run: Run) -> None:
        """The run starts or resumes. ``run.config_dict`` is the resolved configuration (log it as
        parameters); ``run.history`` the epochs already done (see the module docstring)."""
        ...

    def log_epoch(self, record: dict) -> None:
        """One epoch's metrics: ``epoch``, ``step``, ``lr``, ``train_loss``, ``train_acc``,
        ``val_loss``, ``val_acc``, ``train_time``, ``val_time``. Log them at step ``epoch``."""
        ...

    def finish(self, run: Run, status: str, result: RunResult | None = None) -> None:
        """The run ended: ``status`` is ``"finished"`` (``result`` holds the test metrics; the run
        directory has config.toml, summary.json and training_curves.png) or ``"failed"``. Flush
        and close here: ``jaxyard run`` ends its process without collecting leftover objects
        (a ``__del__`` that would flush a file may never run)."""
        ...


LOGGER_METHODS = ("start", "log_epoch", "finish")


class LoggerHub:
    """The run's loggers as one event plugin (registered for the run, then unregistered)."""

    def __init__(self, loggers: dict[str, Logger], warn, run: Run | None = None):
        self.loggers = dict(loggers)
        self.warn = warn
        self.run = run  # its own run's events only (a sweep may train several at once)

    def _mine(self, run: Run) -> bool:
        return self.run is None or run is self.run

    def _each(self, what: str, call) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                call(logger)
            except Exception as err:  # a logger must never cost the run its metrics or checkpoints
                del self.loggers[name]
                text = " ".join(str(err).split()) or "(no message)"
                self.warn(f"Warning: logger {name!r} failed in {what} and was dropped: {type(err).__name__}: {text}")

    @hookimpl(tryfirst=True)
    def jaxyard_on_run_start(self, run: Run) -> None:
        if self._mine(run):
            self._each("start", lambda lg: lg.start(run))

    @hookimpl(tryfirst=True)
    def jaxyard_on_epoch_end(self, run: Run, record: dict) -> None:
        if self._mine(run):
            self._each("log_epoch", lambda lg: lg.log_epoch(record))

    @hookimpl(trylast=True)
    def jaxyard_on_run_end(self, run: Run, result: RunResult) -> None:
        if self._mine(run):
            self._each("finish", lambda lg: lg.finish(run, "finished", result))

    @hookimpl
    def jaxyard_on_run_failed(self, run: Run, error: BaseException) -> None:
        if self._mine(run):
            self._each("finish", lambda lg: lg.finish(run, "failed", None))
