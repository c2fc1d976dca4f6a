"""A sweep's Optuna study: its storage, its sampler and pruner, the trials' values, and the lock
under which this machine's workers take trials one at a time (:func:`next_trial`).

Optuna is imported only here and only when called (:func:`import_optuna`: the ``sweep`` extra).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxyard.core.errors import JaxyardError, UsageError, one_line
from jaxyard.core.experiments.space import Dim, as_text
from jaxyard.core.registry import params as P

if TYPE_CHECKING:
    from jaxyard.core.experiments.sweep import SweepSpec

STUDY_FILE = "study.log"  # the journal file of a study without --storage
LOCK = ".sweep.lock"

__all__ = ["LOCK", "STUDY_FILE", "grid_params", "import_optuna", "locked", "next_trial", "open_study", "storage_of", "suggest"]


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
        raise UsageError(f"--storage {spec.storage or directory / STUDY_FILE}: {one_line(err, first_line=True)}") from None


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
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _counted(trial) -> bool:
    """A trial that uses up the budget: every one but those waiting and those lost with a killed
    worker (retried under a new number)."""
    from optuna.trial import TrialState

    return trial.state != TrialState.WAITING and not trial.user_attrs.get("retried")


def next_trial(directory: Path, study, spec: SweepSpec):
    """The next trial to run (a waiting one first: grid points, retries), or None when the
    budget is spent. Under the sweep's lock: two workers never take the same one."""
    from optuna.trial import TrialState

    with locked(directory):
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and sum(map(_counted, trials)) >= spec.trials:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", {"pid": os.getpid(), "host": socket.gethostname()})
        return trial
