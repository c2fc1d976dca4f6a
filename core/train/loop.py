"""Execution: epochs of a built run, in memory (one compiled scan per epoch) or streamed
(one compiled step per batch fed from Python). Both return the task's device-side sums (a dict:
loss sum, correct, count, ...), brought to the host once per epoch."""

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
from jaxyard.core.train.build import SHUFFLE_STREAM, Built, check_streamed, seed_key
from jaxyard.core.train.data import Dataset, StreamingDataset, as_batch

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
    """``fn()`` (a first call: tracing and compiling the step); an exception from the model's, the
    task's or the optimizer's code becomes one line naming them and where they come from.

    ``built``: anything with ``.config`` (a RunConfig), e.g. a Built or, for a shapes-only
    check, a namespace holding just the configuration."""
    try:
        return fn()
    except (JaxyardError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as err:
        if "RESOURCE_EXHAUSTED" in str(err):
            raise  # the engine names what did not fit
        model, optimizer, task = built.config.model, built.config.optimizer, built.config.task
        what = f"task {task.name!r} ({task.entry.origin()}), " if task is not None else ""
        raise PluginError(
            f"tracing the training step failed with model {model.name!r} ({model.entry.origin()}), {what}optimizer "
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
            ema: built.programs.get(
                (built.group, "evaluate", ema), partial(steps.make_evaluate, built.eval_graphdef, run.eval_batch_size, task=built.task_of, ema=ema)
            )
            for ema in (False, True)
        }
        self.compiled: dict[Any, Callable[..., Any]] = {}  # by program key: an epoch's, or a round's of N steps
        self.compile_seconds: float = 0.0

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        """Train round ``epoch``: an epoch, or (run.steps, run.eval_every) its batches of the run."""
        b = self.b
        assert isinstance(b.data, Dataset)  # make_loop chose this loop for a Dataset
        data = as_batch(b.data.train)
        if b.stepped:
            start, end = b.round_ends[epoch - 1], b.round_ends[epoch]
            args: tuple = (self.key, jnp.asarray(start, jnp.int32))
            key: tuple = (b.group, "steps", end - start, shapes(data))
        else:
            args, key = (jax.random.fold_in(self.key, epoch),), (b.group, "epoch", shapes(data))
        compiled = self.compiled.get(key)
        if compiled is None:
            t0 = time.perf_counter()
            compiled = self.compiled[key] = b.programs.get(key, lambda: self._compile(args, key))
            self.compile_seconds += time.perf_counter() - t0
        b.state, sums = compiled(unalias(b.state), b.inputs, data, *args)
        return sums

    def _compile(self, args, key):
        b, run = self.b, self.b.config.run
        common = (b.train_graphdef, b.sizes["train"], run.batch_size, run.drop_last)
        if b.stepped:
            fn = steps.make_train_steps(*common, key[2], b.make_tx, b.layout, b.state, task=b.task_of, shuffle=run.shuffle)
        else:
            fn = steps.make_train_epoch(*common, b.make_tx, b.layout, b.state, task=b.task_of, shuffle=run.shuffle)
        compiled = compiling(b, lambda: fn.lower(b.state, b.inputs, as_batch(b.data.train), *args).compile())
        b.programs.compiles += 1
        return compiled

    def evaluate(self, split: str, *, ema: bool = False):
        """Sums over ``split`` with dropout off; ``ema``: with the averaged weights (run.ema_decay)."""
        return self.evaluate_fns[ema](self.b.state, self.b.inputs, as_batch(getattr(self.b.data, split)), self.b.valid[split])


def shapes(batch) -> tuple:
    """A batch pytree's structure, shapes and dtypes: what a compiled program over it is keyed on."""
    return str(jax.tree.structure(batch)), tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(batch))


class StreamingLoop:
    """Batches from the loader's Python iterator, padded to one shape, one jitted step each."""

    compile_seconds = None  # compiling happens inside the first steps: not separable

    def __init__(self, built: Built):
        self.b = built
        self.step_fn = built.programs.get(
            (built.group, "step"), lambda: steps.make_train_step(built.train_graphdef, built.make_tx, built.layout, built.state, task=built.task_of)
        )
        self.eval_steps = {
            ema: built.programs.get((built.group, "eval_step", ema), partial(steps.make_eval_step, built.eval_graphdef, task=built.task_of, ema=ema))
            for ema in (False, True)
        }
        self.traced = False

    def checked(self, split: str, size: int, epoch: int = 0):
        """The loader's batches of ``split``, each checked as in-memory splits are when loaded: at
        most ``size`` rows, shapes, the task's check of its targets, finite features (a bad batch,
        the first or a later one, names the loader and the batch, not a NaN loss); an exception
        from the loader's own code is one line naming it."""
        b = self.b
        assert isinstance(b.data, StreamingDataset)  # make_loop chose this loop for a StreamingDataset
        loader = b.config.loader
        of_epoch = f" of epoch {epoch}" if split == "train" else ""

        def which(number: int, first: str = "the first") -> str:
            return f"{first} {split} batch{of_epoch}" if number == 1 else f"{split} batch {number}{of_epoch}"

        batches, number = None, 1
        while True:
            try:
                if batches is None:
                    batches = iter(b.data.batches(split, size, epoch))
                batch = next(batches)
            except StopIteration:
                return
            except JaxyardError:
                raise
            except Exception as err:  # the loader's own code
                raise loader.failure(err, f"giving {which(number, 'its first')}") from err
            check_streamed(b.config, b.task, b.context, b.data, batch, f"loader {loader.name!r}: {which(number)}", rows=size)
            yield batch
            number += 1

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        """``progress(length=steps, label=...)`` makes a per-batch bar (click.progressbar)."""
        b = self.b
        total = None
        bs = b.config.run.batch_size
        assert isinstance(b.data, StreamingDataset)  # make_loop chose this loop for a StreamingDataset
        with progress(length=b.steps_per_epoch, label=f"Epoch {epoch}") if progress else nullcontext() as bar:
            for batch in self.checked("train", bs, epoch):
                batch, mask = pad(batch, bs)
                if b.config.run.drop_last and mask.sum() < bs:
                    continue
                batch, mask = b.layout.place_batch(batch, mask)  # over a job: this process's rows
                if not self.traced:  # the first call traces and compiles: a component's bug surfaces here
                    b.state, sums = compiling(b, lambda batch=batch, mask=mask: self.step_fn(unalias(b.state), b.inputs, batch, mask))
                    self.traced = True
                else:
                    b.state, sums = self.step_fn(unalias(b.state), b.inputs, batch, mask)
                total = sums if total is None else steps.add(total, sums)  # (over a job, sums live on every process's devices)
                if bar is not None:
                    bar.update(1)
        return {} if total is None else total

    def evaluate(self, split: str, *, ema: bool = False):
        total = None
        bs, layout = self.b.config.run.eval_batch_size, self.b.layout
        size = layout.rows(bs) if layout.processes > 1 else bs  # over a job: rows every device gets equally many of
        assert isinstance(self.b.data, StreamingDataset)  # make_loop chose this loop for a StreamingDataset
        for batch in self.checked(split, bs):
            sums = self.eval_steps[ema](self.b.state, self.b.inputs, *layout.place_batch(*pad(batch, size)))
            total = sums if total is None else steps.add(total, sums)
        return {} if total is None else total


def pad(batch, size):
    """A streamed batch (a pytree of arrays) padded to ``size`` rows (one compiled shape), with its row mask."""
    batch = jax.tree.map(lambda a: _canonical(np.asarray(a)), batch)
    leaves = jax.tree.leaves(batch)
    n = len(leaves[0]) if leaves else 0
    if n > size or any(len(a) != n for a in leaves):
        raise UsageError(f"a streamed batch has arrays of {', '.join(str(len(a)) for a in leaves)} rows; expected at most {size} rows in each")
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    if n < size:
        batch = jax.tree.map(lambda a: np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]), batch)
    return batch, mask


def _canonical(a):
    """Float features as float32 and labels as int32 (jax's defaults), as the in-memory splits are."""
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int32, copy=False)
    return a


def summarize(built: Built, sums) -> dict[str, float]:
    """The task's metrics from a split's sums (device or host): one transfer, then host arithmetic.
    No sums (an epoch of no batch): every metric 0. A task whose summarize() fails or leaves a
    metric out is named in one line."""
    host = {k: float(v) for k, v in jax.device_get(sums).items()}
    if not host:
        return {name: 0.0 for name in built.task.metrics}
    task = built.config.task
    try:
        values = {name: float(value) for name, value in built.task.summarize(host).items()}
    except Exception as err:
        raise PluginError(f"task {task.name!r} ({task.entry.origin()}) failed summarizing {sorted(host)}: {one_line(err)}") from err
    missing = [name for name in built.task.metrics if name not in values]
    if missing:
        raise PluginError(f"task {task.name!r} ({task.entry.origin()}): summarize() gave no {', '.join(missing)} (its metrics)")
    return {name: values[name] for name in built.task.metrics}


def means(sums) -> tuple[float, float]:
    """(mean loss, accuracy) from a classification's sums (0.2's helper; :func:`summarize` reads any task's)."""
    if isinstance(sums, dict):
        count = max(float(sums["count"]), 1.0)
        return float(sums["loss"]) / count, float(sums.get("acc", 0.0)) / count
    loss_sum, correct, count = (float(s) for s in sums)
    return loss_sum / max(count, 1.0), correct / max(count, 1.0)
