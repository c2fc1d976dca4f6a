"""The compiled hot path: one epoch as a ``lax.scan`` with the shuffle inside, a per-batch step
for streaming data, and a masked evaluation. Every function returns the task's sums (a dict of
scalars: loss sum, correct, count, ...) that stay on the device until the epoch ends."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from jaxyard.core.errors import UsageError
from jaxyard.core.train.averaging import has_ema, update_count, use_ema


def split(model, optimizer):
    """``(graphdef, state)`` of a run's model and optimizer, by name: the state's paths start
    ``model.`` or ``optimizer.`` (what checkpoints call them), whatever else is added later."""
    return nnx.split({"model": model, "optimizer": optimizer})


def merged(graphdef, state):
    """``(model, optimizer)`` from what :func:`split` returned."""
    parts = nnx.merge(graphdef, state)
    return parts["model"], parts["optimizer"]


def in_precision(task, precision: str):
    """``task`` with its :meth:`~jaxyard.Task.loss` run in ``precision`` (run.precision): as it is
    for ``float32``; for ``bf16`` a :class:`MixedPrecision` view of it."""
    return task if precision == "float32" else MixedPrecision(task, jnp.bfloat16)


class MixedPrecision:
    """A task whose loss calls the model in ``dtype`` (bfloat16): for the call, the model's float32
    ``nnx.Param`` values are cast to ``dtype`` (not its batch statistics or random state), and the
    task is given the model as a :class:`_Cast`, which casts float inputs to ``dtype`` and float
    outputs back to float32. The parameters are restored afterwards, so the state and the optimizer
    stay float32, and the gradients reach the float32 parameters through the cast (float32 too).
    Everything else is the task's own (``getattr``)."""

    def __init__(self, task, dtype):
        self._task, self._dtype = task, dtype  # (private names: the task's own attributes pass through)

    def __getattr__(self, name):
        return getattr(self._task, name)

    def loss(self, model, batch, mask):
        params = nnx.state(model, nnx.Param)
        kept = jax.tree.map(lambda a: a, params)  # the float32 arrays themselves (update rewrites the variables)
        nnx.update(model, jax.tree.map(lambda a: a.astype(self._dtype) if a.dtype == jnp.float32 else a, params))
        try:
            return self._task.loss(_Cast(model, self._dtype), batch, mask)
        finally:
            nnx.update(model, kept)


class _Cast:
    """``model`` called with its float inputs in ``dtype`` and its ``dtype`` outputs as float32;
    its attributes (submodules, ``eval()``) are the model's own: a submodule called directly has
    its parameters in ``dtype`` and takes its inputs as given (float32 ones promote: float32 compute)."""

    def __init__(self, model, dtype):
        self._model, self._dtype = model, dtype

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        def inward(a):
            return a.astype(self._dtype) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) else a

        def outward(a):
            return a.astype(jnp.float32) if hasattr(a, "dtype") and a.dtype == self._dtype else a

        args, kwargs = jax.tree.map(inward, (args, kwargs))
        return jax.tree.map(outward, self._model(*args, **kwargs))


def _step(graphdef, make_tx, task, state, inputs, batch, mask, split=None, scale=None):
    """One optimizer step on a (possibly padded) batch pytree; padding rows carry mask 0.

    ``scale`` (gradient accumulation: :func:`micro_weights`) multiplies the gradient, so that the
    mean ``optax.MultiSteps`` takes of a group's micro-batches is the group's row-weighted mean.

    ``task(inputs)`` is the run's task (its traced parameters from ``inputs``). With ``make_tx``,
    the optimizer is rebuilt from ``inputs`` (traced hyperparameters) so that their values are
    arguments of the compiled program, not constants in it.
    """
    if split is not None:  # on a mesh: the batch's rows split over the devices
        batch, mask = jax.lax.with_sharding_constraint((batch, mask), split)
    model, optimizer = merged(graphdef, state)
    if make_tx is not None:
        optimizer.tx = make_tx(inputs)
    objective = task(inputs)
    grad_fn = nnx.value_and_grad(lambda model, batch, mask: objective.loss(model, batch, mask), has_aux=True)
    (_, sums), grads = grad_fn(model, batch, mask)
    if scale is not None:
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
    extra = {"ema_count": update_count(optimizer)} if has_ema(optimizer) else {}  # the average's debiasing counts updates
    optimizer.update(model, grads, **extra)
    return nnx.state({"model": model, "optimizer": optimizer}), sums


def _eval_sums(graphdef, task, ema, state, inputs, batch, mask):
    """The sums of one evaluation batch, the model merged here: inside the compiled loop's own
    trace, so layers that draw random numbers even in evaluation (``nnx.RNN``) may."""
    model, optimizer = merged(graphdef, state)
    if ema:
        use_ema(model, optimizer)
    return task(inputs).loss(model, batch, mask)[1]


def zeros_like_sums(fn, *args):
    """Zeros shaped like the sums ``fn(*args)`` returns (no computation: shapes only)."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))


def add(total, sums):
    """Two sums pytrees added (scan carries, devices, processes and epochs add alike)."""
    return jax.tree.map(jnp.add, total, sums)


def rows_of(batch) -> int:
    return jax.tree.leaves(batch)[0].shape[0]


def batch_plan(n: int, batch_size: int, drop_last: bool, accumulate: int = 1) -> tuple[int, int]:
    """Steps (batches) per epoch and the padded length they cover. With ``accumulate`` = k, the
    batches of k x ``batch_size`` rows that run.batch_size = k x batch_size would take, each as k
    consecutive batches (the last partial one padded to k whole batches, or dropped with ``drop_last``)."""
    group = batch_size * accumulate
    groups = n // group if drop_last else math.ceil(n / group)
    if groups < 1:
        what = f"run.batch_size = {batch_size}" + (f" x run.accumulate_steps = {accumulate}" if accumulate > 1 else "")
        raise UsageError(f"{n} training examples make no full batch of {what} (run.drop_last is on)")
    return groups * accumulate, groups * group


def micro_weights(n: int, batch_size: int, accumulate: int, first_row):
    """The gradient scale of the batch starting at row ``first_row`` of the epoch's order (traced):
    ``k * rows / group_rows``, its real rows against those of its group of ``accumulate`` = k,
    so that the mean of the group's k gradients (each a mean over its own rows) is the mean over
    the group's rows, as one batch of k x ``batch_size`` takes it. 1.0 exactly in a whole group."""
    group = batch_size * accumulate
    start = first_row - first_row % group
    rows = jnp.clip(n - first_row, 0, batch_size).astype(jnp.float32)
    group_rows = jnp.clip(n - start, 0, group).astype(jnp.float32)
    return accumulate * rows / jnp.maximum(group_rows, 1.0)


def make_train_epoch(graphdef, n: int, batch_size: int, drop_last: bool, make_tx=None, layout=None, state=None, *, task,
                     shuffle: bool = True, accumulate: int = 1):
    """``epoch(state, inputs, batch, key[, number]) -> (state, sums)``: shuffle (unless not
    ``shuffle``; with ``number``, by ``fold_in(key, number)``), batch and step, all compiled once
    (``inputs``: the traced hyperparameters ``make_tx`` and ``task`` are built from; ``{}``: none).
    With ``accumulate`` (run.accumulate_steps; the optimizer an ``optax.MultiSteps``), the batches
    are those of :func:`batch_plan`, each group's gradients weighted by :func:`micro_weights`.
    ``batch``: the training split as a pytree of arrays (rows first; rows past ``n`` are padding).
    On a ``layout`` with a mesh, each batch is split over its devices and the state keeps the
    shardings ``state`` has."""
    steps, padded = batch_plan(n, batch_size, drop_last, accumulate)
    mesh = layout is not None and layout.mesh is not None
    split = layout.batch if mesh else None
    jit = partial(jax.jit, donate_argnums=0)
    if mesh:
        jit = partial(jit, out_shardings=(layout.state_shardings(state), layout.replicated))
    scales = micro_weights(n, batch_size, accumulate, jnp.arange(steps) * batch_size) if accumulate > 1 else None

    @jit
    def epoch(state, inputs, data, key, number=None):
        if number is not None:  # the epoch's number: its key is folded in here, not by two op-by-op programs
            key = jax.random.fold_in(key, number)
        order = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
        if padded > n:
            order = jnp.concatenate([order, jnp.zeros(padded - n, order.dtype)])
        else:
            order = order[:padded]
        mask = (jnp.arange(padded) < n).astype(jnp.float32)

        def body(state, chunk):
            idx, m, scale = chunk
            return _step(graphdef, make_tx, task, state, inputs, jax.tree.map(lambda a: a[idx], data), m, split, scale)

        chunks = (order.reshape(steps, batch_size), mask.reshape(steps, batch_size), scales)
        state, sums = jax.lax.scan(body, state, chunks)
        return state, jax.tree.map(lambda a: jnp.sum(a, axis=0), sums)

    return epoch


def make_train_steps(graphdef, n: int, batch_size: int, drop_last: bool, count: int, make_tx=None, layout=None, state=None, *, task,
                     shuffle: bool = True, accumulate: int = 1):
    """``steps(state, inputs, batch, key, start) -> (state, sums)``: ``count`` optimizer steps from
    batch number ``start`` of the run (a traced scalar: one program serves every round of this
    length), compiled once. Batch ``b`` is batch ``b % steps_per_epoch`` of epoch ``b //
    steps_per_epoch`` in that epoch's order (the permutation of ``fold_in(key, epoch)``, as
    :func:`make_train_epoch` draws it; the loader's order without ``shuffle``), so a round may
    start and end anywhere in an epoch, and a resumed run draws what an uninterrupted one does.
    ``accumulate``: as :func:`make_train_epoch`'s."""
    per_epoch, padded = batch_plan(n, batch_size, drop_last, accumulate)
    spanned = count // per_epoch + 2  # the epochs ``count`` batches from anywhere can touch
    mesh = layout is not None and layout.mesh is not None
    split = layout.batch if mesh else None
    jit = partial(jax.jit, donate_argnums=0)
    if mesh:
        jit = partial(jit, out_shardings=(layout.state_shardings(state), layout.replicated))

    def order(key, epoch):
        rows = jax.random.permutation(jax.random.fold_in(key, epoch + 1), n) if shuffle else jnp.arange(n)  # epochs count from 1
        return jnp.concatenate([rows, jnp.zeros(padded - n, rows.dtype)]) if padded > n else rows[:padded]

    @jit
    def steps(state, inputs, data, key, start):
        first = start // per_epoch
        orders = jax.vmap(lambda e: order(key, e))(first + jnp.arange(spanned))

        def body(state, b):
            epoch, at = b // per_epoch - first, (b % per_epoch) * batch_size
            idx = jax.lax.dynamic_slice(orders[epoch], (at,), (batch_size,))
            mask = ((at + jnp.arange(batch_size)) < n).astype(jnp.float32)
            scale = micro_weights(n, batch_size, accumulate, at) if accumulate > 1 else None
            return _step(graphdef, make_tx, task, state, inputs, jax.tree.map(lambda a: a[idx], data), mask, split, scale)

        state, sums = jax.lax.scan(body, state, start + jnp.arange(count))
        return state, jax.tree.map(lambda a: jnp.sum(a, axis=0), sums)

    return steps


def make_train_step(graphdef, make_tx=None, layout=None, state=None, *, task):
    """``step(state, inputs, batch, mask) -> (state, sums)`` for batches fed from Python (padded to one shape)."""
    if layout is None or layout.mesh is None:
        return jax.jit(partial(_step, graphdef, make_tx, task), donate_argnums=0)
    step = partial(_step, graphdef, make_tx, task, split=layout.batch)
    return jax.jit(step, donate_argnums=0, out_shardings=(layout.state_shardings(state), layout.replicated))


def make_evaluate(graphdef, batch_size: int, *, task, ema: bool = False):
    """``evaluate(state, inputs, batch, valid) -> sums`` with dropout off, in padded chunks of
    ``batch_size`` (with ``ema``: the averaged weights of ``run.ema_decay``). ``valid``: 1.0 for
    each real row of ``batch``, 0.0 for a padding row (a job's split is padded to equal blocks)."""
    sums_of = partial(_eval_sums, graphdef, task, ema)

    @jax.jit
    def evaluate(state, inputs, batch, valid):
        n = valid.shape[0]
        chunk = min(batch_size, n)
        chunks = math.ceil(n / chunk)
        pad = chunks * chunk - n

        def chunked(a):
            return jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(chunks, chunk, *a.shape[1:])

        xs, mask = jax.tree.map(chunked, batch), chunked(valid)

        def body(carry, part):  # the state rides in the carry: the model is merged from this trace's values
            total, state = carry
            return (add(total, sums_of(state, inputs, *part)), state), None

        first = jax.tree.map(lambda a: a[0], (xs, mask))
        (total, _), _ = jax.lax.scan(body, (zeros_like_sums(sums_of, state, inputs, *first), state), (xs, mask))
        return total

    return evaluate


def make_eval_step(graphdef, *, task, ema: bool = False):
    """Evaluation of one Python-fed batch (streaming data): ``step(state, inputs, batch, mask) -> sums``."""
    return jax.jit(partial(_eval_sums, graphdef, task, ema))
