"""Weight averaging: an exponential moving average of the parameters, kept on the device.

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


def ema_of_params(decay: float) -> optax.GradientTransformation:
    """Leaves the updates alone; tracks ``ema = decay * ema + (1 - decay) * new_params``.

    Chained after the optimizer, so ``params + updates`` are the parameters after the step.
    The average starts from a copy of the initial parameters (its own buffers: the state must
    never alias the parameters, which the compiled step donates).
    """

    def init(params):
        return EmaParamsState(jax.tree.map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ema_of_params needs the parameters: call update(updates, state, params)")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, new)
        return updates, EmaParamsState(ema)

    return optax.GradientTransformation(init, update)


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
