"""Runs that differ only in their seed, as one configuration: each final metric's mean, sample
standard deviation and n, the way papers report results (``0.7012 ± 0.0153``, n = 3).

The metrics are :func:`jaxyard.core.experiments.compare.summarize`'s per run: the final and the
best value of the ranked metric, and the test metrics of the runs' summary.json. A run alone in its
configuration has its value (n = 1, no deviation). Pure Python: no jax.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from jaxyard.core.experiments import compare as C

SEED = "run.seed"


def group_by_seed(runs: Sequence[C.RunRecord], metric: str | None = None) -> dict[str, Any]:
    """Plain data for ``--json``: the metric (default: :func:`~jaxyard.core.experiments.compare.default_metric`),
    which way it improves, the keys that tell the configurations apart (``differing``, the seed
    left out), the statistics (``final``, ``best`` and the test metrics) and one entry per
    configuration, best mean first: its runs (by seed), config, seeds, n and per statistic
    ``{"mean", "std", "n"}`` (``std``: the sample standard deviation; None for one value)."""
    data = C.summarize(runs, metric)
    keys = [k for k in data["differing"] if k != SEED]
    stats = ["final", "best", *data["tests"]]
    seeds = {r.label: r.config.get(SEED) for r in runs}
    grouped: dict[str, list[dict]] = {}
    for entry in data["runs"]:
        grouped.setdefault(json.dumps([entry["config"].get(k) for k in keys], sort_keys=True, default=str), []).append(entry)
    groups = []
    for entries in grouped.values():
        entries.sort(key=lambda e: (not isinstance(seeds[e["label"]], int), seeds[e["label"]] if isinstance(seeds[e["label"]], int) else 0))
        groups.append({
            "label": entries[0]["label"],
            "runs": [e["label"] for e in entries],
            "config": {k: entries[0]["config"].get(k) for k in keys},
            "seeds": [seeds[e["label"]] for e in entries],
            "n": len(entries),
            **{name: _stat([e[name] for e in entries]) for name in stats},
        })
    sign = 1.0 if data["direction"] == "min" else -1.0
    groups.sort(key=lambda g: (g["best"]["mean"] is None, sign * g["best"]["mean"] if g["best"]["mean"] is not None else 0.0))
    return {"metric": data["metric"], "direction": data["direction"], "differing": keys, "stats": stats, "groups": groups}


def repeated(data: dict[str, Any]) -> bool:
    """Whether some configuration of :func:`group_by_seed`'s ``data`` ran with several seeds."""
    return any(g["n"] > 1 for g in data["groups"])


def table(data: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[list[str]]]:
    """:func:`group_by_seed`'s ``data`` as headers, rows (each statistic's mean) and their text:
    one row per configuration, its differing settings, n, seeds and ``mean ± std`` per statistic
    (the test metrics where a run has them); ``(n=K)`` where only K of its runs have the value."""
    metric, groups = data["metric"], data["groups"]
    stats = [s for s in data["stats"] if any(g[s]["n"] for g in groups)]
    names = {"final": f"final {metric}", "best": f"best {metric}"}
    headers = ["run", *data["differing"], "n", "seeds", *(names.get(s, s) for s in stats)]
    rows, text = [], []
    for g in groups:
        label = g["label"] if g["n"] == 1 else f"{g['label']} +{g['n'] - 1}"
        settings = [g["config"][k] for k in data["differing"]]
        rows.append([label, *settings, g["n"], g["seeds"], *(g[s]["mean"] for s in stats)])
        text.append([label, *(C.format_cell(v) for v in settings), str(g["n"]), ", ".join(C.format_cell(s) for s in g["seeds"]),
                     *(_cell(g[s], g["n"]) for s in stats)])
    return headers, rows, text


def _stat(values: list[Any]) -> dict[str, Any]:
    """Mean, sample standard deviation (None below two values) and count of the numbers in ``values``."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    mean = statistics.fmean(numbers) if numbers else None
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return {"mean": mean, "std": std, "n": len(numbers)}


def _cell(stat: dict[str, Any], n: int) -> str:
    """``0.7012 ± 0.0153``; one value alone; ``(n=K)`` after when only K of the group's ``n`` runs have it."""
    if not stat["n"]:
        return ""
    text = C.format_cell(stat["mean"], metric=True)
    if stat["std"] is not None:
        text += f" ± {C.format_cell(stat['std'], metric=True)}"
    return text + (f" (n={stat['n']})" if stat["n"] < n else "")
