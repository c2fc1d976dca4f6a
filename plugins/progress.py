"""A progress bar over epochs when the report goes to a terminal and the data is in memory (an
epoch is then one compiled call with nothing to report inside it). Streamed data has its own bar
per batch. The report's lines print above the bar."""

from __future__ import annotations

from jaxyard import hookimpl

_bars: dict[int, object] = {}  # id(run) -> rich Progress


def _finish(run) -> None:
    bar = _bars.pop(id(run), None)
    if bar is not None:
        bar.stop()


@hookimpl(trylast=True)
def jaxyard_on_run_start(run):
    if not run.interactive or run.streamed or run.start_epoch >= run.epochs:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("Epochs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        transient=True,
    )
    bar.add_task("epochs", total=run.epochs, completed=run.start_epoch)
    bar.start()
    _bars[id(run)] = bar


@hookimpl(trylast=True)
def jaxyard_on_epoch_end(run):
    bar = _bars.get(id(run))
    if bar is not None:
        bar.advance(bar.task_ids[0])
        if run.stop_reason or run.history[-1]["epoch"] >= run.epochs:
            _finish(run)


@hookimpl(tryfirst=True)
def jaxyard_on_run_end(run):
    _finish(run)


@hookimpl(tryfirst=True)
def jaxyard_on_run_failed(run):
    _finish(run)
