"""The training-curves figure: loss and accuracy (train vs val) and the learning rate."""

from __future__ import annotations

import os
from pathlib import Path

FIGSIZE = (15, 4)
DPI = 100


def plot_curves(history: list[dict], path: Path) -> Path:
    """Write the curves of ``history`` (metrics.jsonl records) as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    for ax, metric, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        ax.plot(epochs, [r[f"train_{metric}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], "s-", label="val")
        ax.set(title=title, xlabel="epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    ax_lr.plot(epochs, [r["lr"] for r in history], "o-", color="tab:green")
    ax_lr.set(title="Learning rate (end of epoch)", xlabel="epoch")
    ax_lr.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
