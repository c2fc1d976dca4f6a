"""Checkpoint cadence: save every ``run.save_every`` epochs, at the last epoch, and when the run
is stopping. Which steps are kept (``run.keep_latest`` newest plus ``run.keep_best`` best by
``run.monitor``) is decided in core for every checkpointer."""

from __future__ import annotations

from jaxyard import hookimpl


@hookimpl(trylast=True)
def jaxyard_on_epoch_end(run, record):
    """Last, so that a stop asked for by any other plugin this epoch is saved too."""
    epoch = record["epoch"]
    if not saves_checkpoints(run):  # `--checkpointer none`: no state gathered, no "Checkpoint saved" line
        return
    if epoch % run.config.run.save_every == 0 or epoch == run.epochs or run.stop_reason:
        run.save_checkpoint()


def saves_checkpoints(run) -> bool:
    """Whether the run's checkpointer keeps anything: the built-in ``none`` saves nothing."""
    entry = getattr(getattr(getattr(run, "config", None), "checkpointer", None), "entry", None)
    return not (entry is not None and entry.source == "builtin" and entry.name == "none")
