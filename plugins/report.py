"""The printed report: the seven numbered stages of the Artifex example, through ``run.echo``.
Each epoch's and the test metrics are printed in the order of the run's task (``run.metrics``).

A plugin like any other: ``--disable jaxyard.plugins.report`` trains silently, and a plugin of
your own can print its own report instead.
"""

from __future__ import annotations

import time

from jaxyard import hookimpl
from jaxyard.core import metrics as M
from jaxyard.plugins.checkpointing import saves_checkpoints

RULE = "-" * 40


def _metrics(run) -> list[str]:
    """The run's metrics in its task's order (a run object without them: loss and accuracy)."""
    return list(M.of(getattr(run, "metrics", None)))


@hookimpl(wrapper=True)
def jaxyard_on_run_start(run):
    """Printed around the other plugins' run start, so the header comes first."""
    echo, cfg = run.echo, run.config.run
    echo("=" * 60)
    echo("jaxyard training run")
    echo("=" * 60)
    echo("\n1. Setting up configuration...")
    echo(f"  Run directory: {run.directory}")
    for kind in ("model", "optimizer", "scheduler", "loader", "checkpointer"):
        echo(f"  {kind.capitalize()}: {run.config.choices[kind].name}")
    echo(f"  Loggers: {run.components['loggers']}")
    if cfg.steps or cfg.eval_every:
        total = f"{cfg.steps} steps" if cfg.steps else f"{cfg.epochs} epochs"
        echo(f"  Steps: {total}, validating every {cfg.eval_every or 'epoch'}{' steps' if cfg.eval_every else ''}")
    else:
        echo(f"  Epochs: {cfg.epochs}")
    echo(f"  Batch size: {cfg.batch_size}")
    echo(f"  Seed: {cfg.seed}")
    echo(f"  Devices: {run.devices}")
    echo(f"\n2. Loading data ({run.config.loader.name})...")
    for split, label in (("train", "Train"), ("val", "Validation"), ("test", "Test")):
        size = run.sizes.get(split)
        echo(f"  {label} samples: {size if size is not None else 'streamed'}")
    if run.sizes.get("val_carved"):  # the loader gave no val split (core/train/carve.py)
        echo(f"  Validation: {run.sizes['val_carved']} examples carved from train (run.val_fraction = {cfg.val_fraction:g})")
    echo("\n3. Creating model...")
    model = run.config.model
    echo(f"  Model created: {model.name}, {run.num_params:,} parameters ({run.components['model'].partition(' (')[2][:-1]})")
    echo("\n4. Setting up optimizer and scheduler...")
    echo(f"  Optimizer: {run.components['optimizer']}")
    per_epoch = f"{run.steps_per_epoch} per epoch"
    if cfg.accumulate_steps > 1:
        per_epoch = f"{run.steps_per_epoch} batches per epoch, gradients of {cfg.accumulate_steps} per step"
    echo(
        f"  Scheduler: {run.config.scheduler.name}, peak lr {cfg.learning_rate:g}, warmup {run.warmup_steps} steps, "
        f"{run.total_steps} steps in all ({per_epoch})"
    )
    if cfg.ema_decay:
        echo(f"  Weight averaging: exponential moving average, decay {cfg.ema_decay:g}")
    if run.warmup_steps and run.warmup_steps >= run.total_steps:  # the warmup the run has (none for `constant`)
        echo(f"  Note: run.warmup_steps = {cfg.warmup_steps} covers the whole run of {run.total_steps} steps: the rate only rises")
    for step, cause in run.skipped_checkpoints:
        echo(f"  Skipped damaged checkpoint step {step}: {cause}")
    if run.restored_step is not None:
        what = "validation" if _stepped(run) else "epoch"
        echo(f"  Resuming after {what} {run.start_epoch} (checkpoint step {run.restored_step})")
    result = yield
    echo("\n5. Starting training...")
    echo(RULE)
    return result


@hookimpl(tryfirst=True)
def jaxyard_on_epoch_end(run, record):
    """The epoch's metrics, in the task's order: ``Train - Loss: 0.4321, Acc: 0.8750``."""
    echo, names = run.echo, _metrics(run)
    if _stepped(run):
        echo(f"Step {record['step']}/{run.total_steps} (validation {record['epoch']}/{run.epochs})")
    else:
        echo(f"Epoch {record['epoch']}/{run.epochs}")
    for head, prefix, suffix in (("Train", "train_", ""), ("Val", "val_", ""), ("EMA", "val_", M.EMA)):
        parts = [f"{M.label(m, short=True)}: {record[key]:.4f}" for m in names if (key := f"{prefix}{m}{suffix}") in record]
        if parts:
            echo(f"  {head:<5} - {', '.join(parts)}")


@hookimpl
def jaxyard_on_checkpoint_saved(run, step, record):
    if not saves_checkpoints(run):  # a save asked for by another plugin: nothing was saved
        return
    what = "validation" if _stepped(run) else "epoch"
    run.echo(f"  Checkpoint saved: step {step} ({what} {record['epoch']})")


@hookimpl(wrapper=True)
def jaxyard_on_run_end(run, result):
    """Stages 6 before the other plugins (the curves plugin prints stage 7), the last line after."""
    echo = run.echo
    echo(RULE)
    if result.stop_reason:
        echo(f"  Stopped after epoch {len(result.history)}: {result.stop_reason}")
    compiled = f" (compiling {result.timings['compile_s']:.2f} s)" if result.timings.get("compile_s") is not None else ""
    echo(f"  Training took {result.timings['train_s']:.2f} s{compiled}")
    echo("\n6. Evaluating on test set...")
    names = _metrics(run)
    for suffix, note in (("", ""), (M.EMA, " (averaged weights)")):
        for m in names:
            if (key := f"test_{m}{suffix}") in result.test:
                echo(f"  Test {M.label(m)}{note}: {result.test[key]:.4f}")
    out = yield
    echo(f"\nRun finished in {time.perf_counter() - run.started:.1f} s: {run.directory}")
    return out


@hookimpl
def jaxyard_on_run_failed(run, error):
    """Before the error line: what survived, and how to continue."""
    if run.history and run.last_checkpoint is not None:
        run.echo(RULE)
        run.echo(
            f"Run stopped after epoch {run.history[-1]['epoch']}; `jaxyard resume {run.directory}` continues "
            f"from checkpoint step {run.last_checkpoint}"
        )


def _stepped(run) -> bool:
    """Rounds counted in steps (run.steps or run.eval_every): lines say "validation", not "epoch"."""
    cfg = getattr(getattr(run, "config", None), "run", None)
    return bool(cfg is not None and (cfg.steps or cfg.eval_every))
