"""Execution: epochs of a built run, in memory (one compiled scan per epoch) or streamed
(one compiled step per batch fed from Python). Both return device-side sums (loss sum,
correct, count), brought to the host once per epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxyard.core import steps
from jaxyard.core.build import SHUFFLE_STREAM, Built, seed_key
from jaxyard.core.data import Dataset
from jaxyard.core.errors import UsageError

Progress = Callable[..., Any]  # click.progressbar's signature: (length=, label=) -> context manager


def make_loop(built: Built) -> InMemoryLoop | StreamingLoop:
    return InMemoryLoop(built) if isinstance(built.data, Dataset) else StreamingLoop(built)


class InMemoryLoop:
    """The data on the device; an epoch is one compiled call, compiled ahead of time on first use."""

    def __init__(self, built: Built):
        run = built.config.run
        self.b = built
        self.key = seed_key(run.seed, SHUFFLE_STREAM)
        self.evaluate_fns = {
            ema: steps.make_evaluate(built.eval_graphdef, run.eval_batch_size, ema=ema) for ema in (False, True)
        }
        self.epoch_fn = steps.make_train_epoch(built.train_graphdef, len(built.data.train), run.batch_size, run.drop_last)
        self.compiled = None
        self.compile_seconds: float | None = 0.0

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        b = self.b
        x, y = b.data.train.x, b.data.train.y
        key = jax.random.fold_in(self.key, epoch)
        if self.compiled is None:
            t0 = time.perf_counter()
            self.compiled = self.epoch_fn.lower(b.state, x, y, key).compile()
            self.compile_seconds += time.perf_counter() - t0
        b.state, sums = self.compiled(b.state, x, y, key)
        return sums

    def evaluate(self, split: str, *, ema: bool = False):
        """Sums over ``split`` with dropout off; ``ema``: with the averaged weights (run.ema_decay)."""
        part = getattr(self.b.data, split)
        return self.evaluate_fns[ema](self.b.state, part.x, part.y)


class StreamingLoop:
    """Batches from the loader's Python iterator, padded to one shape, one jitted step each."""

    compile_seconds = None  # compiling happens inside the first steps: not separable

    def __init__(self, built: Built):
        self.b = built
        self.step_fn = steps.make_train_step(built.train_graphdef)
        self.eval_steps = {ema: steps.make_eval_step(built.eval_graphdef, ema=ema) for ema in (False, True)}

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        """``progress(length=steps, label=...)`` makes a per-batch bar (click.progressbar)."""
        b = self.b
        total = jnp.zeros(3)
        bs = b.config.run.batch_size
        with progress(length=b.steps_per_epoch, label=f"Epoch {epoch}") if progress else nullcontext() as bar:
            for xb, yb in b.data.batches("train", bs, epoch):
                xb, yb, mask = pad(xb, yb, bs)
                if b.config.run.drop_last and mask.sum() < bs:
                    continue
                b.state, sums = self.step_fn(b.state, xb, yb, mask)
                total = total + sums
                if bar is not None:
                    bar.update(1)
        return total

    def evaluate(self, split: str, *, ema: bool = False):
        total = jnp.zeros(3)
        bs = self.b.config.run.eval_batch_size
        for xb, yb in self.b.data.batches(split, bs, 0):
            total = total + self.eval_steps[ema](self.b.state, *pad(xb, yb, bs))
        return total


def pad(x, y, size):
    """A streamed batch padded to ``size`` rows (one compiled shape), with its mask."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    n = len(y)
    if n > size or len(x) != n:
        raise UsageError(f"a streamed batch has {len(x)} examples and {n} labels; expected at most {size} of each")
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    if n < size:
        x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(size - n, y.dtype)])
    return x, y, mask


def means(sums) -> tuple[float, float]:
    """(mean loss, accuracy) from host-side (loss sum, correct, count)."""
    loss_sum, correct, count = (float(s) for s in sums)
    return loss_sum / max(count, 1.0), correct / max(count, 1.0)
