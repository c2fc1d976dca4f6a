"""A sweep's Optuna study: its storage, its sampler and pruner, the trials' values, and the lock
under which this machine's workers take trials one at a time (:func:`next_trial`).

Optuna is imported only here and only when called (:func:`import_optuna`: the ``sweep`` extra).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxyard.core.errors import JaxyardError, UsageError, one_line
from jaxyard.core.experiments.space import Dim, as_text
from jaxyard.core.registry import params as P
from jaxyard.core.store.rundir import open_append

if TYPE_CHECKING:
    from jaxyard.core.experiments.sweep import SweepSpec

STUDY_FILE = "study.log"  # the journal file of a study without --storage
LOCK = ".sweep.lock"

__all__ = ["LOCK", "STUDY_FILE", "damaged", "grid_params", "import_optuna", "locked", "mend_journal", "next_trial", "open_study", "retried",
           "storage_of", "suggest"]


def import_optuna():
    """Optuna, quieted to its warnings (or the extra to install, in one line)."""
    try:
        import optuna
    except ImportError:
        from jaxyard.core.errors import MissingExtra

        raise MissingExtra("jaxyard sweep", "sweep", "optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_of(directory: Path, spec: SweepSpec):
    """The study's storage: ``--storage URL`` (any Optuna storage: a database server lets workers
    on several machines share the study), else the journal file inside the sweep directory."""
    optuna = import_optuna()
    if spec.storage:
        return spec.storage
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(directory / STUDY_FILE)))


def open_study(directory: Path, spec: SweepSpec, *, create: bool = False, worker: int = 0):
    """The sweep's study (``create``: a new one), with its sampler (seeded per worker) and pruner."""
    optuna = import_optuna()
    seed = spec.seed + worker  # workers draw different points from the same sampler kind
    samplers = {"grid": optuna.samplers.RandomSampler, "random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
    sampler = samplers[spec.sampler](seed=seed)
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.epochs),
        "none": optuna.pruners.NopPruner,
    }[spec.prune]()
    try:
        if create:
            return optuna.create_study(storage=storage_of(directory, spec), study_name=spec.study, direction=spec.direction,
                                       sampler=sampler, pruner=pruner)
        return optuna.load_study(storage=storage_of(directory, spec), study_name=spec.study, sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        raise UsageError(f"--storage {spec.storage} already holds a study named {spec.study!r}; choose another --out") from None
    except KeyError:
        raise UsageError(f"the study {spec.study!r} of {directory} is not in its storage {spec.storage or directory / STUDY_FILE}") from None
    except Exception as err:  # sqlalchemy and the journal backend: a bad URL, an unreachable server, an unwritable file
        if isinstance(err, JaxyardError):
            raise
        raise damaged(directory, spec, err) from None


def damaged(directory: Path, spec: SweepSpec, err: BaseException) -> UsageError:
    """The study's storage failed (``err``), as one line: a journal file that is not one, or the
    ``--storage`` and its error."""
    if spec.storage is None and not isinstance(err, OSError):  # a line of the journal is not one (not JSON, a list, an unknown op)
        return UsageError(f"{directory / STUDY_FILE} is damaged ({one_line(err, first_line=True)}); "
                          f"the study cannot go on: start a new sweep (sweep.jsonl and trials/ keep the results so far)")
    return UsageError(f"--storage {spec.storage or directory / STUDY_FILE}: {one_line(err, first_line=True)}")


def grid_params(dims: Iterable[Dim], point: dict[str, str]) -> dict[str, Any]:
    """A grid point (``--set`` texts by name) as the parameters of an enqueued trial."""
    return {d.name: _choice_value(point[d.name]) for d in dims}


def _choice_value(text: str):
    """A list value as Optuna stores it: the number or string itself, else its text (a list)."""
    value = P.parse_value(text)
    return value if isinstance(value, (bool, int, float, str)) else text


def suggest(trial, dims: Iterable[Dim]) -> dict[str, str]:
    """The trial's value of each dimension, as ``--set`` text."""
    out = {}
    for d in dims:
        if d.is_list:
            value = trial.suggest_categorical(d.name, [_choice_value(v) for v in d.values])
            out[d.name] = next(v for v in d.values if _choice_value(v) == value)
        elif d.kind == "int":
            assert d.low is not None and d.high is not None  # a distribution has both bounds
            out[d.name] = str(trial.suggest_int(d.name, int(d.low), int(d.high)))
        else:
            out[d.name] = as_text(trial.suggest_float(d.name, d.low, d.high, log=d.kind == "log"))
    return out


@contextlib.contextmanager
def locked(directory: Path):
    """This machine's workers of one sweep, one at a time (asking for a trial, appending a line)."""
    fd = open_append(directory / LOCK)  # never through a link: a sweep directory is data
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def retried(trials) -> set[int]:
    """The numbers of the trials run again under a new number (``sweep --resume``: a killed
    worker's, one that failed for the machine's reason): each new one says ``retry_of``."""
    return {t.user_attrs["retry_of"] for t in trials if isinstance(t.user_attrs.get("retry_of"), int)}


def _counted(trial, again: set[int]) -> bool:
    """A trial that uses up the budget: every one but those waiting and those run again under a
    new number (``again``; a killed worker's are also marked ``retried``)."""
    from optuna.trial import TrialState

    return trial.state != TrialState.WAITING and not trial.user_attrs.get("retried") and trial.number not in again


def next_trial(directory: Path, study, spec: SweepSpec):
    """The next trial to run (a waiting one first: grid points, retries), or None when the
    budget is spent. Under the sweep's lock: two workers never take the same one."""
    from optuna.trial import TrialState

    with locked(directory):
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        again = retried(trials)
        if not waiting and sum(_counted(t, again) for t in trials) >= spec.trials:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", {"pid": os.getpid(), "host": socket.gethostname()})
        return trial


def mend_journal(directory: Path, spec: SweepSpec, recorded: Iterable[int], warn: Callable[[str], None]) -> bool:
    """A study.log whose last line is cut off (a write interrupted: a kill, a full disk): that
    piece is set aside to ``study.log.torn`` and the study goes on without it, when the journal
    still holds every trial ``recorded`` (sweep.jsonl's finished ones) finished and every trial
    directory; otherwise one line refusing it. Returns whether it mended the file.

    Why set aside rather than refuse: Optuna's journal is a list of operations, appended whole,
    one a line. A cut last line is an operation that never completed, and Optuna reads past it;
    but its next append would glue onto it, and the file would be damaged for good (a 48-line
    JSONDecodeError on every later resume). Without it, the study is as if the writer had been
    killed just before that write, which ``sweep --resume`` recovers from already (that trial is
    queued again). A file cut further back (copied half, truncated) has lost operations the
    sweep relied on, which the comparison finds: refused, nothing written.
    """
    path = directory / STUDY_FILE
    if spec.storage or not path.is_file():
        return False
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))  # Optuna's own writers' lock: nobody is mid-append while held
    lock.acquire()
    try:
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut == len(data):
            return False
        study = open_study(directory, spec)  # reads past the cut line, as Optuna does
        trials = study.get_trials(deepcopy=False)
        finished = {t.number for t in trials if t.state.is_finished()}
        made = {int(p.name) for p in (directory / "trials").glob("[0-9][0-9][0-9][0-9]") if p.is_dir()}
        lost = sorted({n for n in recorded if n not in finished} | (made - {t.number for t in trials}))
        if lost:
            raise UsageError(
                f"{path} is cut short: its last line is cut off and it has lost trial {lost[0]}, which the sweep directory "
                f"records; the study cannot go on: start a new sweep (sweep.jsonl and trials/ keep the results so far)"
            )
        torn = path.with_name(STUDY_FILE + ".torn")
        with open(open_append(torn), "ab") as f:  # kept, not deleted: the bytes of the write that did not complete
            f.write(data[cut:] + b"\n")
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # cut here, never through a link
        try:
            os.ftruncate(fd, cut)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        lock.release()
    warn(f"Warning: {path}: its last line was cut off (a write interrupted by a kill or a full disk); the study goes on "
         f"without that last update (set aside to {torn.name})")
    return True
