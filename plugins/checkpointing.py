"""Checkpoint cadence: save every ``run.save_every`` epochs, at the last epoch, and when the run
is stopping. Which steps are kept (``run.keep_latest`` newest plus ``run.keep_best`` best by
``run.monitor``) is decided in core for every checkpointer."""

from __future__ import annotations

from jaxyard import hookimpl


@hookimpl(trylast=True)
def jaxyard_on_epoch_end(run, record):
    """Last, so that a stop asked for by any other plugin this epoch is saved too."""
    epoch = record["epoch"]
    if epoch % run.config.run.save_every == 0 or epoch == run.epochs or run.stop_reason:
        run.save_checkpoint()
