"""What the trackers share: a record's metrics under the names trackers show, and their
libraries' console noise held back (:class:`Noise`)."""

from __future__ import annotations

import contextlib
import logging
import numbers
import sys
import threading
from collections.abc import Callable, Iterable, Sequence

from jaxyard.core.errors import one_line
from jaxyard.core.registry.settings import env_flag


def metric_name(key: str) -> str:
    """The name a record key gets in the trackers: ``train_loss`` -> ``train/loss``,
    ``val_acc`` -> ``val/acc``, ``train_time`` -> ``time/train``; ``lr`` stays ``lr``."""
    head, sep, tail = key.partition("_")
    if sep and tail == "time":
        return f"time/{head}"
    if sep and head in ("train", "val", "test"):
        return f"{head}/{tail}"
    return key


def scalars(record: dict) -> dict[str, float]:
    """The numeric values of an epoch's record under their tracker names (``epoch`` and ``step``
    are the x axis, not metrics; ``None`` and non-numbers are left out)."""
    out = {}
    for key, value in record.items():
        if key in ("epoch", "step") or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        out[metric_name(key)] = float(value)
    return out


def final_scalars(result) -> dict[str, float]:
    """A finished run's test metrics (``test/loss``, ``test/acc``) and timings (``time/total_s``, ...)."""
    if result is None:
        return {}
    out = scalars(dict(result.test or {}))
    for key, value in (result.timings or {}).items():
        if value is not None and not isinstance(value, bool) and isinstance(value, numbers.Real):
            out[f"time/{key}"] = float(value)
    return out


# --- a tracker library's noise, held back --------------------------------------------------------
#
# MLflow, SQLAlchemy and wandb report a failure at length on the console (a locked mlflow.db: 691
# lines of logged tracebacks), around the one warning jaxyard prints when it drops the logger.
# While a tracker runs, its libraries' console log records (from any thread: MLflow logs from its
# writer thread) and what the tracker's calls write to sys.stderr are held back and counted; the
# warning says how much was held back. JAXYARD_DEBUG=1 lets it all through.

_lock = threading.RLock()
_holding: list[Noise] = []  # the trackers holding their libraries' noise now
_filtered: list[logging.Handler] = []  # the console handlers given the diverting filter
_calls: dict[int, Noise] = {}  # thread id -> the tracker whose call that thread is making
_console: _Stderr | None = None  # sys.stderr while a tracker call runs


class _Divert(logging.Filter):
    """On a console handler: a record of a held library goes to its tracker instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _passing():  # JAXYARD_DEBUG=1 set since: everything shows
            return True
        takers = [noise for noise in list(_holding) if noise.owns(record.name)]
        for noise in takers:
            noise.add_record(record)
        return not takers


_DIVERT = _Divert()


class _Stderr:
    """sys.stderr during tracker calls: what a calling thread writes is held back, the rest passes."""

    def __init__(self, real):
        self.real = real

    def write(self, text: str) -> int:
        noise = _calls.get(threading.get_ident())
        if noise is None:
            return self.real.write(text)
        noise.add_text(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def _console_handlers(names: Iterable[str]) -> list[logging.Handler]:
    """The handlers that print (to a stream, not a file) for these loggers, the root's and logging's last resort."""
    found = [h for name in names for h in logging.getLogger(name).handlers]
    found += logging.getLogger().handlers
    if logging.lastResort is not None:
        found.append(logging.lastResort)
    return [h for h in found if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


class Noise:
    """One tracker's libraries' console output, held back from :meth:`hold` to :meth:`release`
    (log records, any thread) and during :meth:`call` (also the calling thread's sys.stderr).

    :param library: the name the warning gives it (``mlflow``).
    :param loggers: the libraries' logger names (their children included).
    :param error: the exception class a failed call is raised as, its message one line.
    """

    def __init__(self, library: str, loggers: Sequence[str], error: type[Exception]):
        self.library, self.loggers, self.error = library, tuple(loggers), error
        self.records: list[str] = []  # the first line of each held warning or error record
        self.lines = 0  # lines held back from stderr
        self.reported = 0  # records already summarised in a warning
        self.held = False

    def owns(self, name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in self.loggers)

    def add_record(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            with contextlib.suppress(Exception):  # a record that cannot be formatted still counts
                self.records.append(" ".join(record.getMessage().strip().splitlines()[:1]))
                return
            self.records.append(record.name)

    def add_text(self, text: str) -> None:
        self.lines += sum(1 for line in text.splitlines() if line.strip())

    def hold(self) -> None:
        """Hold back the libraries' console log records (again: handlers made since are covered too)."""
        if _passing():
            return
        with _lock:
            if not self.held:
                _holding.append(self)
                self.held = True
            for handler in _console_handlers(self.loggers):
                if _DIVERT not in handler.filters:
                    handler.addFilter(_DIVERT)
                    _filtered.append(handler)

    def release(self) -> None:
        with _lock:
            if self.held:
                _holding.remove(self)
                self.held = False
            if not _holding:
                for handler in _filtered:
                    handler.removeFilter(_DIVERT)
                _filtered.clear()

    @contextlib.contextmanager
    def call(self, *, keep: bool = True, explain: Callable[[BaseException], str] = lambda err: ""):
        """A tracker's call: its libraries' log records and this thread's stderr held back. A
        failure leaves as ``error``: the library's first line, ``explain(err)``, and how much
        noise was held back (and the noise is released, as the logger is dropped); ``keep``
        False: released at the end of the call anyway (the tracker's last)."""
        global _console
        me = threading.get_ident()
        if _calls.get(me) is self:  # a call within a call (start logging restored epochs): the outer one holds
            yield
            return
        self.hold()
        with _lock:
            if not _passing() and me not in _calls:
                _calls[me] = self
                if _console is None:
                    _console = _Stderr(sys.stderr)
                    sys.stderr = _console
        try:
            yield
        except Exception as err:
            self.release()
            text = one_line(err, first_line=True) + explain(err) + self.summary()
            raise self.error(text) from err
        else:
            if not keep:
                self.release()
        finally:
            with _lock:
                if _calls.get(me) is self:
                    del _calls[me]
                if not _calls and _console is not None:
                    if sys.stderr is _console:
                        sys.stderr = _console.real
                    _console = None

    def last_call(self, run, fn: Callable[[], None]) -> None:
        """The tracker's last call (``finish``): ``fn()`` held back, then released; what its library
        said though nothing failed is one warning on ``run``."""
        with self.call(keep=False):
            fn()
        line = self.warning()
        if line and callable(getattr(run, "warn", None)):
            run.warn(line)

    def summary(self) -> str:
        """``" (mlflow's console output held back: 2 warning/error records, 1 line on stderr;
        JAXYARD_DEBUG=1 shows it)"`` for what was held back since the last summary, or ""."""
        held = self._held()
        return f" ({self.library}'s console output held back: {held}; JAXYARD_DEBUG=1 shows it)" if held else ""

    def warning(self) -> str | None:
        """After a tracker's last call that went well: one line on what was held back, or None."""
        first = self.records[self.reported] if len(self.records) > self.reported else None
        held = self._held()
        if not held:
            return None
        return (f"Warning: {self.library} wrote to the console during the run, held back: {held}"
                f"{f' (the first: {first})' if first else ''}; JAXYARD_DEBUG=1 shows it")

    def _held(self) -> str:
        """What was held back since the last time asked (``2 warning/error records, 1 line on stderr``), or ""."""
        records, lines = len(self.records) - self.reported, self.lines
        self.reported, self.lines = len(self.records), 0
        parts = [f"{records} warning/error record{'s' * (records != 1)}"] * bool(records)
        parts += [f"{lines} line{'s' * (lines != 1)} on stderr"] * bool(lines)
        return ", ".join(parts)


def _passing() -> bool:
    """JAXYARD_DEBUG=1: the libraries' output is shown, not held back."""
    return env_flag("JAXYARD_DEBUG")
