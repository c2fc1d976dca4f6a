"""What the trackers share: a record's metrics under the names trackers show."""

from __future__ import annotations

import numbers


def metric_name(key: str) -> str:
    """The name a record key gets in the trackers: ``train_loss`` -> ``train/loss``,
    ``val_acc`` -> ``val/acc``, ``train_time`` -> ``time/train``; ``lr`` stays ``lr``."""
    head, sep, tail = key.partition("_")
    if sep and tail == "time":
        return f"time/{head}"
    if sep and head in ("train", "val", "test"):
        return f"{head}/{tail}"
    return key


def scalars(record: dict) -> dict[str, float]:
    """The numeric values of an epoch's record under their tracker names (``epoch`` and ``step``
    are the x axis, not metrics; ``None`` and non-numbers are left out)."""
    out = {}
    for key, value in record.items():
        if key in ("epoch", "step") or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        out[metric_name(key)] = float(value)
    return out


def final_scalars(result) -> dict[str, float]:
    """A finished run's test metrics (``test/loss``, ``test/acc``) and timings (``time/total_s``, ...)."""
    if result is None:
        return {}
    out = scalars(dict(result.test or {}))
    for key, value in (result.timings or {}).items():
        if value is not None and not isinstance(value, bool) and isinstance(value, numbers.Real):
            out[f"time/{key}"] = float(value)
    return out
