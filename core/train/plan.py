"""A run's plan: the batches it trains and where its rounds end (each in a validation), checked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxyard.core.errors import UsageError

if TYPE_CHECKING:
    from jaxyard.core.registry.config import RunConfig


def total_batches(config: RunConfig, steps_per_epoch: int) -> int:
    """The batches a run trains: run.steps, else run.epochs whole epochs."""
    return config.run.steps or steps_per_epoch * config.run.epochs


def round_ends(config: RunConfig, steps_per_epoch: int) -> tuple[int, ...]:
    """The batch count at the end of each round (index 0: 0): each epoch's end, or with run.steps /
    run.eval_every every run.eval_every batches (an epoch's worth when 0) and the last one."""
    run = config.run
    total = total_batches(config, steps_per_epoch)
    if not (run.steps or run.eval_every):
        return tuple(e * steps_per_epoch for e in range(run.epochs + 1))
    every = run.eval_every or steps_per_epoch
    return (0, *range(every, total, every), total)


def check_plan(config: RunConfig, steps_per_epoch: int) -> None:
    """Rounds end on whole optimizer updates (with run.accumulate_steps, a validation between the
    micro-batches of one update would see half an update, and two rounds would share a step), and
    the batches fit the step counter."""
    run = config.run
    k = run.accumulate_steps
    for key, value in (("eval_every", run.eval_every), ("steps", run.steps)):
        if k > 1 and value % k:
            raise UsageError(f"run.{key} = {value} is not a multiple of run.accumulate_steps = {k}: a round would end between the "
                             f"micro-batches of one update; use a multiple of {k}, e.g. {value + k - value % k}")
    if total_batches(config, steps_per_epoch) >= 2**31:
        raise UsageError(
            f"run.epochs = {run.epochs} of {steps_per_epoch} steps is {steps_per_epoch * run.epochs} steps, more than "
            f"the step counter holds (2**31 - 1); use at most {(2**31 - 1) // steps_per_epoch} epochs"
        ) if not run.steps else UsageError(f"run.steps = {run.steps} is more than the step counter holds (2**31 - 1)")
