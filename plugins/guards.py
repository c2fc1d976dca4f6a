"""The NaN/inf guard: a run whose loss stops being finite ends with a message naming the last
good checkpoint, before the bad epoch is logged or saved."""

from __future__ import annotations

import math

from jaxyard import hookimpl
from jaxyard.core.errors import TrainingError
from jaxyard.core.store.rundir import CHECKPOINTS


@hookimpl(wrapper=True)
def jaxyard_on_epoch_end(run, record):
    """A wrapper: it runs before every other plugin sees the epoch, and stops them all."""
    train_loss, val_loss = record["train_loss"], record["val_loss"]
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        run.history.remove(record)  # not an epoch of the run: the history ends with the last good one
        step = run.last_checkpoint
        where = f"the last good checkpoint is step {step}" if step else "no checkpoint was saved"
        raise TrainingError(
            f"training diverged at epoch {record['epoch']}: train loss {train_loss}, val loss {val_loss}; {where} "
            f"in {run.directory / CHECKPOINTS}. Lower run.learning_rate or set run.clip_norm"
        )
    return (yield)
