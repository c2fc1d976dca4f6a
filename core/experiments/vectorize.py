"""Members of one static group trained as one vmapped program (``sweep --vectorize``).

Each member is an ordinary run (its own thread through :func:`jaxyard.core.train.engine.train`: its
run directory, events, loggers, checkpoints, early stopping, pruning and NaN guard). Only the
training epoch is shared: when every active member has asked for epoch ``e``, one compiled call
trains them all, stacked along a leading axis, and each member gets its own slice back. A member
that stops (pruned, early-stopped, diverged, failed) leaves; the others go on. Evaluation runs
per member on its slice, with the group's ordinary compiled evaluation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxyard.core.errors import UsageError
from jaxyard.core.train import steps
from jaxyard.core.train.build import Built
from jaxyard.core.train.data import Dataset, as_batch
from jaxyard.core.train.initialise import SHUFFLE_STREAM, seed_key
from jaxyard.core.train.loop import InMemoryLoop, compiling, shapes, unalias


class VectorGroup:
    """``size`` members training in lockstep; ``member(i)`` is the ``make_loop`` of member ``i``."""

    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.builts: dict[int, Built] = {}
        self.active = set(range(size))  # members not yet gone
        self.asked: dict[int, int] = {}  # member -> the epoch it waits for
        self.results: dict[int, tuple] = {}
        self.generation = 0
        self.stacked = None  # the members' states, stacked (built on the first epoch)
        self.order: list[int] = []
        self.compiled: Callable[..., Any] | None = None
        self.compile_seconds = 0.0
        self.error: BaseException | None = None

    def member(self, i: int):
        """``make_loop(built)`` for member ``i``: an in-memory loop whose epochs are shared."""

        def make_loop(built: Built):
            if not isinstance(built.data, Dataset):
                raise UsageError("--vectorize on needs an in-memory loader; streamed batches are trained one run at a time")
            if built.stepped:
                raise UsageError("--vectorize on trains whole epochs; runs of run.steps or run.eval_every train one at a time "
                                 "(--vectorize off)")
            with self.cond:
                self.builts[i] = built
            return MemberLoop(self, i, built)

        return make_loop

    def leave(self, i: int) -> None:
        """Member ``i`` is done (finished, stopped or failed): the others no longer wait for it."""
        with self.cond:
            self.active.discard(i)
            self.asked.pop(i, None)
            self._maybe_step()
            self.cond.notify_all()

    def train(self, i: int, epoch: int):
        with self.cond:
            self.asked[i] = epoch
            generation = self.generation
            self._maybe_step()
            while self.generation == generation and self.error is None:
                self.cond.wait()
            if self.error is not None and i not in self.results:
                raise self.error
            return self.results.pop(i)

    def _maybe_step(self) -> None:
        """When every active member has asked (and each has built), train them all, once."""
        if not self.asked or set(self.asked) != self.active or not self.active <= set(self.builts):
            return
        try:
            self._step()
        except BaseException as err:  # every waiting member fails with it
            self.error = err
        self.asked.clear()
        self.generation += 1
        self.cond.notify_all()

    def _step(self) -> None:
        if self.stacked is None:
            self.order = sorted(self.builts)
            self.stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(unalias(self.builts[j].state) for j in self.order))
            self.inputs = jax.tree.map(lambda *xs: jnp.stack(xs), *(self.builts[j].inputs for j in self.order))
            self.base_keys = [seed_key(self.builts[j].config.run.seed, SHUFFLE_STREAM) for j in self.order]
            members = [self.builts[j] for j in self.order]
            self.shared = same_data(members)  # else each member's own arrays, stacked
            trains = [as_batch(_data(b).train) for b in members]
            self.data = trains[0] if self.shared else jax.tree.map(lambda *xs: jnp.stack(xs), *trains)
        first = self.builts[self.order[0]]
        epoch = next(iter(self.asked.values()))
        keys = jnp.stack([jax.random.fold_in(k, epoch) for k in self.base_keys])
        if self.compiled is None:
            t0 = time.perf_counter()
            key = (first.group, "vector-epoch", len(self.order), self.shared, shapes(self.data))
            self.compiled = first.programs.get(key, lambda: self._compile(first, keys))
            self.compile_seconds = time.perf_counter() - t0
        self.stacked, sums = self.compiled(self.stacked, self.inputs, self.data, keys)
        for row, j in enumerate(self.order):
            if j in self.asked:
                self.builts[j].state = jax.tree.map(lambda a, row=row: a[row], self.stacked)
                self.results[j] = jax.tree.map(lambda a, row=row: a[row], sums)

    def _compile(self, first: Built, keys):
        run = first.config.run
        data = None if self.shared else 0
        rows = int(first.sizes["train"] or 0)
        epoch = steps.make_train_epoch(first.train_graphdef, rows, run.batch_size, run.drop_last, first.make_tx, task=first.task_of,
                                       shuffle=run.shuffle, accumulate=run.accumulate_steps)
        vectorized = jax.jit(jax.vmap(epoch, in_axes=(0, 0, data, 0)), donate_argnums=0)
        compiled = compiling(first, lambda: vectorized.lower(self.stacked, self.inputs, self.data, keys).compile())
        first.programs.compiles += 1
        return compiled


class MemberLoop(InMemoryLoop):
    """One member's loop: its training epochs go through the group; evaluation is its own."""

    def __init__(self, group: VectorGroup, i: int, built: Built):
        super().__init__(built)
        self.group, self.i = group, i

    @property
    def compile_seconds(self):  # the shared program's
        return self.group.compile_seconds

    @compile_seconds.setter
    def compile_seconds(self, value):
        pass

    def train_epoch(self, epoch: int, progress=None):
        return self.group.train(self.i, epoch)


def same_data(builts: list[Built]) -> bool:
    """The members train on the same arrays (the group shares one copy on the device)."""
    first = jax.tree.leaves(as_batch(_data(builts[0]).train))

    def same(b: Built) -> bool:
        mine = jax.tree.leaves(as_batch(_data(b).train))
        return len(mine) == len(first) and all(bool(jnp.array_equal(a, f)) for a, f in zip(mine, first, strict=True))

    return all(same(b) for b in builts[1:])


def _data(built: Built) -> Dataset:
    """A member's data: make_loop admits only members with in-memory (Dataset) data."""
    assert isinstance(built.data, Dataset)
    return built.data

