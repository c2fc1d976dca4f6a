"""Keys a saved run's config.toml holds that its components no longer take.

A run directory's config.toml names every parameter of every component as it was when the run
started. When a plugin is upgraded and drops a parameter (jaxyard 0.2's ``orbax`` checkpointer
dropped ``keep_latest``: retention became the run's ``run.keep_latest``), that key is *stale*:
reading the run would fail on it. :func:`refuse_stale_keys` turns that into one line naming the
keys, the component, its plugin and version, and the way out, ``jaxyard upgrade RUN_DIR``, which
lists the keys (:func:`stale_keys`), asks, and rewrites the file without them (:func:`without`).
A dropped key is one the component ignores now, so the run's numbers do not change.
"""

from __future__ import annotations

import copy
from typing import Any

import attrs

from jaxyard.core.errors import UsageError, did_you_mean
from jaxyard.core.registry.entries import KINDS, Entry
from jaxyard.core.registry.run_settings import RunSettings
from jaxyard.core.registry.settings import toml_value

#: the command that drops stale keys (cli.py's ``upgrade``)
UPGRADE_COMMAND = "jaxyard upgrade"


@attrs.frozen
class StaleKey:
    """One key of a saved ``[KIND.NAME]`` table that the component registered now does not take."""

    kind: str
    table: str  # the component's name as the file writes it: ``orbax``, ``acme:cnn``
    key: str
    value: Any
    entry: Entry  # the component as registered now
    note: str = ""  # where the setting lives now, when jaxyard can tell

    def describe(self) -> str:
        """``[checkpointer.orbax] keep_latest = 3 (checkpointer 'orbax' of plugin ... (jaxyard 0.2.0); ...)``."""
        note = f"; {self.note}" if self.note else ""
        component = f"{self.entry.kind} {self.entry.name!r} of {self.entry.origin()}"
        return f"[{self.kind}.{self.table}] {self.key} = {toml_value(self.value)} ({component}{note})"


class StaleConfig(UsageError):
    """A run's config.toml holds keys its components no longer take; ``keys`` lists them."""

    def __init__(self, message: str, keys: list[StaleKey]):
        super().__init__(message)
        self.keys = keys


def stale_keys(registry, data: dict[str, Any]) -> list[StaleKey]:
    """The keys of ``data``'s ``[KIND.NAME]`` tables that the component registered under that name
    does not take, in file order. A table whose component is not registered is left alone (the
    run cannot be read without it; loading it is the fix, not dropping its keys)."""
    run_table = data.get("run", {})
    run_fields = {f.name: f for f in attrs.fields(RunSettings)}
    found = []
    for kind in KINDS:
        for name, table in data.get(kind, {}).items():
            try:
                entry = registry.get(kind, name)
            except UsageError:
                continue
            fields = [f.name for f in attrs.fields(entry.params)]
            for key, value in table.items():
                if key in fields:
                    continue
                note = did_you_mean(key, fields, n=1).removeprefix("; ")
                if key in run_fields:  # a setting jaxyard itself now holds (0.2: checkpoint retention)
                    current = run_table.get(key, run_fields[key].default)
                    note = f"now a [run] setting: this run has run.{key} = {toml_value(current)}"
                found.append(StaleKey(kind, name, key, value, entry, note))
    return found


def without(data: dict[str, Any], keys: list[StaleKey]) -> dict[str, Any]:
    """A copy of ``data`` without ``keys`` (the rest unchanged, in the same order)."""
    out = copy.deepcopy(data)
    for stale in keys:
        out[stale.kind][stale.table].pop(stale.key, None)
    return out


def refuse_stale_keys(registry, data: dict[str, Any], *, path: str, run_dir: str) -> None:
    """Raise :class:`StaleConfig` when run ``run_dir``'s config (``data``, read from ``path``) holds
    stale keys: one line naming each component with its plugin and version, its keys, and the way out."""
    keys = stale_keys(registry, data)
    if not keys:
        return
    by_component: dict[tuple[str, str], list[StaleKey]] = {}
    for stale in keys:
        by_component.setdefault((stale.kind, stale.table), []).append(stale)
    parts = []
    for group in by_component.values():
        entry = group[0].entry
        names = ", ".join(repr(s.key) for s in group)
        noun = "parameter" if len(group) == 1 else "parameters"
        valid = ", ".join(f.name for f in attrs.fields(entry.params)) or "none"
        parts.append(f"{entry.kind} {entry.name!r} of {entry.origin()} has no {noun} {names} any more (valid keys: {valid})")
    them = "it" if len(keys) == 1 else "them"
    raise StaleConfig(
        f"{path}: {'; '.join(parts)}: the run was saved by an older version; "
        f"`{UPGRADE_COMMAND} {run_dir}` drops {them} after asking (keeping the old file), see CHANGELOG.md",
        keys,
    )
