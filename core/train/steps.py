"""The compiled hot path: one epoch as a ``lax.scan`` with the shuffle inside, a per-batch step
for streaming data, and a masked evaluation. Every function returns sums (loss, correct,
count) that stay on the device until the epoch ends."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxyard.core.errors import UsageError
from jaxyard.core.train.averaging import use_ema


def split(model, optimizer):
    """``(graphdef, state)`` of a run's model and optimizer, by name: the state's paths start
    ``model.`` or ``optimizer.`` (what checkpoints call them), whatever else is added later."""
    return nnx.split({"model": model, "optimizer": optimizer})


def merged(graphdef, state):
    """``(model, optimizer)`` from what :func:`split` returned."""
    parts = nnx.merge(graphdef, state)
    return parts["model"], parts["optimizer"]


def _masked_loss(model, x, y, mask):
    logits = model(x)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    count = jnp.sum(mask)
    loss = jnp.sum(per_example * mask) / jnp.maximum(count, 1.0)
    return loss, jnp.stack([jnp.sum(per_example * mask), jnp.sum(correct * mask), count])


def _step(graphdef, make_tx, state, inputs, x, y, mask, batch=None):
    """One optimizer step on a (possibly padded) batch; padding rows carry mask 0.

    With ``make_tx``, the optimizer is rebuilt from ``inputs`` (traced hyperparameters) so that
    their values are arguments of the compiled program, not constants in it.
    """
    if batch is not None:  # on a mesh: the batch's rows split over the devices
        x, y, mask = (jax.lax.with_sharding_constraint(a, batch) for a in (x, y, mask))
    model, optimizer = merged(graphdef, state)
    if make_tx is not None:
        optimizer.tx = make_tx(inputs)
    grad_fn = nnx.value_and_grad(_masked_loss, has_aux=True)
    (_, sums), grads = grad_fn(model, x, y, mask)
    optimizer.update(model, grads)
    return nnx.state({"model": model, "optimizer": optimizer}), sums


def batch_plan(n: int, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """Steps per epoch and the padded length they cover."""
    steps = n // batch_size if drop_last else math.ceil(n / batch_size)
    if steps < 1:
        raise UsageError(f"{n} training examples make no full batch of run.batch_size = {batch_size} (run.drop_last is on)")
    return steps, steps * batch_size


def make_train_epoch(graphdef, n: int, batch_size: int, drop_last: bool, make_tx=None, layout=None, state=None):
    """``epoch(state, inputs, x, y, key) -> (state, sums)``: shuffle, batch and step, all compiled
    once (``inputs``: the traced hyperparameters ``make_tx`` builds the optimizer from; ``{}``: none).
    On a ``layout`` with a mesh, each batch is split over its devices and the state keeps the
    shardings ``state`` has."""
    steps, padded = batch_plan(n, batch_size, drop_last)
    mesh = layout is not None and layout.mesh is not None
    split = layout.batch if mesh else None
    jit = partial(jax.jit, donate_argnums=0)
    if mesh:
        jit = partial(jit, out_shardings=(layout.state_shardings(state), layout.replicated))

    @jit
    def epoch(state, inputs, x, y, key):
        order = jax.random.permutation(key, n)
        if padded > n:
            order = jnp.concatenate([order, jnp.zeros(padded - n, order.dtype)])
        else:
            order = order[:padded]
        mask = (jnp.arange(padded) < n).astype(jnp.float32)

        def body(state, batch):
            idx, m = batch
            return _step(graphdef, make_tx, state, inputs, x[idx], y[idx], m, split)

        state, sums = jax.lax.scan(body, state, (order.reshape(steps, batch_size), mask.reshape(steps, batch_size)))
        return state, jnp.sum(sums, axis=0)

    return epoch


def make_train_step(graphdef, make_tx=None, layout=None, state=None):
    """``step(state, inputs, x, y, mask) -> (state, sums)`` for batches fed from Python (padded to one shape)."""
    if layout is None or layout.mesh is None:
        return jax.jit(partial(_step, graphdef, make_tx), donate_argnums=0)
    step = partial(_step, graphdef, make_tx, batch=layout.batch)
    return jax.jit(step, donate_argnums=0, out_shardings=(layout.state_shardings(state), layout.replicated))


def make_evaluate(graphdef, batch_size: int, *, ema: bool = False):
    """``evaluate(state, x, y) -> sums`` with dropout off, in padded chunks of ``batch_size``
    (with ``ema``: the averaged weights of ``run.ema_decay``)."""

    @jax.jit
    def evaluate(state, x, y):
        model, optimizer = merged(graphdef, state)
        if ema:
            use_ema(model, optimizer)
        n = x.shape[0]
        chunk = min(batch_size, n)
        chunks = math.ceil(n / chunk)
        pad = chunks * chunk - n
        xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(chunks, chunk, *x.shape[1:])
        ys = jnp.pad(y, (0, pad), constant_values=-1).reshape(chunks, chunk)
        mask = ((jnp.arange(chunks * chunk).reshape(chunks, chunk) < n) & (ys >= 0)).astype(jnp.float32)  # -1: a job's padding row

        def body(total, batch):
            _, sums = _masked_loss(model, *batch)
            return total + sums, None

        total, _ = jax.lax.scan(body, jnp.zeros(3), (xs, ys, mask))
        return total

    return evaluate


def make_eval_step(graphdef, *, ema: bool = False):
    """Evaluation of one Python-fed batch (streaming data)."""

    @jax.jit
    def step(state, x, y, mask):
        model, optimizer = merged(graphdef, state)
        if ema:
            use_ema(model, optimizer)
        return _masked_loss(model, x, y, mask)[1]

    return step
