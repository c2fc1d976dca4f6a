"""The figures jaxyard writes: a run's training curves, and a learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

from jaxyard.core.store.rundir import write_atomic

FIGSIZE = (15, 4)
DPI = 100


def plot_curves(history: list[dict], path: Path) -> Path:
    """Write the curves of ``history`` (metrics.jsonl records) as a PNG, atomically."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=FIGSIZE, dpi=DPI)  # fixed margins: half the time of a constrained layout
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
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
    return _save(fig, path)


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
