"""Scheduler checks: a callable of the step giving a finite, non-negative rate, the same jitted."""

from __future__ import annotations

from jaxyard.core.kit.harness import Failure, Subject, define_check

_DECAY_STEPS = (1, 10, 1000)
_PEAK = 0.1
#: How far from exact a schedule may be, as a fraction of the peak: XLA fuses the arithmetic of
#: a jitted schedule, so optax.linear_schedule(0.1, 0.0, 10) gives -1.5e-9 at its last step.
_ROUNDING = 1e-6


def _schedule(s: Subject, decay_steps: int):
    schedule = s.create(learning_rate=_PEAK, decay_steps=decay_steps)
    if not callable(schedule):
        raise Failure(f"the factory returned {type(schedule).__name__}, not a schedule (a callable of the step)",
                      "return an optax schedule, e.g. optax.linear_schedule(...)")
    return schedule


@define_check("scheduler")
def check_returns_schedule(s: Subject) -> str:
    """factory(params, learning_rate, decay_steps) returns a callable of the step giving a scalar rate."""
    import jax.numpy as jnp
    import numpy as np

    schedule = _schedule(s, 10)
    value = np.asarray(schedule(jnp.asarray(0, jnp.int32)))
    if value.shape != () or value.dtype.kind not in "fiu":
        raise Failure(f"schedule(0) is {value!r} (shape {value.shape}, dtype {value.dtype}), not a scalar number",
                      "return one rate per step")
    return f"rate at step 0: {float(value):.6g} (peak {_PEAK})"


@define_check("scheduler", "full")
def check_finite_nonnegative(s: Subject) -> str:
    """Over every step 0..decay_steps (decay_steps 1, 10 and 1000, vectorised with jax.vmap) the rate is
    finite and >= 0 (to 1e-6 of the peak: float rounding under jit)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    notes = []
    for decay_steps in _DECAY_STEPS:
        schedule = _schedule(s, decay_steps)
        values = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(decay_steps + 1, dtype=jnp.int32)))
        if values.shape != (decay_steps + 1,):
            raise Failure(f"vmapped over {decay_steps + 1} steps it returns shape {values.shape}", "return a scalar rate per step")
        bad = np.flatnonzero(~np.isfinite(values) | (values < -_ROUNDING * _PEAK))
        if bad.size:
            raise Failure(f"with decay_steps={decay_steps} the rate at step {int(bad[0])} is {values[bad[0]]} "
                          f"(step 0: {values[0]:.6g}, step {decay_steps}: {values[-1]:.6g})",
                          "keep the rate finite and non-negative over 0..decay_steps, decay_steps = 1 included")
        notes.append(f"decay_steps={decay_steps}: {values[0]:.6g} -> {values[-1]:.6g}")
    return "; ".join(notes)


@define_check("scheduler", "full")
def check_jittable(s: Subject) -> None:
    """The schedule gives the same rate jitted as eagerly (to 1e-6 of the peak), at steps 0, 1, decay_steps/2 and decay_steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    decay_steps = 100
    schedule = _schedule(s, decay_steps)
    jitted = jax.jit(schedule)
    for step in (0, 1, decay_steps // 2, decay_steps):
        eager = np.asarray(schedule(jnp.asarray(step, jnp.int32)))
        compiled = np.asarray(jitted(jnp.asarray(step, jnp.int32)))
        if not np.allclose(eager, compiled, rtol=1e-6, atol=_ROUNDING * _PEAK):
            raise Failure(f"at step {step} the jitted rate is {compiled} and the eager one {eager}",
                       "compute the rate with jax.numpy from the step alone (no Python state)")
