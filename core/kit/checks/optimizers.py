"""Optimizer checks: an optax transformation that follows its learning rate, compiles to what it
computes eagerly, keeps a stable state and optimises a toy problem without NaN."""

from __future__ import annotations

import functools
from typing import Any

from jaxyard.core.kit.harness import Failure, Subject, define_check

_TOY_LEARNING_RATES = (1e-2, 1e-1, 1e-3)
_TOY_STEPS = 100


@functools.cache
def _toy_problem():
    """A 3-class logistic regression on 64 separable points, and a parameter no loss reaches
    (its gradient is always 0: frozen or dead units must not make NaN). Returns the initial
    parameters, the loss and its jitted value-and-gradient (compiled once for every optimizer)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    y = jnp.asarray(np.argmax(np.asarray(x) @ rng.normal(size=(6, 3)), axis=1))
    params = {
        "w": jnp.asarray(0.1 * rng.normal(size=(6, 3)), jnp.float32),
        "b": jnp.zeros((3,), jnp.float32),
        "unused": jnp.zeros((2,), jnp.float32),
    }

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()  # "unused": gradient 0

    return params, loss, jax.jit(jax.value_and_grad(loss))


def _constant(lr: float):
    import optax

    return optax.constant_schedule(lr)


def _optimizer(s: Subject, lr: float = 1e-2):
    import optax

    tx = s.create(learning_rate=_constant(lr))
    if not isinstance(tx, optax.GradientTransformation):
        raise Failure(f"the factory returned {type(tx).__name__}, not an optax.GradientTransformation",
                      "return an optax transformation (optax.chain(...) of optax primitives)")
    return tx


def _tree_close(a, b, *, rtol: float, atol: float) -> str | None:
    """None when the two pytrees match (same structure, close values), else the first difference."""
    import jax
    import numpy as np

    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    if ta != tb:  # type: ignore[operator]  # jaxlib ships PyTreeDef without type stubs
        return f"different structures: {ta} vs {tb}"
    for (path, x), (_, y) in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{jax.tree_util.keystr(path)}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
        if x.dtype.kind in "fc":
            if not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
                worst = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                return f"{jax.tree_util.keystr(path)}: values differ by up to {worst:.3g} (rtol {rtol}, atol {atol})"
        elif not np.array_equal(x, y):
            return f"{jax.tree_util.keystr(path)}: {x} vs {y}"
    return None


def _finite(tree) -> str | None:
    import jax
    import numpy as np

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            return jax.tree_util.keystr(path)
    return None


@define_check("optimizer")
def check_returns_transformation(s: Subject) -> str:
    """factory(params, learning_rate=schedule) returns an optax.GradientTransformation whose init and update trace (shapes only)."""
    import jax

    params, loss, _ = _toy_problem()
    tx = _optimizer(s)
    grads = jax.eval_shape(jax.grad(loss), params)
    state = jax.eval_shape(tx.init, params)
    updates, _ = jax.eval_shape(tx.update, grads, state, params)
    if jax.tree_util.tree_structure(updates) != jax.tree_util.tree_structure(params):  # type: ignore[operator]  # as in _tree_close
        raise Failure("update() returns updates of another structure than the parameters", "return one update per parameter")
    return type(tx).__name__


def _jitted_update(s: Subject, lr: float = 1e-2):
    """``(tx, jax.jit(tx.update))`` for the component at rate ``lr``, compiled once per process."""
    key = (s.entry.kind, s.entry.name, s.entry.plugin, repr(s.values()), lr)
    if key not in _UPDATES:
        import jax

        tx = _optimizer(s, lr)
        _UPDATES[key] = (tx, jax.jit(tx.update))
    return _UPDATES[key]


_UPDATES: dict[tuple, Any] = {}


@define_check("optimizer")
def check_follows_learning_rate(s: Subject) -> None:
    """The learning rate schedule it is given drives the step: rate 0 moves nothing, a positive rate moves the parameters."""
    import jax
    import numpy as np

    params, _, value_and_grad = _toy_problem()
    _, grads = value_and_grad(params)
    txs = {lr: _optimizer(s, lr) for lr in (0.0, 1e-2)}

    @jax.jit
    def first_updates(g, p):
        return {lr: tx.update(g, tx.init(p), p)[0] for lr, tx in txs.items()}

    moved = {lr: max(float(np.max(np.abs(np.asarray(u)))) for u in jax.tree.leaves(updates))
             for lr, updates in first_updates(grads, params).items()}
    if moved[0.0] != 0.0:
        raise Failure(f"with a learning rate of 0 the first update still moves a parameter by {moved[0.0]:.3g}",
                      "pass the `learning_rate` schedule to optax as the learning rate (optax.scale_by_learning_rate "
                      "last in the chain); do not add terms after it")
    if not moved[1e-2] > 0.0:
        raise Failure("with a learning rate of 0.01 the first update moves nothing", "pass the `learning_rate` schedule to optax")


@define_check("optimizer", "full", name="jit_equals_eager")
def check_optimizer_jit_equals_eager(s: Subject) -> None:
    """Two jitted update steps equal two eager ones (rtol 1e-5, atol 1e-6): state and updates."""
    import optax

    params, _, value_and_grad = _toy_problem()
    tx, update = _jitted_update(s)
    state = tx.init(params)
    eager_params, eager_state = params, state
    for step in (1, 2):
        _, grads = value_and_grad(eager_params)
        eager_updates, new_eager_state = tx.update(grads, eager_state, eager_params)
        jit_updates, jit_state = update(grads, eager_state, eager_params)
        for what, a, b in (("updates", eager_updates, jit_updates), ("state", new_eager_state, jit_state)):
            diff = _tree_close(a, b, rtol=1e-5, atol=1e-6)
            if diff:
                raise Failure(f"step {step}: the jitted {what} differ from the eager ones: {diff}",
                              "keep the update a pure function of its arguments (no Python state, no host callbacks "
                              "whose result changes)")
        eager_params = optax.apply_updates(eager_params, eager_updates)
        eager_state = new_eager_state


@define_check("optimizer", "full")
def check_state_structure_stable(s: Subject) -> None:
    """The optimizer state keeps its tree structure, shapes and dtypes across steps (lax.scan carries it)."""
    import jax

    params, _, value_and_grad = _toy_problem()
    tx, update = _jitted_update(s)
    state0 = tx.init(params)
    p, state = params, state0
    for _ in range(3):
        updates, state = update(value_and_grad(p)[1], state, p)
        p = _apply_updates()(p, updates)

    def spec(tree):
        return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)

    if jax.tree_util.tree_structure(state0) != jax.tree_util.tree_structure(state):  # type: ignore[operator]  # as in _tree_close
        raise Failure(f"the state's structure changes after 3 steps: {jax.tree_util.tree_structure(state0)} -> "
                      f"{jax.tree_util.tree_structure(state)}", "return a state of the same structure from update() as init() builds")
    if spec(state0) != spec(state):
        raise Failure(f"the state's shapes or dtypes change after 3 steps: {spec(state0)} -> {spec(state)}",
                      "create every state array in init() with the dtype update() returns")
    if spec(p) != spec(params):
        raise Failure(f"the parameters' shapes or dtypes change after 3 steps: {spec(params)} -> {spec(p)}",
                      "return updates of the parameters' dtypes")


def _trajectory(s: Subject, lr: float):
    """Losses over _TOY_STEPS jitted steps at rate ``lr``, and what first became non-finite
    (cached per component and rate: two checks read it)."""
    key = (s.entry.kind, s.entry.name, s.entry.plugin, repr(s.values()), lr)
    if key not in _TRAJECTORIES:
        import numpy as np

        params, _, value_and_grad = _toy_problem()
        tx, update = _jitted_update(s, lr)
        apply = _apply_updates()
        p, st, losses, bad = params, tx.init(params), [], None
        for _ in range(_TOY_STEPS):
            value, grads = value_and_grad(p)
            losses.append(float(value))
            updates, st = update(grads, st, p)
            p = apply(p, updates)
            if not np.isfinite(losses[-1]):
                break
        else:
            losses.append(float(value_and_grad(p)[0]))
        bad = (_finite(p) and f"parameter {_finite(p)}") or (_finite(st) and f"state {_finite(st)}")
        _TRAJECTORIES[key] = (np.asarray(losses), bad)
    return _TRAJECTORIES[key]


@functools.cache
def _apply_updates():
    import jax
    import optax

    return jax.jit(optax.apply_updates)


_TRAJECTORIES: dict[tuple, tuple[Any, Any]] = {}


@define_check("optimizer", "full")
def check_no_nan(s: Subject) -> str:
    """No NaN or infinity in the loss, the parameters or the state over 100 steps of a small problem
    (rate 0.01), one parameter's gradient always 0."""
    import numpy as np

    losses, bad = _trajectory(s, 1e-2)
    if not np.isfinite(losses).all():
        first = int(np.argmin(np.isfinite(losses)))
        raise Failure(f"the loss is {losses[first]} at step {first} (rate 0.01)",
                      "guard divisions and roots with an epsilon; check a zero gradient or zero parameter")
    if bad:
        raise Failure(f"after {_TOY_STEPS} steps (rate 0.01) the {bad} is not finite",
                      "guard divisions and roots with an epsilon; a parameter whose gradient is always 0 must stay finite")
    return f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"


@define_check("optimizer", "full")
def check_loss_decreases(s: Subject) -> str:
    """On a toy logistic regression the loss falls by at least 20% within 100 steps at one of the rates 0.01, 0.1, 0.001."""
    import numpy as np

    seen = []
    for lr in _TOY_LEARNING_RATES:
        losses, bad = _trajectory(s, lr)
        if np.isfinite(losses).all() and not bad and losses[-1] <= 0.8 * losses[0]:
            return f"rate {lr}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        seen.append(f"rate {lr}: {losses[0]:.4f} -> {losses[-1]:.4f}")
    raise Failure(f"the loss does not fall by 20% in {_TOY_STEPS} steps ({'; '.join(seen)})",
                  "step against the gradient (optax scales by -learning_rate) and use the schedule it is given")
