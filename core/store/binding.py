"""A run is one thing: its configuration bound to its checkpoints, and its deliberate changes recorded.

Every checkpoint's ``meta`` (checksummed with the rest of it: :mod:`jaxyard.core.store.integrity`)
carries the run's *bound* configuration, :func:`bound`: ``RunConfig.to_dict()`` less the keys
that may differ from one session of a run to the next without making it another run
(:data:`UNBOUND`), and its sha256 digest. ``resume`` compares the configuration it is about to
train with the newest intact checkpoint's, plus the changes recorded since (:func:`expected`): a
key that differs and was not given on the command line is a :class:`ConfigMismatch` (config.toml
emptied, cut or edited by hand), one line naming each key with its old and new value. A key
given on the command line (``resume --epochs 20``, ``--set KEY=VALUE``) is a deliberate change:
printed, appended to the run's ``changes.jsonl`` (:func:`record_changes`) and carried by the
checkpoints saved after it.

Keys are compared as the command line names them: ``run.epochs``, ``model.hidden_dims`` (of the
chosen model), ``logger.jsonl.filename``. Only keys both sides hold are compared: a parameter a
component no longer takes (``jaxyard upgrade``) or has gained since is no difference, and a
component's parameters are compared only while the same component is chosen (``run.model mlp ->
cnn`` is the difference then). A checkpoint written before configurations were bound (no
``config`` in its meta) is not compared.

A run not yet checkpointed is bound too: ``train`` writes the bound configuration and its digest
to the run directory's :data:`BOUND` file when it starts (:func:`write_bound`), and a resume
rewrites it with each deliberate change. ``resume`` compares with it when there is no checkpoint
(killed before its first, or ``--checkpointer none``); a checkpoint, when there is one, stays the
reference. A run directory written before 0.3.1 has no such file: not compared.

Pure Python: no jax, numpy or orbax.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core.errors import UsageError, one_line

#: the keys a run may change from one session to the next and stay the same run: where it runs
#: (run.devices, run.shard_params: checkpoints restore in any layout) and what only presents it
#: (run.runs_dir: where *new* runs go; run.curves: the PNG at the end; run.profile: a trace of one epoch)
UNBOUND = ("run.devices", "run.shard_params", "run.runs_dir", "run.curves", "run.profile")

#: the meta keys of a checkpoint that bind it to its configuration
META_CONFIG, META_DIGEST = "config", "config_sha256"

#: the record of a run's deliberate changes, one JSON object a line (in the run directory)
CHANGES = "changes.jsonl"

#: the run's bound configuration as it started, with its deliberate changes since (in the run
#: directory): the reference while no checkpoint is (:func:`write_bound`)
BOUND = "config.bound.json"

_SHOWN = 6  # differences named before "and N more"


class ConfigMismatch(UsageError):
    """A run's config.toml does not match its checkpoint's configuration; ``differences`` lists them."""

    def __init__(self, message: str, differences: list[Difference]):
        super().__init__(message)
        self.differences = differences


@attrs.frozen
class Difference:
    """One key whose value differs: ``old`` (the checkpoint's) and ``new`` (the one to train with)."""

    key: str
    old: Any
    new: Any

    def describe(self) -> str:
        return f"{self.key} {show(self.old)} -> {show(self.new)}"


def show(value: Any) -> str:
    """A value as a user reads it: a string bare, anything else as TOML writes it."""
    from jaxyard.core.registry.settings import toml_value

    if isinstance(value, str):
        return value or '""'
    try:
        return toml_value(value)
    except TypeError:
        return json.dumps(value)


def canonical(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples as lists): how a checkpoint's meta holds it."""
    return json.loads(json.dumps(data, allow_nan=True))


def digest(data: Any) -> str:
    """The sha256 of ``data`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(canonical(data), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def bound(config) -> dict[str, Any]:
    """``config``'s bound configuration: its ``to_dict()`` less the :data:`UNBOUND` keys, as JSON reads it back."""
    data = canonical(config.to_dict())
    for key in UNBOUND:
        section, _, name = key.partition(".")
        data.get(section, {}).pop(name, None)
    return data


def binding_meta(config) -> dict[str, Any]:
    """What every checkpoint's meta carries of ``config``: its bound configuration and its digest."""
    data = bound(config)
    return {META_CONFIG: data, META_DIGEST: digest(data)}


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``to_dict()``-shaped configuration by the keys the command line names: ``run.KEY``,
    ``KIND.KEY`` for the chosen component of each kind (``run.KIND`` names it), ``logger.NAME.KEY``."""
    run = data.get("run", {}) if isinstance(data.get("run"), Mapping) else {}
    out = {f"run.{k}": v for k, v in run.items()}
    for kind, tables in data.items():
        if kind == "run" or not isinstance(tables, Mapping):
            continue
        for name, table in tables.items():
            if not isinstance(table, Mapping):
                continue
            if kind == "logger":
                out.update({f"logger.{name}.{k}": v for k, v in table.items()})
            elif name == run.get(kind):
                out.update({f"{kind}.{k}": v for k, v in table.items()})
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Difference]:
    """The keys both flat configurations hold whose values differ, in ``new``'s order; a
    component's parameters only while both choose the same component (``run.KIND``)."""
    out = []
    for key, value in new.items():
        if key not in old or canonical(old[key]) == canonical(value):
            continue
        kind = key.partition(".")[0]
        if kind not in ("run", "logger") and old.get(f"run.{kind}") != new.get(f"run.{kind}"):
            continue  # another component: its parameters are not the old one's
        out.append(Difference(key, old[key], value))
    return out


def stored(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The bound configuration a checkpoint's meta carries (flat), or None (one written before
    configurations were bound)."""
    data = (meta or {}).get(META_CONFIG)
    return flatten(data) if isinstance(data, Mapping) else None


def read_changes(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's recorded deliberate changes, oldest first (none: [])."""
    path = Path(run_dir) / CHANGES
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot be read ({err}); restore it from a backup, or remove it to compare with the checkpoint alone") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise UsageError(f"{path}: line {n} is not a JSON object; restore it, or remove the line") from None
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not isinstance(item.get("step"), int):
            raise UsageError(f"{path}: line {n} is not a change (expected time, step, key, from, to); restore it, or remove the line")
        out.append(item)
    return out


def write_bound(run_dir: str | Path, config, step: int = 0) -> None:
    """Write ``config``'s bound configuration and digest to the run's :data:`BOUND` file,
    atomically (``step``: the step it holds from; a resume's changes are made at its checkpoint's)."""
    from jaxyard.core.store.rundir import write_json

    write_json(Path(run_dir) / BOUND, {"step": int(step), **binding_meta(config)})


def read_bound(run_dir: str | Path) -> tuple[dict[str, Any], int] | None:
    """The run's bound configuration (flat) and the step it holds from, from its :data:`BOUND`
    file; None when it has none (a run directory written before 0.3.1). A file that does not read
    back with its digest is refused in one line."""
    path = Path(run_dir) / BOUND
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{path}: cannot be read ({one_line(err)}); restore it from a backup, or remove it to resume without comparing") from None
    config = data.get(META_CONFIG) if isinstance(data, dict) else None
    step = data.get("step") if isinstance(data, dict) else None
    if not isinstance(config, Mapping) or not isinstance(step, int) or data.get(META_DIGEST) != digest(config):
        raise UsageError(f"{path}: damaged (its configuration does not match its sha256); restore it from a backup, or remove it to resume "
                         "without comparing")
    return flatten(config), step


def expected(config_at_step: Mapping[str, Any], step: int, changes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What config.toml should hold for a checkpoint of ``step`` whose configuration is
    ``config_at_step`` (flat): it, with the deliberate changes made at that step or later applied
    in order (a resume that changed a key and was stopped before its next checkpoint)."""
    out = dict(config_at_step)
    for change in changes:
        if change["step"] >= step:
            out[change["key"]] = change.get("to")
    return out


def recorded(step: int, changes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """The keys :func:`expected` takes from the recorded changes (those made at ``step`` or later),
    each with the step of the last change to it."""
    return {change["key"]: change["step"] for change in changes if change["step"] >= step}


def compare(old: Mapping[str, Any], new: Mapping[str, Any], *, given: Iterable[str], config_path: str | Path, step: int,
            run_dir: str | Path, changed: Mapping[str, int] | None = None, reference: str | None = None,
            fix: str | None = None) -> list[Difference]:
    """The deliberate changes of a resume: the keys whose value differs from the checkpoint's
    (``old``, with :func:`expected`) that were ``given`` on the command line. Any other difference
    is a :class:`ConfigMismatch`, one line naming where the expected values come from (``reference``,
    default the checkpoint of ``step``; plus changes.jsonl for the keys in ``changed``: :func:`recorded`),
    the keys, old -> new, and the ways out (``fix``; default: restore config.toml or ``resume --set``)."""
    given = set(given)
    found = differences(old, new)
    wrong = [d for d in found if d.key not in given]
    if wrong:
        shown = ", ".join(d.describe() for d in wrong[:_SHOWN]) + (f", and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else "")
        source = reference or f"its checkpoint (step {step})"
        steps = sorted({(changed or {})[d.key] for d in wrong if d.key in (changed or {})})
        if steps:  # the expected value is a deliberate change recorded since, not the checkpoint's own
            keys = sum(1 for d in wrong if d.key in (changed or {}))
            source += (f" plus the change{'s' if keys > 1 else ''} recorded in {CHANGES} at step{'s' if len(steps) > 1 else ''} "
                       f"{', '.join(map(str, steps))}")
        way = fix or f"restore {Path(config_path).name}, or change it deliberately with `jaxyard resume {run_dir} --set KEY=VALUE`"
        raise ConfigMismatch(f"{config_path} does not match {source}: {shown}; {way}", wrong)
    return [d for d in found if d.key in given]


def given_keys(sets: Iterable[str], options: Mapping[str, Any], *, logger_key: Callable[[str], str] = str) -> list[str]:
    """The keys a resume's command line gives: ``run.KEY`` for each option given, and each
    ``--set KEY=VALUE``'s KEY (``run.out``'s old name as its new one; ``logger.NAME.KEY`` with
    ``logger_key(NAME)``, the name config.toml gives the logger)."""
    from jaxyard.core.registry.run_settings import RENAMED_RUN_KEYS

    keys = [f"run.{k}" for k, v in options.items() if v is not None]
    for item in sets:
        key = item.partition("=")[0].strip()
        section, _, name = key.partition(".")
        if section == "run":
            key = f"run.{RENAMED_RUN_KEYS.get(name, name)}"
        elif section == "logger":
            logger, _, param = name.rpartition(".")
            key = f"logger.{logger_key(logger)}.{param}"
        keys.append(key)
    return keys


def record_changes(run_dir: str | Path, step: int, changes: Iterable[Difference]) -> None:
    """Append ``changes`` made when resuming from ``step`` to the run's changes.jsonl (time, step,
    key, from, to), durably: a resume stopped after this still reads them."""
    import os

    lines = "".join(
        json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "step": int(step), "key": d.key, "from": canonical(d.old),
                    "to": canonical(d.new)}) + "\n"
        for d in changes
    )
    if not lines:
        return
    from jaxyard.core.store.rundir import open_append

    fd = open_append(Path(run_dir) / CHANGES)  # never through a link: a run directory is data
    try:
        os.write(fd, lines.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["BOUND", "CHANGES", "UNBOUND", "ConfigMismatch", "Difference", "binding_meta", "bound", "compare", "differences", "digest",
           "expected", "flatten", "given_keys", "read_bound", "read_changes", "record_changes", "recorded", "stored", "write_bound"]
