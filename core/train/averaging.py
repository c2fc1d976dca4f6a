"""Weight averaging: an exponential moving average of the parameters, debiased, kept on the device.

The average is an optax transformation chained last (``run.ema_decay``), so it lives in the
optimizer state: it is updated inside the compiled epoch, saved in every checkpoint, restored
on resume and carried through gradient accumulation (updated once per real optimizer step).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class EmaParamsState(NamedTuple):
    """The running average of the parameters (same structure as the parameters)."""

    ema: Any


def ema_of_params(decay: float) -> optax.GradientTransformationExtraArgs:
    """Leaves the updates alone; keeps the debiased average of the parameters after each step.

    Chained after the optimizer, so ``params + updates`` are the parameters ``p_t`` after step
    ``t`` (``ema_count``, an extra argument: the optimizer updates so far, this one included).
    The state holds the debiased average itself, as optax's ``ema(debias=True)`` reads it::

        ema_t = sum_{i=1..t} (1 - decay) * decay**(t - i) * p_i / (1 - decay**t)

    kept by ``ema_t = b * ema_{t-1} + (1 - b) * p_t`` with ``b = decay * (1 - decay**(t-1)) /
    (1 - decay**t)`` (0 at the first step: the initial weights get no weight). Before the first
    step it is a copy of the initial parameters (its own buffers: the state must never alias the
    parameters, which the compiled step donates). Without ``ema_count`` (a caller of 0.3's
    signature) ``b = decay``, the biased average of jaxyard 0.3.
    """

    def init(params):
        return EmaParamsState(jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params=None, *, ema_count=None, **extra_args):
        if params is None:
            raise ValueError("ema_of_params needs the parameters: call update(updates, state, params)")
        new = optax.apply_updates(params, updates)
        keep = decay if ema_count is None else debiased_decay(decay, ema_count)
        ema = jax.tree.map(lambda e, p: (keep * e + (1.0 - keep) * p).astype(e.dtype), state.ema, new)
        return updates, EmaParamsState(ema)

    return optax.GradientTransformationExtraArgs(init, update)


def debiased_decay(decay: float, count):
    """The weight of the average so far at update ``count`` (1, 2, ...) that keeps it debiased:
    ``decay * (1 - decay**(count - 1)) / (1 - decay**count)`` (0 at the first update, then towards ``decay``)."""
    t = jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)
    d = jnp.asarray(decay, jnp.float32)
    return d * (1.0 - d ** (t - 1.0)) / (1.0 - d**t)


def update_count(optimizer):
    """The optimizer updates after the one being made (traced): with gradient accumulation
    (``optax.MultiSteps``) its update count, else the optimizer's step counter, each plus one."""
    state = optimizer.opt_state
    if isinstance(state, optax.MultiStepsState):
        return jnp.asarray(state.gradient_step[...], jnp.int32) + 1
    return jnp.asarray(optimizer.step[...], jnp.int32) + 1


def _ema_state(optimizer) -> EmaParamsState | None:
    found = jax.tree.leaves(optimizer.opt_state, is_leaf=lambda n: isinstance(n, EmaParamsState))
    found = [n for n in found if isinstance(n, EmaParamsState)]
    return found[0] if found else None


def has_ema(optimizer) -> bool:
    return _ema_state(optimizer) is not None


def use_ema(model, optimizer) -> None:
    """Put the averaged parameters into ``model`` (a merged copy: evaluation only)."""
    state = _ema_state(optimizer)
    if state is None:
        raise ValueError("this run keeps no average of its weights (run.ema_decay = 0)")
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(state.ema)))
