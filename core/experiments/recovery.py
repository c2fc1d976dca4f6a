"""A sweep's record and its recovery: ``sweep.jsonl`` read back checked and appended to whole, and
what ``sweep --resume`` does before running trials (the storage checked, a cut study.log mended,
the trials to run again queued), and the one line a sweep ends with when the machine failed it.

A trial fails for its configuration (it diverged, a bad value: it would fail again) or for the
machine (:func:`environmental`: a full disk, an I/O error; a worker that died): only the
machine's failures are run again, under a new number (``retry_of``).
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxyard.core.errors import UsageError, one_line
from jaxyard.core.experiments.study import LOCK, STUDY_FILE, damaged, locked, mend_journal, open_study, retried
from jaxyard.core.registry import params as P
from jaxyard.core.store.rundir import open_append

if TYPE_CHECKING:
    from jaxyard.core.experiments.sweep import SweepSpec

RESULTS = "sweep.jsonl"
TRIALS = "trials"  # a folder per trial: a run directory each

__all__ = ["ENVIRONMENT", "RESULTS", "TRIALS", "check_links", "check_storage", "environmental", "recover", "reopen", "results", "summary"]


def reopen(directory: Path, spec: SweepSpec, *, storage: str | None, echo: Callable[[str], None],
           warn: Callable[[str], None] | None = None) -> None:
    """Ready the sweep in ``directory`` (of ``spec``, its sweep.json) to go on, as ``sweep --resume``
    does before running trials: its storage checked (:func:`check_storage`), a study.log whose
    last write was cut off mended (:func:`jaxyard.core.experiments.study.mend_journal`), and the
    trials to run again queued (:func:`recover`: those of killed workers, those that failed for
    the machine's reason)."""
    check_storage(directory, spec, storage)
    check_links(directory, spec)
    mend_journal(directory, spec, [line["trial"] for line in results(directory)], warn or echo)
    study = open_study(directory, spec)
    try:
        recover(directory, study, echo)
    except ValueError as err:  # the journal, damaged in a way Optuna reads past until it writes
        raise damaged(directory, spec, err) from None


def check_links(directory: Path, spec: SweepSpec) -> None:
    """A sweep directory is data: a link in it that leads out, by which ``sweep --resume`` would
    write elsewhere (sweep.jsonl, trials/ or a trial's folder in it, study.log when it is the
    study's storage, study.log.torn, sweep.png, the lock), is refused in one line naming it and
    the way out, before anything is written."""
    names = [RESULTS, TRIALS, f"{STUDY_FILE}.torn", "sweep.png", LOCK, *([] if spec.storage else [STUDY_FILE])]
    trials = directory / TRIALS
    if trials.is_dir() and not trials.is_symlink():
        names += [f"{TRIALS}/{p.name}" for p in sorted(trials.iterdir()) if p.is_symlink()]
    for name in names:
        P.inside(directory, name, where="sweep directory")


def check_storage(directory: Path, spec: SweepSpec, given: str | None) -> None:
    """A sweep directory is data: the study storage its sweep.json names other than the sweep's
    own study.log (a database, perhaps on another machine) is used only when the command line
    names it again (``--storage URL``); another ``--storage`` cannot replace it."""
    if given is not None and given != spec.storage:
        held = spec.storage or directory / STUDY_FILE
        raise UsageError(f"--storage {given}: the sweep in {directory} keeps its study in {held}; a resumed sweep cannot change it")
    if spec.storage is not None and given is None:
        raise UsageError(
            f"{directory / 'sweep.json'} names the study storage {spec.storage}, outside the sweep directory; a sweep directory is data, "
            f"so it is used only when you give it again: jaxyard sweep --resume {directory} --storage {spec.storage}"
        )


def recover(directory: Path, study, echo: Callable[[str], None]) -> int:
    """Queue again the configurations of the trials of workers that died (marked failed) and of
    the trials that failed for the machine's reason (:func:`environmental`: a full disk, an I/O
    error), each under a new number; a trial that failed for its configuration's reason (it
    diverged, a bad value) would fail again: it stays failed. Returns how many were requeued."""
    from optuna.trial import TrialState

    host, count = socket.gethostname(), 0
    with locked(directory):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker") or {}
            if worker.get("host") == host and worker.get("pid") != os.getpid() and _alive(worker.get("pid")):
                continue  # a live worker's (this process runs none of them yet: its own are left over from a failed run)
            study._storage.set_trial_user_attr(t._trial_id, "retried", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            _requeue(directory, study, t, "its worker stopped (killed?) before it finished")
            echo(f"Trial {t.number}: its worker stopped before it finished; queued again")
            count += 1
        trials = study.get_trials(deepcopy=False)
        again = retried(trials)
        for t in trials:
            cause = t.user_attrs.get("environment")
            if t.state != TrialState.FAIL or not cause or t.number in again:
                continue
            _requeue(directory, study, t, f"it failed: {cause}")
            echo(f"Trial {t.number}: it failed ({cause}); queued again")
            count += 1
    return count


def _requeue(directory: Path, study, trial, why: str) -> None:
    """``trial``'s configuration queued again (a new trial), and its line saying so (``retried``)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    _append(directory, {"trial": trial.number, "state": "failed", "params": _params(trial.params), "run_dir": None,
                        "best": None, "final": None, "test": None, "value": None, "seconds": None,
                        "error": f"{why}; queued again", "retried": True})


# What the machine, not the configuration, is to blame for: a trial failing for it may be run again.
ENVIRONMENT = tuple(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EIO", "EROFS", "EFBIG", "ENOMEM", "EMFILE", "ENFILE", "ESTALE")
                    if hasattr(errno, name))


def environmental(err: BaseException) -> str | None:
    """The operating system's words for why ``err`` happened when the machine is to blame (``No
    space left on device``, ``Input/output error``, ...), else None. Looks down the exception
    chain (jaxyard's one-line errors keep the OSError as their context), then in the messages
    (a library that wrote the errno's words into its own: orbax's ``No space left on device (ENOSPC)``)."""
    seen: set[int] = set()
    queue: list[BaseException] = [err]
    texts = []
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and isinstance(e.errno, int) and e.errno in ENVIRONMENT:
            return os.strerror(e.errno)
        texts.append(str(e))
        queue += [x for x in (e.__cause__, e.__context__, *getattr(e, "exceptions", ())) if isinstance(x, BaseException)]
    return next((os.strerror(code) for code in ENVIRONMENT if any(os.strerror(code) in text for text in texts)), None)


def summary(directory: Path, budget: int, failed_workers: Sequence[int] = ()) -> str | None:
    """What is left to retry after the sweep (of ``budget`` trials) ran, as one line (None:
    nothing): trials that failed for the machine's reason and workers that stopped, and that
    ``sweep --resume`` retries them. For example: ``5 of 6 trials failed: No space left on
    device; `jaxyard sweep --resume DIR` retries them``."""
    lines = [line for line in results(directory) if not line.get("retried")]
    causes = [line["environment"] for line in lines if line["state"] == "failed" and line.get("environment")]
    parts = []
    if causes:
        named = sorted(set(causes), key=lambda c: (-causes.count(c), c))
        parts.append(f"{len(causes)} of {budget} trials failed: {', '.join(named)}")
    if failed_workers:
        parts.append(f"worker{'s' * (len(failed_workers) > 1)} {', '.join(map(str, failed_workers))} stopped before "
                     f"{'their' if len(failed_workers) > 1 else 'its'} trials finished")
    if not parts:
        return None
    return f"{'; '.join(parts)}; `jaxyard sweep --resume {directory}` retries them"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: P.parse_value(v) if isinstance(v, str) else v for k, v in params.items()}


def _append(directory: Path, line: dict[str, Any]) -> None:
    """One line at the end of sweep.jsonl (under the sweep's lock). A cut last line (a write that
    failed, the disk full) is dropped first: appended to, it would damage the next line too."""
    with open(open_append(directory / RESULTS, read=True), "a+b") as f:  # appending, never through a link: every write goes to the end
        end, start = f.seek(0, os.SEEK_END), b""
        if end:
            f.seek(max(0, end - 65536))
            tail = f.read()
            newline = tail.rfind(b"\n")
            if not tail.endswith(b"\n") and (newline >= 0 or end <= 65536):
                f.truncate(end - len(tail) + newline + 1)
            elif not tail.endswith(b"\n"):
                start = b"\n"  # a cut line longer than that: ended, to stand alone
        f.write(start + (json.dumps(line, default=str) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def results(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """The finished trials of a sweep, the last line of each trial number winning. A cut last
    line (a write that failed) is left out; any other line that is not one jaxyard wrote is one
    line naming it."""
    path = Path(directory) / RESULTS
    out: dict[int, dict[str, Any]] = {}
    data = path.read_bytes() if path.is_file() else b""
    texts = data.splitlines()
    for number, text in enumerate(texts, 1):
        try:
            line = _checked(json.loads(text.decode("utf-8")))
        except (ValueError, TypeError, RecursionError) as err:  # not UTF-8, not JSON, a value of the wrong type
            if number == len(texts) and not data.endswith(b"\n"):
                break
            raise UsageError(f"{path}:{number} is not a trial's line ({one_line(err)}); it was not written by jaxyard, "
                             "or it was edited") from None
        out[line["trial"]] = line
    return [out[k] for k in sorted(out)]


_LINE_TYPES: dict[str, type | tuple[type, ...]] = {
    "trial": int, "state": str, "params": dict, "run_dir": (str, type(None)), "value": (int, float, type(None)),
    "seconds": (int, float, type(None)), "best": (dict, type(None)), "test": (dict, type(None)), "error": (str, type(None)),
    "environment": (str, type(None)),
}


def _checked(line: Any) -> dict[str, Any]:
    """A sweep.jsonl line whose values have the types the leaderboard and ``--resume`` use."""
    if not isinstance(line, dict):
        raise TypeError(f"a {type(line).__name__}, not an object")
    for key, kind in _LINE_TYPES.items():
        value = line.get(key) if key != "trial" else line.get(key, "")  # only a trial's number must be there
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"{key} = {value!r}")
    run_dir = line["run_dir"]
    if run_dir is not None and (Path(run_dir).is_absolute() or ".." in Path(run_dir).parts):
        raise ValueError(f"run_dir {run_dir!r} is not a directory inside the sweep")
    return line
