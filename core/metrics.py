"""Which metrics a run records, and which way each one improves: one declared rule.

A record's metric is ``SPLIT_NAME``, and ``SPLIT_NAME_ema`` for the weights' moving average
(``val_loss``, ``train_acc``, ``val_loss_ema``). Its direction comes from :data:`DIRECTIONS`,
by ``NAME``: a metric not declared there has no direction, and asking for one is an error,
never a guess from how its name is spelled.
"""

from __future__ import annotations

from typing import Literal

from jaxyard.core.errors import UsageError

#: each metric's direction: "min" (lower is better) or "max"
DIRECTIONS: dict[str, Literal["min", "max"]] = {"loss": "min", "acc": "max"}
SPLITS = ("train", "val", "test")
EMA = "_ema"

#: what ``run.monitor`` may name: the metrics recorded every epoch
MONITORS = tuple(f"{split}_{name}" for split in ("val", "train") for name in DIRECTIONS)


def base_name(metric: str) -> str | None:
    """``loss`` for ``val_loss`` and ``val_loss_ema``; None for a name that is not a recorded metric."""
    name = metric.removesuffix(EMA)
    split, _, rest = name.partition("_")
    return rest if split in SPLITS and rest in DIRECTIONS else None


def is_metric(metric: str) -> bool:
    """Whether ``metric`` names a recorded metric (``val_acc``, ``train_loss_ema``, ...)."""
    return base_name(metric) is not None


def direction(metric: str) -> Literal["min", "max"]:
    """``"min"`` when lower ``metric`` is better, ``"max"`` when higher is."""
    name = base_name(metric)
    if name is None:
        valid = ", ".join(f"SPLIT_{n}[{EMA}]" for n in DIRECTIONS)
        raise UsageError(f"{metric!r} is not a metric jaxyard records, so it has no direction (valid: {valid}; SPLIT: {', '.join(SPLITS)})")
    return DIRECTIONS[name]


def minimized(metric: str) -> bool:
    """Whether lower ``metric`` is better."""
    return direction(metric) == "min"
