"""The figures jaxyard writes: a run's training curves (a panel per metric of its task), and a learning-rate schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


HELPER_TIMEOUT = 120  # seconds for the helper's figure; past them it is killed and the figure drawn here
DRAW_AHEAD_BYTES = 32 * 1024  # a request drawn ahead fits a pipe's buffer (64 KiB on Linux): writing it never waits


class _Helper:
    """A process of its own with matplotlib imported (``python -m jaxyard.core.experiments.plot``),
    waiting for figures: ``draw`` renders one in memory as soon as it is asked (it runs beside the
    caller's work), ``write`` puts the last one rendered on disk, atomically, and answers ``drawn``."""

    def __init__(self) -> None:
        # -P: not the working directory first on sys.path (a json.py there must not shadow the helper's imports)
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.drawing: str | None = None  # the request of the figure it renders or has rendered

    def draw(self, request: str) -> None:
        self.proc.stdin.write(f'{{"draw": {request}}}\n')  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        self.drawing = request

    def write(self, request: str) -> bool:
        """Put ``request``'s figure on disk (rendering it first unless it was drawn ahead); then the helper ends."""
        if self.drawing != request:
            self.draw(request)
        out, _ = self.proc.communicate('{"write": true}\n', timeout=HELPER_TIMEOUT)
        return self.proc.returncode == 0 and out.strip() == "drawn"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


_helper: _Helper | None = None  # started by prepare()


def prepare() -> None:
    """Start the plotting library now in a process of its own, so that this process's next
    :func:`plot_curves` draws there: matplotlib's import (~0.25 s on 2 cores) then overlaps this
    process's start (jax's), on a core it leaves idle, and :func:`draw_ahead` can render the figure
    while this process finishes. A program's choice (the CLI's ``run``), not the library's.
    Whatever goes wrong there, the figure is drawn here instead."""
    if _helper is None and "matplotlib.figure" not in sys.modules and (os.cpu_count() or 1) >= 2:
        _start_helper()


def _start_helper() -> None:
    global _helper
    try:
        _helper = _Helper()
    except OSError:
        return
    import atexit

    atexit.register(_dismiss)


def _dismiss() -> None:
    """At exit: a helper never asked to write has nothing to finish; it is ended, not waited for (a
    run that failed must not wait for its import)."""
    global _helper
    helper, _helper = _helper, None
    if helper is not None:
        helper.kill()


def _request(history: list[dict], path: Path, metrics) -> str:
    """One figure, as the helper reads it (TypeError: a record JSON cannot hold)."""
    metrics = dict(metrics) if isinstance(metrics, Mapping) else None if metrics is None else list(metrics)
    return json.dumps({"history": history, "path": str(Path(path).absolute()), "metrics": metrics})


def draw_ahead(history: list[dict], path: Path, metrics: Mapping[str, str] | Iterable[str] | None = None) -> None:
    """Have the prepared helper (if any) render the curves of ``history`` now, in memory: a run does
    it after its last epoch, and :func:`plot_curves` with the same arguments then only writes them."""
    global _helper
    if _helper is None:
        return
    try:
        request = _request(history, path, metrics)
        if len(request) < DRAW_AHEAD_BYTES:  # a longer one could block on the pipe: plot_curves sends it, with a timeout
            _helper.draw(request)
    except (OSError, ValueError, TypeError):
        _helper.kill()
        _helper = None


def _drawn_by_helper(history: list[dict], path: Path, metrics) -> bool:
    """Have the prepared helper write the curves (one figure: it ends after it); False if there is
    none, or it could not (the caller draws them, and meets the same error, if any, itself)."""
    global _helper
    helper, _helper = _helper, None
    if helper is None:
        return False
    try:
        return helper.write(_request(history, path, metrics))
    except (OSError, ValueError, TypeError, subprocess.TimeoutExpired):
        helper.kill()
        return False


def _serve() -> None:
    """The helper: import matplotlib, render a small figure to load its fonts, then read requests
    (one JSON line each): ``{"draw": FIGURE}`` renders FIGURE in memory, ``{"write": true}`` writes
    the last one to its path, prints ``drawn`` and ends. End of input: nothing is written."""
    import io

    from matplotlib.figure import Figure

    warm = Figure(figsize=(2, 2), dpi=DPI)
    ax = warm.subplots()
    ax.plot([1, 2], [1, 2], "o-", label="train")
    ax.set(title="warm", xlabel="epoch")
    ax.legend()
    warm.savefig(io.BytesIO(), format="png")
    figure: tuple[Path, bytes] | None = None
    for line in sys.stdin:
        message = json.loads(line)
        if "draw" in message:
            request = message["draw"]
            figure = Path(request["path"]), render_curves(request["history"], request["metrics"])
        elif message.get("write") and figure is not None:
            _write_png(*figure)
            print("drawn", flush=True)
            os._exit(0)  # the figure is on disk (renamed into place); matplotlib's teardown would only keep the caller waiting


def _write_png(path: Path, png: bytes) -> None:
    write_atomic(path, lambda f: f.write(png))


def plot_curves(history: list[dict], path: Path, metrics: Mapping[str, str] | Iterable[str] | None = None) -> Path:
    """Write the curves of ``history`` (metrics.jsonl records) as a PNG, atomically: one panel per
    metric (train and val; the weights' moving average dashed), then the learning rate. The panels
    are those of ``metrics`` (the task's, in order) that the records hold; without it, every
    ``train_NAME``/``val_NAME`` they hold. After :func:`prepare`, drawn by its helper process."""
    if _drawn_by_helper(history, path, metrics):
        return path
    return _save(_curves_figure(history, metrics), path)


def render_curves(history: list[dict], metrics: Mapping[str, str] | Iterable[str] | None = None) -> bytes:
    """:func:`plot_curves`'s PNG, as bytes."""
    import io

    buffer = io.BytesIO()
    _curves_figure(history, metrics).savefig(buffer, format="png")
    return buffer.getvalue()


def _curves_figure(history: list[dict], metrics):
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
    return fig


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


if __name__ == "__main__":
    _serve()
