"""Early stopping: stop when ``run.monitor`` has not improved by ``run.min_delta`` for
``run.patience`` epochs (0: off). "Improved" is the one definition of better
(:class:`jaxyard.core.store.policy.Monitor`) that checkpoint retention and ``eval --checkpoint best``
use too, in the direction the run's task gives the metric. Worked out from ``run.history`` each
epoch, so a resumed run stops where an uninterrupted one would."""

from __future__ import annotations

from jaxyard import hookimpl
from jaxyard.core.store.policy import Monitor, run_monitor


def epochs_without_improvement(history, monitor: Monitor) -> tuple[float | None, int]:
    """The best value so far and the number of epochs since it was reached."""
    best, bad = None, 0
    for record in history:
        value = monitor.value(record)
        if monitor.improves(value, best):
            best, bad = value, 0
        else:
            bad += 1
    return best, bad


@hookimpl
def jaxyard_on_run_start(run):
    """A resumed run whose history already ends in a stop trains no further epoch."""
    if run.history:
        jaxyard_on_epoch_end(run)


@hookimpl
def jaxyard_on_epoch_end(run):
    settings = run.config.run
    if not settings.patience:
        return
    best, bad = epochs_without_improvement(run.history, run_monitor(run))
    if bad >= settings.patience:
        best_text = f"{best:.4f}" if best is not None else "none"
        run.stop(f"early stopping: {settings.monitor} did not improve for {settings.patience} epochs (best {best_text})")
