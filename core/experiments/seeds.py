"""Runs that differ only in their seed, as one configuration: each final metric's mean, sample
standard deviation and n, the way papers report results (``0.7012 ± 0.0153``, n = 3).

The metrics are :func:`jaxyard.core.experiments.compare.summarize`'s per run: the final and the
best value of the ranked metric, and the test metrics of the runs' summary.json. A run alone in its
configuration has its value (n = 1, no deviation). Only comparable runs are averaged: unfinished
runs (no summary.json; a sweep's pruned or failed trials) are rows of their own by the epoch they
reached, and a run repeating a seed of its configuration is a row of its own. Pure Python: no jax.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import Any

from jaxyard.core.experiments import compare as C

SEED = "run.seed"
FINISHED = "finished"
UNFINISHED = "unfinished"


def state(run: C.RunRecord) -> str:
    """How far ``run`` got: ``finished`` when it wrote its summary.json (a sweep's complete trial;
    a run of an earlier version, without one, that recorded all its run.epochs), a sweep trial's
    other state (``pruned``, ``failed``), else ``unfinished`` (it stopped, or is still running)."""
    trial = (run.trial or {}).get("state")
    if trial and trial != "complete":
        return str(trial)
    epochs = run.config.get("run.epochs", 0)  # whole epochs, unless run.steps or run.eval_every counts in steps
    whole = isinstance(epochs, int) and epochs > 0 and not run.config.get("run.steps") and not run.config.get("run.eval_every")
    if run.summary is not None or trial == "complete" or (whole and len(run.history) >= epochs):
        return FINISHED
    return UNFINISHED


def group_by_seed(runs: Sequence[C.RunRecord], metric: str | None = None) -> dict[str, Any]:
    """Plain data for ``--json``: the metric (default: :func:`~jaxyard.core.experiments.compare.default_metric`),
    which way it improves, the keys that tell the configurations apart (``differing``, the seed
    left out), the statistics (``final``, ``best`` and the test metrics) and one entry per
    configuration and :func:`state`, the finished ones first, each part best mean first: its runs
    (by seed), config, state, seeds, epochs (per run), n and per statistic ``{"mean", "std", "n"}``
    (``std``: the sample standard deviation; None for one value).

    Only comparable runs are one entry: the finished ones, or the unfinished (pruned, failed) ones
    that reached the same epoch and step; a run that stopped early but finished stays with its
    configuration. A run whose seed an earlier run of its entry (in the order given) already has
    is an entry of its own, ``repeats`` naming that run (``None`` elsewhere): not an independent
    sample."""
    data = C.summarize(runs, metric)
    keys = [k for k in data["differing"] if k != SEED]
    stats = ["final", "best", *data["tests"]]
    by_label = {r.label: r for r in runs}
    order = {r.label: i for i, r in enumerate(runs)}
    seeds = {r.label: r.config.get(SEED) for r in runs}
    grouped: dict[str, list[dict]] = {}
    for entry in sorted(data["runs"], key=lambda e: order[e["label"]]):
        run = by_label[entry["label"]]
        how = state(run)
        last = run.history[-1] if run.history and how != FINISHED else {}
        key = [[entry["config"].get(k) for k in keys], how, last.get("epoch"), last.get("step")]
        grouped.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(entry)
    groups = []
    for entries in grouped.values():
        how = state(by_label[entries[0]["label"]])
        first: dict[str, str] = {}  # canonical seed -> the label of its first run
        for entry in entries:
            first.setdefault(json.dumps(seeds[entry["label"]], default=str), entry["label"])
        kept = [e for e in entries if e["label"] in first.values()]
        kept.sort(key=lambda e: (not isinstance(seeds[e["label"]], int), seeds[e["label"]] if isinstance(seeds[e["label"]], int) else 0))
        groups.append(_group(kept, keys, stats, seeds, how, None))
        groups.extend(_group([e], keys, stats, seeds, how, first[json.dumps(seeds[e["label"]], default=str)])
                      for e in entries if e["label"] not in first.values())
    sign = 1.0 if data["direction"] == "min" else -1.0
    groups.sort(key=lambda g: (not _comparable(g), g["best"]["mean"] is None, sign * g["best"]["mean"] if g["best"]["mean"] is not None else 0.0))
    return {"metric": data["metric"], "direction": data["direction"], "differing": keys, "stats": stats, "groups": groups}


def _group(entries: list[dict], keys: list[str], stats: list[str], seeds: dict[str, Any], how: str, repeats: str | None) -> dict[str, Any]:
    """One entry of :func:`group_by_seed`: ``entries`` (summarize's, one per run) as one configuration."""
    return {
        "label": entries[0]["label"],
        "runs": [e["label"] for e in entries],
        "config": {k: entries[0]["config"].get(k) for k in keys},
        "state": how,
        "repeats": repeats,
        "seeds": [seeds[e["label"]] for e in entries],
        "epochs": [e["epochs"] for e in entries],
        "n": len(entries),
        **{name: _stat([e[name] for e in entries]) for name in stats},
    }


def _comparable(group: dict[str, Any]) -> bool:
    """Finished, and not a repeat of a seed: a configuration's result."""
    return group["state"] == FINISHED and group["repeats"] is None


def repeated(data: dict[str, Any]) -> bool:
    """Whether some configuration of :func:`group_by_seed`'s ``data`` ran with several seeds."""
    return any(g["n"] > 1 for g in data["groups"])


def table(data: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[list[str]]]:
    """:func:`group_by_seed`'s ``data`` as headers, rows (each statistic's mean) and their text:
    one row per configuration, its state where some are not finished (``unfinished``, ``pruned``;
    ``finished; same seed as RUN`` for a repeat), its differing settings, n, seeds, epochs and
    ``mean ± std`` per statistic (the test metrics where a run has them); ``(n=K)`` where only K
    of its runs have the value."""
    metric, groups = data["metric"], data["groups"]
    stats = [s for s in data["stats"] if any(g[s]["n"] for g in groups)]
    names = {"final": f"final {metric}", "best": f"best {metric}"}
    states = ["state"] if not all(_comparable(g) for g in groups) else []
    headers = ["run", *states, *data["differing"], "n", "seeds", "epochs", *(names.get(s, s) for s in stats)]
    rows, text = [], []
    for g in groups:
        label = g["label"] if g["n"] == 1 else f"{g['label']} +{g['n'] - 1}"
        how = [g["state"] + (f"; same seed as {g['repeats']}" if g["repeats"] else "")] if states else []
        settings = [g["config"][k] for k in data["differing"]]
        epochs = [e for e in g["epochs"] if isinstance(e, int)]
        span = f"{min(epochs)}-{max(epochs)}" if epochs and min(epochs) < max(epochs) else C.format_cell(epochs[0] if epochs else None)
        rows.append([label, *how, *settings, g["n"], g["seeds"], max(epochs, default=None), *(g[s]["mean"] for s in stats)])
        text.append([label, *how, *(C.format_cell(v) for v in settings), str(g["n"]), ", ".join(C.format_cell(s) for s in g["seeds"]),
                     span, *(_cell(g[s], g["n"]) for s in stats)])
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
