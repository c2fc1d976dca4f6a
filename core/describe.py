"""Plain-data views of entries and plugins, for ``--json`` and the text tables (no jax imports)."""

from __future__ import annotations

from typing import Any

from jaxyard.core.entries import Entry, PluginInfo
from jaxyard.core.params import describe


def entry_dict(entry: Entry, registry, *, params: bool = False) -> dict[str, Any]:
    plugin = registry.plugin(entry.plugin)
    out: dict[str, Any] = {
        "kind": entry.kind,
        "name": entry.name,
        "description": entry.description,
        "plugin": entry.plugin,
        "distribution": plugin.distribution,
        "version": plugin.version,
    }
    if params:
        out["params"] = params_list(entry.params)
    return out


def params_list(cls: type) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "type": p.type, "default": list(p.default) if isinstance(p.default, tuple) else p.default, "doc": p.doc}
        for p in describe(cls)
    ]


def plugin_dict(info: PluginInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "source": info.source,
        "module": info.module,
        "distribution": info.distribution,
        "version": info.version,
        "hooks": list(info.hooks),
        "components": list(info.components),
        "error": info.error,
    }


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is never padded."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip() for r in rows]
