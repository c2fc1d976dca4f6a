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
from jaxyard.core.train.build import Built, check_streamed
from jaxyard.core.train.data import Dataset, StreamingDataset, as_batch, close_stream
from jaxyard.core.train.initialise import SHUFFLE_STREAM, seed_key

Progress = Callable[..., Any]  # click.progressbar's signature: (length=, label=) -> context manager


def unalias(state):
    """``state`` with no buffer appearing twice (a copy for each repeat).

    An optimizer may legally keep the parameters themselves in its state (optax.contrib.sam,
    a lookahead or an average initialised the obvious way); a compiled call that donates its
    state would then donate one buffer twice, which XLA refuses. Checking costs microseconds
    per call; the state is rebuilt (a copy for each repeat) only when there is one: rebuilding
    nnx's state costs about 0.3 ms, a streamed step's Python time.
    """
    def key(leaf):
        try:
            return leaf.unsafe_buffer_pointer()
        except Exception:  # not a single-device array: its identity will do
            return id(leaf)

    leaves = jax.tree.leaves(state)
    if len({key(leaf) for leaf in leaves}) == len(leaves):
        return state
    seen: set = set()

    def once(leaf):
        if key(leaf) in seen:
            return jnp.array(leaf, copy=True)
        seen.add(key(leaf))
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
            args: tuple = (self.key, np.int32(start))
            key: tuple = (b.group, "steps", end - start, shapes(data))
        else:
            args, key = (self.key, np.int32(epoch)), (b.group, "epoch", shapes(data))
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
            fn = steps.make_train_steps(*common, key[2], b.make_tx, b.layout, b.state, task=b.task_of, shuffle=run.shuffle,
                                        accumulate=run.accumulate_steps)
        else:
            fn = steps.make_train_epoch(*common, b.make_tx, b.layout, b.state, task=b.task_of, shuffle=run.shuffle,
                                        accumulate=run.accumulate_steps)
        compiled = compiling(b, lambda: fn.lower(b.state, b.inputs, as_batch(b.data.train), *args).compile())
        b.programs.compiles += 1
        return compiled

    def evaluate(self, split: str, *, ema: bool = False):
        """Sums over ``split`` with dropout off; ``ema``: with the averaged weights (run.ema_decay).
        Compiled ahead of time on first use, like an epoch, and counted in ``compile_seconds``."""
        b = self.b
        data, valid = as_batch(getattr(b.data, split)), b.valid[split]
        key = (b.group, "evaluate", ema, shapes((data, valid)))
        compiled = self.compiled.get(key)
        if compiled is None:
            t0 = time.perf_counter()
            fn = self.evaluate_fns[ema]
            compiled = self.compiled[key] = b.programs.get(key, lambda: compiling(b, lambda: fn.lower(b.state, b.inputs, data, valid).compile()))
            self.compile_seconds += time.perf_counter() - t0
        return compiled(b.state, b.inputs, data, valid)


def shapes(batch) -> tuple:
    """A batch pytree's structure, shapes and dtypes: what a compiled program over it is keyed on."""
    return str(jax.tree.structure(batch)), tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(batch))


class StreamingLoop:
    """Batches from the loader's Python iterator, padded to one shape, one jitted step each.

    Rounds of whole epochs; or, for a resumable stream (``StreamingDataset.resumable``) with
    run.steps / run.eval_every, rounds of that many batches drawn from one training stream that
    runs on across epochs, whose position (:meth:`position`) every checkpoint keeps."""

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
        # an accelerator's batches are copied to it as they are read (the step before still running); on the
        # CPU backend that copy costs more than it saves (measured: benchmarks/streamed.py), the step reads NumPy
        self.to_device = jax.local_devices()[0].platform != "cpu"
        # the training stream of a stepped run: its epoch, the batches drawn from it (checked), the
        # loader's own iterator under them, and a restored position not yet applied
        self.stream_epoch, self.fresh = 1, True
        self.stream: Any = None
        self.opened: Any = None
        self.pending: dict[str, Any] | None = None

    def checked(self, split: str, size: int, epoch: int = 0, *, state: Any = None):
        """The loader's batches of ``split``, each checked as in-memory splits are when loaded: at
        most ``size`` rows, shapes, the task's check of its targets, finite features (a bad batch,
        the first or a later one, names the loader and the batch, not a NaN loss); an exception
        from the loader's own code is one line naming it. ``state``: a position to continue from
        (a resumable stream's ``set_state``). The loader's iterator is closed when they end."""
        b = self.b
        assert isinstance(b.data, StreamingDataset)  # make_loop chose this loop for a StreamingDataset
        loader = b.config.loader
        of_epoch = f" of epoch {epoch}" if split == "train" else ""

        def which(number: int, first: str = "the first") -> str:
            return f"{first} {split} batch{of_epoch}" if number == 1 else f"{split} batch {number}{of_epoch}"

        batches, number = None, 1
        try:
            while True:
                try:
                    if batches is None:
                        batches = iter(b.data.batches(split, size, epoch))
                        if split == "train":
                            self.opened = batches
                        if state is not None:
                            batches.set_state(state)  # type: ignore[attr-defined]  # a resumable stream's (StreamingDataset)
                    batch = next(batches)
                except StopIteration:
                    return
                except JaxyardError:
                    raise
                except Exception as err:  # the loader's own code
                    doing = f"continuing epoch {epoch} from a checkpoint's position" if state is not None and number == 1 else \
                        f"giving {which(number, 'its first')}"
                    raise loader.failure(err, doing) from err
                check_streamed(b.config, b.task, b.context, b.data, batch, f"loader {loader.name!r}: {which(number)}", rows=size)
                yield batch
                number += 1
        finally:
            close_stream(batches)

    def train_epoch(self, epoch: int, progress: Progress | None = None):
        """Train round ``epoch``: an epoch, or (run.steps, run.eval_every) its batches of the stream.
        ``progress(length=steps, label=...)`` makes a per-batch bar (click.progressbar)."""
        b = self.b
        total = None
        if b.stepped:
            start, end = b.round_ends[epoch - 1], b.round_ends[epoch]
            batches, length, label = self._drawn(end - start), end - start, f"Steps {start + 1}-{end}"
        else:
            batches, length, label = self._epoch(epoch), b.steps_per_epoch, f"Epoch {epoch}"
        # the state's leaves ride through the epoch's steps (one device: nnx's state is not rebuilt in Python
        # at every step, a third of a small model's step), the state whole again when the epoch ends or stops
        leaves, treedef = jax.tree.flatten(b.state)
        flat = self._flat_step(treedef)
        step = flat if flat is not None else self.step_fn
        state = leaves if flat is not None else b.state
        try:
            with progress(length=length, label=label) if progress else nullcontext() as bar:
                ahead = next(batches, None)
                while ahead is not None:
                    batch, mask = ahead
                    if not self.traced:  # the first call traces and compiles: a component's bug surfaces here
                        state, sums = compiling(b, lambda batch=batch, mask=mask, state=state: step(unalias(state), b.inputs, batch, mask))
                        self.traced = True
                    else:
                        state, sums = step(unalias(state), b.inputs, batch, mask)
                    # double buffering: the step is dispatched, not finished (jax runs it asynchronously); the next
                    # batch is read, checked, padded and copied to the device meanwhile
                    ahead = next(batches, None)
                    total = sums if total is None else _add(total, sums)  # (over a job, sums live on every process's devices)
                    if bar is not None:
                        bar.update(1)
        finally:
            b.state = jax.tree.unflatten(treedef, state) if flat is not None else state
        return {} if total is None else total

    def _flat_step(self, treedef):
        """The training step over the leaves (a list) of a state of structure ``treedef``, on one
        device; None over a mesh."""
        b = self.b
        if b.layout.mesh is not None:
            return None
        step = self.step_fn

        def make():
            @partial(jax.jit, donate_argnums=0)
            def flat(leaves, inputs, batch, mask):
                state, sums = step(jax.tree.unflatten(treedef, leaves), inputs, batch, mask)
                return jax.tree.leaves(state), sums

            return flat

        return b.programs.get((b.group, "flat-step", str(treedef)), make)

    def _placed(self, batch):
        """A training batch padded to run.batch_size and placed (over a job: this process's rows),
        its copy to an accelerator started; None for a partial one that run.drop_last drops."""
        bs, layout = self.b.config.run.batch_size, self.b.layout
        batch, mask = pad(batch, bs)
        if self.b.config.run.drop_last and mask.sum() < bs:
            return None
        placed = layout.place_batch(batch, mask)
        if not self.to_device or layout.processes > 1:  # (over a job: global arrays already)
            return placed
        return jax.device_put(placed, layout.batch if layout.mesh is not None else None)  # asynchronous

    def _epoch(self, epoch: int):
        """Epoch ``epoch``'s training batches, placed."""
        for batch in self.checked("train", self.b.config.run.batch_size, epoch):
            placed = self._placed(batch)
            if placed is not None:
                yield placed

    def _drawn(self, count: int):
        """The next ``count`` training batches of the stream, placed, going on into the next epoch
        where one ends (a stepped run's round)."""
        taken = 0
        while taken < count:
            if self.stream is None:
                self.fresh = self.pending is None  # at an epoch's start (not a position mid-way): it owes a batch
                state: Any = None if self.pending is None else self.pending["state"]
                if self.pending is not None and self.pending.get("bytes"):
                    state = str(state).encode()  # bytes, as the loader gave them
                self.stream = self.checked("train", self.b.config.run.batch_size, self.stream_epoch, state=state)
                self.pending = None
            batch = next(self.stream, None)
            if batch is None:
                if self.fresh:
                    raise UsageError(f"loader {self.b.config.loader.name!r} gave no training batch in epoch {self.stream_epoch}")
                self.stream, self.opened = None, None
                self.stream_epoch += 1
                continue
            self.fresh = False
            placed = self._placed(batch)
            if placed is not None:
                taken += 1
                yield placed

    def position(self) -> dict[str, Any] | None:
        """Where the training stream of a stepped run stands (JSON: a checkpoint's meta keeps it);
        None for a run in whole epochs (its checkpoints are at an epoch's end)."""
        if not self.b.stepped:
            return None
        if self.pending is not None:  # a restored position, not used yet
            return dict(self.pending)
        if self.stream is None or self.opened is None:  # at the start of its epoch
            return {"epoch": self.stream_epoch, "state": None}
        loader = self.b.config.loader
        try:
            state = self.opened.get_state()  # type: ignore[attr-defined]  # a resumable stream's (StreamingDataset)
        except Exception as err:
            raise loader.failure(err, "reporting its position (get_state)") from err
        return {"epoch": self.stream_epoch, **stream_state(state, loader)}

    def restore_position(self, position: dict[str, Any]) -> None:
        """Continue the training stream from ``position`` (a checkpoint's, from :meth:`position`)."""
        self.close()
        self.stream_epoch = int(position["epoch"])
        self.pending = dict(position) if position.get("state") is not None else None

    def close(self) -> None:
        """Let go of the training stream (and the loader's iterator under it)."""
        if self.stream is not None:
            self.stream.close()
        self.stream, self.opened = None, None

    def evaluate(self, split: str, *, ema: bool = False):
        total = None
        bs, layout = self.b.config.run.eval_batch_size, self.b.layout
        size = layout.rows(bs) if layout.processes > 1 else bs  # over a job: rows every device gets equally many of
        assert isinstance(self.b.data, StreamingDataset)  # make_loop chose this loop for a StreamingDataset
        for batch in self.checked(split, bs):
            sums = self.eval_steps[ema](self.b.state, self.b.inputs, *layout.place_batch(*pad(batch, size)))
            total = sums if total is None else _add(total, sums)
        return {} if total is None else total


def stream_state(state: Any, loader) -> dict[str, Any]:
    """A resumable stream's ``get_state()`` as a checkpoint's meta holds it: ``{"state": value}``,
    the JSON value as JSON reads it back (tuples as lists), or UTF-8 bytes as ``{"state": text,
    "bytes": True}``; anything else is refused."""
    import json

    if isinstance(state, (bytes, bytearray)):
        try:
            return {"state": bytes(state).decode("utf-8"), "bytes": True}
        except UnicodeDecodeError:
            pass
    else:
        try:
            return {"state": json.loads(json.dumps(state, allow_nan=False))}
        except (TypeError, ValueError):
            pass
    raise PluginError(f"loader {loader.name!r} ({loader.entry.origin()}): its stream's get_state() gave a {type(state).__name__} "
                      f"that is not JSON (nor UTF-8 bytes); a checkpoint keeps the position as JSON, never pickled")


#: two sums pytrees added in one dispatch (eager, each of the task's sums would be one: ~40 us each a step)
_add = jax.jit(steps.add)


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
