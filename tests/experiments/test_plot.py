"""The training curves PNG: a panel per metric of the run's task and the learning rate, from
records written by hand (nothing trains)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jaxyard.core.experiments import plot
from jaxyard.core.store.rundir import CURVES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REGRESSION = {"loss": "min", "mse": "min", "r2": "max"}


def history(metrics=("loss", "acc"), epochs=3, ema=False, lr=True):
    """Records as the engine writes them: train_NAME and val_NAME per metric (val_NAME_ema with ``ema``)."""
    out = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "step": 10 * epoch, **({"lr": 1e-3 / epoch} if lr else {})}
        for m in metrics:
            record[f"train_{m}"], record[f"val_{m}"] = 1.0 / epoch, 1.1 / epoch
            if ema:
                record[f"val_{m}_ema"] = 1.05 / epoch
        out.append({**record, "train_time": 0.1, "val_time": 0.01})
    return out


def size(path) -> tuple[int, int]:
    """The PNG's (width, height), read back by matplotlib."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.std() > 0.01  # something was drawn
    return image.shape[1], image.shape[0]


@pytest.fixture
def figure(monkeypatch):
    """The figure plot_curves draws (its PNG still written)."""
    made, save = {}, plot._save

    def capture(fig, path):
        made["fig"] = fig
        return save(fig, path)

    monkeypatch.setattr(plot, "_save", capture)
    return made


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_classification_curves_are_loss_accuracy_and_learning_rate(tmp_path, figure):
    assert size(plot.plot_curves(history(), tmp_path / "c.png")) == (1500, 400)  # 15 x 4 inches at 100 dpi, as in 0.2
    assert titles(figure["fig"]) == ["Loss", "Accuracy", "Learning rate (end of epoch)"]
    assert [line.get_label() for line in figure["fig"].axes[0].lines] == ["train", "val"]
    assert not list(tmp_path.glob("*.tmp"))


def test_one_panel_per_task_metric_in_the_tasks_order(tmp_path, figure):
    records = history(("loss", "mse", "r2"))
    assert size(plot.plot_curves(records, tmp_path / "r.png", metrics=REGRESSION)) == (2000, 400)
    assert titles(figure["fig"]) == ["Loss", "MSE", "R²", "Learning rate (end of epoch)"]
    plot.plot_curves(records, tmp_path / "o.png", metrics={"r2": "max", "loss": "min", "mae": "min"})  # mae: not recorded
    assert titles(figure["fig"]) == ["R²", "Loss", "Learning rate (end of epoch)"]
    assert plot.curve_metrics(records, {"r2": "max", "loss": "min", "mae": "min"}) == ["r2", "loss"]
    assert plot.curve_metrics(records) == ["loss", "mse", "r2"]  # no mapping: every train_/val_ pair, *_time left out


def test_records_with_only_a_loss_and_no_learning_rate(tmp_path, figure):
    """A task reporting only its loss (a VAE's), or a 0.2 record without lr: no KeyError."""
    assert size(plot.plot_curves(history(("loss",), lr=False), tmp_path / "l.png", metrics={"loss": "min"})) == (1000, 400)
    assert titles(figure["fig"]) == ["Loss", "Learning rate (end of epoch)"]


def test_averaged_weights_are_dashed_on_their_metrics_panel(tmp_path, figure):
    plot.plot_curves(history(("loss", "perplexity", "token_acc"), ema=True), tmp_path / "e.png",
                     metrics={"loss": "min", "perplexity": "min", "token_acc": "max"})
    fig = figure["fig"]
    assert titles(fig) == ["Loss", "Perplexity", "Token Accuracy", "Learning rate (end of epoch)"]
    lines = {line.get_label(): line.get_linestyle() for line in fig.axes[1].lines}
    assert lines == {"train": "-", "val": "-", "val (averaged)": "--"}


def test_many_metrics_wrap_onto_rows(tmp_path, figure):
    names = ("loss", "acc", "top5_acc", "mse", "mae")
    assert size(plot.plot_curves(history(names), tmp_path / "w.png")) == (2000, 800)  # 6 panels, 4 a row
    assert titles(figure["fig"]) == ["Loss", "Accuracy", "Top-5 Accuracy", "MSE", "MAE", "Learning rate (end of epoch)"]


def test_the_curves_plugin_plots_the_runs_task_metrics(tmp_path):
    from jaxyard.plugins import curves

    lines = []
    config = SimpleNamespace(run=SimpleNamespace(curves=True))
    run = SimpleNamespace(config=config, is_main_process=True, directory=tmp_path, echo=lines.append, metrics=REGRESSION)
    curves.jaxyard_on_run_end(run, SimpleNamespace(history=history(("loss", "mse", "r2"))))
    assert size(tmp_path / CURVES) == (2000, 400) and lines[-1] == f"  Training curves saved to {tmp_path / CURVES}"
    del run.metrics  # a run object of 0.2: loss and accuracy
    curves.jaxyard_on_run_end(run, SimpleNamespace(history=history()))
    assert size(tmp_path / CURVES) == (1500, 400)


# -- the CLI's plotting process (plot.prepare): a real process, as the point is that it is one --

def pixels(png: bytes):
    import io

    from matplotlib.image import imread

    return imread(io.BytesIO(png))


@pytest.fixture
def helper(monkeypatch):
    """A plotting process as the CLI's run starts one (prepare() itself skips a process that has
    imported matplotlib already, as this one has)."""
    monkeypatch.setattr(plot, "_helper", None)
    plot._start_helper()
    started = plot._helper
    assert started is not None
    yield started
    plot._dismiss()
    started.proc.wait(timeout=30)


def test_the_plotting_process_draws_ahead_and_writes_the_same_figure(tmp_path, helper):
    path = tmp_path / CURVES
    plot.draw_ahead(history(), path, {"loss": "min", "acc": "max"})
    assert not path.exists()  # drawn in memory only: a run that fails after its last epoch writes nothing
    assert plot.plot_curves(history(), path, {"loss": "min", "acc": "max"}) == path
    assert helper.proc.wait(timeout=30) == 0 and plot._helper is None  # one figure, then it ends
    assert (pixels(path.read_bytes()) == pixels(plot.render_curves(history(), {"loss": "min", "acc": "max"}))).all()
    assert size(path) == (1500, 400)


def test_a_history_that_changed_after_drawing_ahead_is_drawn_again(tmp_path, helper):
    path = tmp_path / CURVES
    plot.draw_ahead(history(epochs=3), path)
    plot.plot_curves(history(epochs=4), path)
    assert (pixels(path.read_bytes()) == pixels(plot.render_curves(history(epochs=4)))).all()


def test_a_plotting_process_that_died_leaves_the_figure_to_this_one(tmp_path, helper):
    helper.kill()
    path = plot.plot_curves(history(), tmp_path / CURVES)
    assert size(path) == (1500, 400) and plot._helper is None


def test_a_plotting_process_never_asked_to_write_ends_writing_nothing(tmp_path, helper):
    plot.draw_ahead(history(), tmp_path / CURVES)
    plot._dismiss()  # (it has nothing to finish: ended at once, not waited for)
    assert helper.proc.wait(timeout=30) is not None and not (tmp_path / CURVES).exists()


def test_a_history_too_long_for_the_pipe_is_not_drawn_ahead_but_written(tmp_path, helper):
    """Drawing ahead never waits on the helper's pipe: a long history is sent when it is written, with a timeout."""
    long = history(epochs=400)
    plot.draw_ahead(long, tmp_path / CURVES)
    assert helper.drawing is None
    plot.plot_curves(long, tmp_path / CURVES)
    assert (pixels((tmp_path / CURVES).read_bytes()) == pixels(plot.render_curves(long))).all()
