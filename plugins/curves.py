"""The training curves PNG (a panel per metric of the run's task, and the learning rate per
epoch), written at the end of a run."""

from __future__ import annotations

from jaxyard import hookimpl
from jaxyard.core.store.rundir import CURVES


@hookimpl
def jaxyard_on_epoch_end(run, record):
    """After the last epoch, the CLI's plotting process (if any) renders the curves while the run
    saves its last checkpoint and evaluates the test split; on_run_end then only writes them."""
    if record.get("epoch") == run.epochs and run.config.run.curves and run.is_main_process:
        from jaxyard.core.experiments.plot import draw_ahead

        draw_ahead(run.history, run.directory / CURVES, metrics=getattr(run, "metrics", None))


@hookimpl
def jaxyard_on_run_end(run, result):
    if not result.history or not run.config.run.curves or not run.is_main_process:  # one process of a job writes
        return
    from jaxyard.core.experiments.plot import plot_curves

    run.echo("\n7. Plotting training curves...")
    png = plot_curves(result.history, run.directory / CURVES, metrics=getattr(run, "metrics", None))
    run.echo(f"  Training curves saved to {png}")
