"""Which metrics a run records, and which way each one improves: read from the run's task.

A record's metric is ``SPLIT_NAME``, and ``SPLIT_NAME_ema`` for the weights' moving average
(``val_loss``, ``train_acc``, ``val_loss_ema``). ``NAME`` is one of the task's metrics, and its
direction is the task's (``Task.metrics``: ``{"loss": "min", "acc": "max", ...}``), given here as
``directions``; summary.json records them under ``"metrics"``. Without ``directions`` (a run of
0.2, whose summary.json has no ``"metrics"``) they are :data:`DIRECTIONS`, the classification
metrics. A metric the directions do not declare has no direction, and asking for one is an
error, never a guess from how its name is spelled.

Pure Python: read by ``compare`` and the report without jax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from jaxyard.core.errors import UsageError

Direction = Literal["min", "max"]

#: the directions of a run that does not say (0.2's runs: classification's loss and accuracy)
DIRECTIONS: dict[str, Direction] = {"loss": "min", "acc": "max"}
SPLITS = ("train", "val", "test")
EMA = "_ema"
LOSS = "loss"

#: what ``run.monitor`` could name in 0.2 (today it is checked against the run's task)
MONITORS = tuple(f"{split}_{name}" for split in ("val", "train") for name in DIRECTIONS)

#: how the report and the curves name a metric: (short, long); others are title-cased
LABELS = {
    "loss": ("Loss", "Loss"),
    "acc": ("Acc", "Accuracy"),
    "mse": ("MSE", "MSE"),
    "mae": ("MAE", "MAE"),
    "rmse": ("RMSE", "RMSE"),
    "r2": ("R²", "R²"),
    "perplexity": ("Perplexity", "Perplexity"),
    "token_acc": ("Token Acc", "Token Accuracy"),
    "kl": ("KL", "KL"),
}


def of(directions: Mapping[str, str] | None = None) -> dict[str, Direction]:
    """``directions`` as a dict (base name -> "min"/"max", in report order); None: :data:`DIRECTIONS`."""
    return dict(DIRECTIONS if directions is None else directions)  # type: ignore[arg-type]


def of_summary(summary: Mapping[str, Any] | None) -> dict[str, Direction]:
    """The directions a summary.json records (``"metrics"``); one without them (0.2): :data:`DIRECTIONS`."""
    recorded = (summary or {}).get("metrics")
    if isinstance(recorded, Mapping) and recorded and all(v in ("min", "max") for v in recorded.values()):
        return dict(recorded)
    return dict(DIRECTIONS)


def of_config(config: Any) -> dict[str, Direction]:
    """The directions of a run configuration's task (``config.task``, created for its metrics);
    a configuration without a task: :data:`DIRECTIONS`."""
    choice = getattr(config, "task", None)
    if choice is None:
        return dict(DIRECTIONS)
    return dict(getattr(choice.create(), "metrics", DIRECTIONS))


def base_name(metric: str, directions: Mapping[str, str] | None = None) -> str | None:
    """``loss`` for ``val_loss`` and ``val_loss_ema``; None for a name that is not a recorded metric."""
    name = metric.removesuffix(EMA)
    split, _, rest = name.partition("_")
    return rest if split in SPLITS and rest in of(directions) else None


def is_metric(metric: str, directions: Mapping[str, str] | None = None) -> bool:
    """Whether ``metric`` names a recorded metric (``val_acc``, ``train_loss_ema``, ...)."""
    return base_name(metric, directions) is not None


def direction(metric: str, directions: Mapping[str, str] | None = None) -> Direction:
    """``"min"`` when lower ``metric`` is better, ``"max"`` when higher is."""
    known = of(directions)
    name = base_name(metric, known)
    if name is None:
        valid = ", ".join(f"SPLIT_{n}[{EMA}]" for n in known)
        raise UsageError(f"{metric!r} is not a metric of this run, so it has no direction (valid: {valid}; SPLIT: {', '.join(SPLITS)})")
    return known[name]


def minimized(metric: str, directions: Mapping[str, str] | None = None) -> bool:
    """Whether lower ``metric`` is better."""
    return direction(metric, directions) == "min"


def headline(directions: Mapping[str, str] | None = None) -> str:
    """The metric shown when one is shown: the first besides the loss (``acc`` for
    classification, ``mse`` for regression), else ``loss``."""
    return next((m for m in of(directions) if m != LOSS), LOSS)


def label(name: str, *, short: bool = False) -> str:
    """How a base metric is printed: ``Loss``, ``Accuracy`` (``Acc`` when ``short``), ``MSE``,
    ``Top-5 Accuracy``; any other name title-cased (``Token Acc``)."""
    if name in LABELS:
        return LABELS[name][0 if short else 1]
    top = re.fullmatch(r"top(\d+)_acc", name)
    if top:
        return f"Top-{top.group(1)} {'Acc' if short else 'Accuracy'}"
    return name.replace("_", " ").title()
