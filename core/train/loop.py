"""Execution: epochs of a built run, in memory (one compiled scan per epoch) or streamed
(one compiled step per batch fed from Python). Both return device-side sums (loss sum,
correct, count), brought to the host once per epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxyard.core.errors import JaxyardError, PluginError, UsageError, one_line
from jaxyard.core.train import steps
from jaxyard.core.train.build import SHUFFLE_STREAM, Built, seed_key
from jaxyard.core.train.data import Dataset, StreamingDataset

Progress = Callable[..., Any]  # click.progressbar's signature: (length=, label=) -> context manager


def unalias(state):
    """``state`` with no buffer appearing twice (a copy for each repeat).

    An optimizer may legally keep the parameters themselves in its state (optax.contrib.sam,
    a lookahead or an average initialised the obvious way); a compiled call that donates its
    state would then donate one buffer twice, which XLA refuses. Checking costs microseconds
    per call; copying happens only for the repeats.
    """
    seen: set = set()

    def once(leaf):
        try:
            key = leaf.unsafe_buffer_pointer()
        except Exception:  # not a single-device array: its identity will do
            key = id(leaf)
        if key in seen:
            return jnp.array(leaf, copy=True)
        seen.add(key)
        return leaf

    return jax.tree.map(once, state)


def compiling(built: Any, fn):
    """``fn()`` (a first call: tracing and compiling the step); an exception from the model's or
    the optimizer's code becomes one line naming both and where they come from.

    ``built``: anything with ``.config`` (a RunConfig), e.g. a Built or, for a shapes-only
    check, a namespace holding just the configuration."""
    try:
        return fn()
    except (JaxyardError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:
        if "RESOURCE_EXHAUSTED" in str(err):
            raise  # the engine names what did not fit
        model, optimizer = built.config.model, built.config.optimizer
        raise PluginError(
            f"tracing the training step failed with model {model.name!r} ({model.entry.origin()}) and optimizer "
            f"{optimizer.name!r} ({optimizer.entry.origin()}): {one_line(err)}"
        ) from err


def make_loop(built: Built) -> InMemoryLoop | StreamingLoop:
    return InMemoryLoop(built) if isinstance(built.data, Dataset) else StreamingLoop(built)


class InMemoryLoop:
    """The data on the device; an epoch is one compiled call, compiled ahead of time on first use."""

    def __init__(self, built: Built):
        run = built.config.run
        self.b = built
        self.key = seed_key(run.seed, SHUFFLE_STREAM)
        self.evaluate_fns = {
            ema: built.programs.get((built.group, "evaluate", ema), partial(steps.make_evaluate, built.eval_graphdef, run.eval_batch_size, ema=ema))
            for ema in (False, True)
        }
        self.compiled: Callable[..., Any] | None = None
        self.compile_seconds: float = 0.0

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        b = self.b
        assert isinstance(b.data, Dataset)  # make_loop chose this loop for a Dataset
        x, y = b.data.train.x, b.data.train.y
        key = jax.random.fold_in(self.key, epoch)
        if self.compiled is None:
            t0 = time.perf_counter()
            self.compiled = b.programs.get((b.group, "epoch", x.shape, x.dtype, y.shape, y.dtype), self._compile)
            self.compile_seconds += time.perf_counter() - t0
        b.state, sums = self.compiled(unalias(b.state), b.inputs, x, y, key)
        return sums

    def _compile(self):
        b, run = self.b, self.b.config.run
        x, y = b.data.train.x, b.data.train.y
        fn = steps.make_train_epoch(b.train_graphdef, b.sizes["train"], run.batch_size, run.drop_last, b.make_tx, b.layout, b.state)
        compiled = compiling(b, lambda: fn.lower(b.state, b.inputs, x, y, jax.random.fold_in(self.key, 0)).compile())
        b.programs.compiles += 1
        return compiled

    def evaluate(self, split: str, *, ema: bool = False):
        """Sums over ``split`` with dropout off; ``ema``: with the averaged weights (run.ema_decay)."""
        part = getattr(self.b.data, split)
        return self.evaluate_fns[ema](self.b.state, part.x, part.y)


class StreamingLoop:
    """Batches from the loader's Python iterator, padded to one shape, one jitted step each."""

    compile_seconds = None  # compiling happens inside the first steps: not separable

    def __init__(self, built: Built):
        self.b = built
        self.step_fn = built.programs.get(
            (built.group, "step"), lambda: steps.make_train_step(built.train_graphdef, built.make_tx, built.layout, built.state)
        )
        self.eval_steps = {
            ema: built.programs.get((built.group, "eval_step", ema), partial(steps.make_eval_step, built.eval_graphdef, ema=ema))
            for ema in (False, True)
        }
        self.traced = False
        self.seen: set[str] = set()  # splits whose first batch was checked

    def checked(self, split: str, batches):
        """The batches, the first of each split checked as in-memory splits are when loaded:
        shape, label dtype and range, finite features (a bad one names the loader, not a NaN loss)."""
        for xb, yb in batches:
            if split not in self.seen:
                check_batch(self.b, split, xb, yb)
                self.seen.add(split)
            yield xb, yb

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        """``progress(length=steps, label=...)`` makes a per-batch bar (click.progressbar)."""
        b = self.b
        total = None
        bs = b.config.run.batch_size
        assert isinstance(b.data, StreamingDataset)  # make_loop chose this loop for a StreamingDataset
        with progress(length=b.steps_per_epoch, label=f"Epoch {epoch}") if progress else nullcontext() as bar:
            for xb, yb in self.checked("train", b.data.batches("train", bs, epoch)):
                xb, yb, mask = pad(xb, yb, bs)
                if b.config.run.drop_last and mask.sum() < bs:
                    continue
                xb, yb, mask = b.layout.place_batch(xb, yb, mask)  # over a job: this process's rows
                if not self.traced:  # the first call traces and compiles: a component's bug surfaces here
                    b.state, sums = compiling(b, lambda xb=xb, yb=yb, mask=mask: self.step_fn(unalias(b.state), b.inputs, xb, yb, mask))
                    self.traced = True
                else:
                    b.state, sums = self.step_fn(unalias(b.state), b.inputs, xb, yb, mask)
                total = sums if total is None else total + sums  # (over a job, sums live on every process's devices)
                if bar is not None:
                    bar.update(1)
        return jnp.zeros(3) if total is None else total

    def evaluate(self, split: str, *, ema: bool = False):
        total = None
        bs, layout = self.b.config.run.eval_batch_size, self.b.layout
        size = layout.rows(bs) if layout.processes > 1 else bs  # over a job: rows every device gets equally many of
        assert isinstance(self.b.data, StreamingDataset)  # make_loop chose this loop for a StreamingDataset
        for xb, yb in self.checked(split, self.b.data.batches(split, bs, 0)):
            sums = self.eval_steps[ema](self.b.state, *layout.place_batch(*pad(xb, yb, size)))
            total = sums if total is None else total + sums
        return jnp.zeros(3) if total is None else total


def check_batch(built: Built, split: str, x, y) -> None:
    name, data = built.config.loader.name, built.data
    x, y = np.asarray(x), np.asarray(y)
    where = f"loader {name!r}: the first {split} batch"
    if tuple(x.shape[1:]) != tuple(data.input_shape):
        raise UsageError(f"{where} has examples of shape {tuple(x.shape[1:])}; the loader declares input_shape {tuple(data.input_shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise UsageError(f"{where} has {len(x)} examples and labels of shape {y.shape}; expected one label per example")
    if not np.issubdtype(y.dtype, np.integer):
        raise UsageError(f"{where} has labels of dtype {y.dtype}; labels must be integers")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
        raise UsageError(f"{where} has labels {int(y.min())}..{int(y.max())}, outside 0..{data.num_classes - 1} (num_classes)")
    finite = np.isfinite(x) if np.issubdtype(x.dtype, np.floating) else np.ones(x.shape, bool)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise UsageError(f"{where}: example {row} has a non-finite feature ({x[row][~finite[row]].flat[0]})")


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
