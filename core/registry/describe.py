"""Plain-data views of entries and plugins, for ``--json`` and the text tables (no jax imports)."""

from __future__ import annotations

from typing import Any

from jaxyard.core.registry.entries import Entry, PluginInfo
from jaxyard.core.registry.params import describe


def entry_dict(entry: Entry, registry, *, params: bool = False, configured: dict | None = None) -> dict[str, Any]:
    plugin = registry.plugin(entry.plugin)
    out: dict[str, Any] = {
        "kind": entry.kind,
        "name": entry.selector,
        "qualified": entry.qualified,
        "description": entry.description,
        "plugin": entry.plugin,
        "distribution": plugin.distribution,
        "version": plugin.version,
    }
    if params:
        out["params"] = params_list(entry.params, configured)
        if entry.kind == "task":
            out["metrics"] = task_metrics(entry, configured)
    return out


def task_metrics(entry: Entry, configured: dict | None = None) -> dict[str, str] | None:
    """A task's metrics and their directions with its configured parameters (None if building it
    fails: ``run`` reports why)."""
    from jaxyard.core.registry.params import build

    try:
        task = entry.create(build(entry.params, dict(configured or {}), where=f"task {entry.name!r}"))
        return {str(name): str(way) for name, way in dict(task.metrics).items()}
    except Exception:
        return None


def params_list(cls: type, configured: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each parameter's name, type, default and doc, ``writes``/``outside`` where it is declared so
    (:func:`jaxyard.param`); ``configured``: the value the registry files set."""
    out = []
    for p in describe(cls):
        item = {"name": p.name, "type": p.type, "default": _plain(p.default), "doc": p.doc, "traced": p.traced}
        item.update({flag: True for flag in ("writes", "outside") if getattr(p, flag)})  # only where set: a path, a destination
        if configured and p.name in configured:
            item["configured"] = _plain(configured[p.name])
        out.append(item)
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


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
        "warnings": list(info.warnings),
        "disabled": info.disabled,
    }


def table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is never padded."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]  # none for the last column: zip stops before it
    return [indent + "  ".join([c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]).rstrip() for r in rows]
