"""The figures jaxyard writes: a run's training curves (a panel per metric of its task), and a learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from jaxyard.core.metrics import EMA, LOSS, label
from jaxyard.core.store.rundir import write_atomic

PANEL = (5, 4)  # inches per panel: three panels (loss, accuracy, learning rate) are 15 x 4
COLUMNS = 4  # panels per row at most
DPI = 100
NOT_METRICS = {"time"}  # train_time / val_time: seconds, not a metric


def curve_metrics(history: list[dict], metrics: Mapping[str, str] | Iterable[str] | None = None) -> list[str]:
    """The base metrics ``history`` records for train or val, in the order of ``metrics`` (the
    task's, e.g. ``{"loss": "min", "acc": "max"}``); without it, the loss first and the others as
    the records list them (the engine writes them in the task's order)."""
    found = list(dict.fromkeys(
        key.partition("_")[2].removesuffix(EMA) for r in history for key in r if key.startswith(("train_", "val_"))
    ))
    found = [m for m in found if m and m not in NOT_METRICS]
    if metrics is not None:
        return [m for m in metrics if m in found]
    return sorted(found, key=lambda m: m != LOSS)  # stable: the loss first, the rest in record order


def plot_curves(history: list[dict], path: Path, metrics: Mapping[str, str] | Iterable[str] | None = None) -> Path:
    """Write the curves of ``history`` (metrics.jsonl records) as a PNG, atomically: one panel per
    metric (train and val; the weights' moving average dashed), then the learning rate. The panels
    are those of ``metrics`` (the task's, in order) that the records hold; without it, every
    ``train_NAME``/``val_NAME`` they hold."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = curve_metrics(history, metrics)
    panels = len(names) + 1
    cols = min(COLUMNS, panels)
    rows = -(-panels // cols)
    width, height = PANEL[0] * cols, PANEL[1] * rows
    fig = Figure(figsize=(width, height), dpi=DPI)  # fixed margins: half the time of a constrained layout
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.3 / width, bottom=0.52 / height, top=1 - 0.4 / height, wspace=0.25, hspace=0.45)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for key, style, line_label in ((f"train_{name}", "o-", "train"), (f"val_{name}", "s-", "val"),
                                       (f"train_{name}{EMA}", "o--", "train (averaged)"), (f"val_{name}{EMA}", "s--", "val (averaged)")):
            epochs, values = _series(history, key)
            if values:
                ax.plot(epochs, values, style, label=line_label)
        ax.set(title=label(name), xlabel="epoch")
        if ax.lines:
            ax.legend()
    ax_lr = axes[len(names)]
    ax_lr.plot(*_series(history, "lr"), "o-", color="tab:green")
    ax_lr.set(title="Learning rate (end of epoch)", xlabel="epoch")
    for ax in axes[:panels]:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[panels:]:
        ax.set_visible(False)
    return _save(fig, path)


def _series(history: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) of the records holding a number under ``key``."""
    points = [(r.get("epoch"), r[key]) for r in history if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [e for e, _ in points], [v for _, v in points]


def plot_schedule(rates, path: Path, *, title: str = "") -> Path:
    """Write the learning rate at every step as a PNG, atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot(range(len(rates)), rates, color="tab:green")
    ax.set(title=f"Learning rate: {title}".rstrip(": "), xlabel="step", ylabel="learning rate")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Render through a temporary file, then rename: a killed process never leaves half a PNG."""
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    return path
