"""An example jaxyard plugin: one optimizer, one schedule and one model.

Installed, it is found through its entry point (``[project.entry-points.jaxyard]`` in
pyproject.toml); ``jaxyard plugins`` shows it and ``jaxyard list`` lists its components.
jax, flax and optax are imported inside the factories only, so listing stays fast.
"""

from __future__ import annotations

import math

import attrs
from attrs import validators as v

import jaxyard

# --- optimizer: signSGD ---------------------------------------------------------------------


@attrs.frozen
class SignSGDParams:
    weight_decay: float = jaxyard.param(0.0, "decoupled weight decay, scaled by the learning rate (0: off)", validator=v.ge(0.0))


def signsgd(p: SignSGDParams, *, learning_rate):
    """signSGD: step by the sign of each gradient entry, times the learning rate."""
    import optax

    return optax.chain(
        optax.scale_by_sign(),
        optax.add_decayed_weights(p.weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("signsgd", signsgd, params=SignSGDParams)


# --- scheduler: linear decay ----------------------------------------------------------------


@attrs.frozen
class LinearParams:
    end_fraction: float = jaxyard.param(0.0, "final rate as a fraction of the peak", validator=[v.ge(0.0), v.le(1.0)])


def linear(p: LinearParams, *, learning_rate, decay_steps):
    """Linear decay from the peak to end_fraction x peak over the rest of the run."""
    import optax

    return optax.linear_schedule(learning_rate, learning_rate * p.end_fraction, max(decay_steps, 1))


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    register("linear", linear, params=LinearParams)


# --- model: logistic regression -------------------------------------------------------------


def logreg(p, *, input_shape, num_classes, rngs):
    """Logistic regression: flatten, then one linear layer to the logits."""
    from flax import nnx

    class LogReg(nnx.Module):
        def __init__(self):
            self.linear = nnx.Linear(math.prod(input_shape), num_classes, rngs=rngs)

        def __call__(self, x):
            return self.linear(x.reshape(x.shape[0], -1))

    return LogReg()


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("logreg", logreg)
