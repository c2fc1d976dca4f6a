"""Built-in learning-rate schedules. The engine puts the run's linear warmup in front of each but
`constant`."""

from __future__ import annotations

import attrs
from attrs import validators as v

from jaxyard import hookimpl, param


def constant(p, *, learning_rate, decay_steps):
    """The peak learning rate at every step: no warmup (run.warmup_steps does not apply)."""
    import optax

    return optax.constant_schedule(learning_rate)


constant.warmup = False  # type: ignore[attr-defined]  # the engine puts no warmup in front (see core/registry/hookspecs.py)


def warmup(p, *, learning_rate, decay_steps):
    """Linear warmup over run.warmup_steps, then the peak rate held."""
    import optax

    return optax.constant_schedule(learning_rate)


@attrs.frozen
class CosineParams:
    alpha: float = param(0.0, "final rate as a fraction of the peak", validator=[v.ge(0.0), v.le(1.0)], traced=True)


def cosine(p: CosineParams, *, learning_rate, decay_steps):
    """Cosine decay from the peak to alpha x peak over the rest of the run."""
    import optax

    return optax.cosine_decay_schedule(learning_rate, decay_steps=decay_steps, alpha=p.alpha)


@attrs.frozen
class ExponentialParams:
    decay_rate: float = param(0.96, "factor applied every transition_steps", validator=[v.gt(0.0), v.le(1.0)])
    transition_steps: int = param(100, "steps over which the rate is multiplied by decay_rate", validator=v.ge(1))
    staircase: bool = param(False, "decay in discrete steps instead of continuously")
    end_value: float = param(0.0, "lower bound on the rate (0: none)", validator=v.ge(0.0))


def exponential(p: ExponentialParams, *, learning_rate, decay_steps):
    """Exponential decay: peak x decay_rate ** (step / transition_steps)."""
    import optax

    return optax.exponential_decay(
        learning_rate,
        transition_steps=p.transition_steps,
        decay_rate=p.decay_rate,
        staircase=p.staircase,
        end_value=p.end_value or None,
    )


@hookimpl
def jaxyard_register_schedulers(register):
    register("constant", constant)
    register("warmup", warmup)
    register("cosine", cosine, params=CosineParams)
    register("exponential", exponential, params=ExponentialParams)
