"""Task checks: what the factory returns, and the loss on an example batch: finite at initialisation,
the same jitted, blind to padded rows, additive over rows, and vmappable over a sweep's trials.

The batch is the first of the kit's example data sets the task accepts (its ``context()`` and
``check()`` pass: integer labels, float targets, 0/1 tags or token sequences), with a tiny model
mapping its ``inputs`` to ``(rows, *output_shape)``; a task training on anything else gives its
own with a method ``kit_example(rows) -> (batch, make_model)`` (see :mod:`jaxyard.core.kit.examples`).
Padding and additivity are checked in eval mode: a loss that draws random numbers there (a VAE's
sample) opts out of them with that reason.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jaxyard.core.kit import examples
from jaxyard.core.kit.harness import Failure, Subject, define_check, error_text

_REQUIRED = ("context", "check", "inputs", "output_shape", "loss", "summarize", "optimizer")
_ROWS = 8  # the rows of the batch the loss is checked on (the next 8 rows of the example are padding)
_RTOL, _ATOL = 1e-5, 1e-6


def _task(s: Subject, values: Mapping[str, Any] | None = None):
    """The task built from its params (``values`` replacing some, validators bypassed: traced values)."""
    from jaxyard.core.errors import PluginError
    from jaxyard.core.task import check_metrics
    from jaxyard.core.train.traced import replaced

    task = s.entry.create(replaced(s.params(), values)) if values else s.create()
    metrics = getattr(task, "metrics", None)
    if not isinstance(metrics, Mapping):
        raise Failure(f"the object it returns ({type(task).__name__}) has metrics {metrics!r}, not a mapping",
                      'subclass jaxyard.Task and set metrics = {"loss": "min", ...}')
    try:
        check_metrics(s.entry.name, metrics)
    except PluginError as err:
        raise Failure(str(err), 'declare metrics as {"loss": "min", "NAME": "min" or "max", ...}') from None
    missing = [m for m in _REQUIRED if not callable(getattr(task, m, None))]
    streams = getattr(task, "rng_streams", None)
    if missing:
        raise Failure(f"the object it returns ({type(task).__name__}) lacks {', '.join(missing)}",
                      "subclass jaxyard.Task (it gives the defaults) and implement loss")
    if not isinstance(streams, tuple) or not all(isinstance(n, str) and n.isidentifier() for n in streams):
        raise Failure(f"its rng_streams is {streams!r}", "give rng_streams as a tuple of stream names, e.g. ('sample',)")
    return task


def _example(s: Subject, task) -> examples.Example:
    return examples.find_example(task, classes=s.options.num_classes)


def _setup(s: Subject, *, mode: str = "train", seed: int = 0):
    """``(task, example, graphdef, state)``: the task, its example and the kit's model for it, split."""
    from flax import nnx

    task = _task(s)
    example = _example(s, task)
    model = examples.kit_model(task, example, examples.rngs_for(task, seed))
    getattr(model, mode)()
    graphdef, state = nnx.split(model)
    return task, example, graphdef, state


def _loss(task, graphdef, state, batch, mask):
    """The task's loss of the model merged from ``state`` (a fresh copy: eager calls leave no trace)."""
    from flax import nnx

    return task.loss(nnx.merge(graphdef, state), batch, mask)


def _jitted(task, graphdef):
    """:func:`_loss` compiled (the checks that are not about eager execution run it as the engine does:
    one compile, instead of each operation's own)."""
    import jax

    return jax.jit(functools.partial(_loss, task, graphdef))


def _device(batch):
    import jax
    import jax.numpy as jnp

    return jax.tree.map(jnp.asarray, batch)


def _ones(rows: int):
    import numpy as np

    return np.ones((rows,), np.float32)


def _host(out) -> tuple[float, dict[str, float]]:
    """``(loss, sums)`` as Python floats; a Failure when they are not scalars."""
    import numpy as np

    loss, sums = out
    if not isinstance(sums, Mapping):
        raise Failure(f"loss() returned sums of type {type(sums).__name__}, not a dict", 'return (loss, {"loss": ..., "count": ...})')
    bad = {k: np.shape(v) for k, v in {"the loss": loss, **sums}.items() if np.shape(v) != ()}
    if bad:
        raise Failure(f"loss() returned non-scalar values: {bad}", "return the mean loss and each sum as a scalar (sum over rows)")
    return float(loss), {k: float(v) for k, v in sums.items()}


def _differ(a: tuple[float, dict[str, float]], b: tuple[float, dict[str, float]], *, rtol: float = _RTOL, atol: float = _ATOL) -> str | None:
    import math

    if set(a[1]) != set(b[1]):
        return f"the sums are named {sorted(a[1])}, then {sorted(b[1])}"
    for name, x, y in (("the loss", a[0], b[0]), *((f"sum {k!r}", a[1][k], b[1][k]) for k in a[1])):
        if not math.isclose(x, y, rel_tol=rtol, abs_tol=atol) and not (math.isnan(x) and math.isnan(y)):
            return f"{name} is {x!r}, then {y!r}"
    return None


@define_check("task")
def check_returns_task(s: Subject) -> str:
    """factory(params) returns a task (jaxyard.Task): metrics with loss and their directions, rng_streams, context,
    check, loss and summarize; and it accepts one of the kit's example data sets (or gives its own: kit_example)."""
    task = _task(s)
    example = _example(s, task)
    return f"metrics {dict(task.metrics)}; checked on the kit's {example.name} example"


@define_check("task", "full")
def check_loss_finite(s: Subject) -> str:
    """At initialisation, on the example batch, the loss, its gradient and every sum are finite scalars; the sums include
    count (positive) and summarize() gives each metric, finite."""
    import math

    import jax
    import numpy as np
    from flax import nnx

    task, example, graphdef, state = _setup(s)
    batch, mask = _device(example.take(slice(0, _ROWS))), _ones(_ROWS)
    loss, sums = _host(_jitted(task, graphdef)(state, batch, mask))
    if "count" not in sums or not sums["count"] > 0:
        raise Failure(f"its sums are {sums}: no positive 'count'", 'include "count": the sum of the mask (rows, or tokens) in the sums')
    bad = [name for name, v in (("the loss", loss), *((f"sum {k!r}", v) for k, v in sums.items())) if not math.isfinite(v)]
    if bad:
        raise Failure(f"{', '.join(bad)} not finite on a freshly initialised model", "keep the loss finite (clip logs, use optax's stable losses)")
    grads = jax.jit(lambda st: nnx.grad(lambda m: task.loss(m, batch, mask)[0])(nnx.merge(graphdef, st)))(state)
    if not all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)):
        raise Failure("the gradient of the loss is not finite at initialisation", "keep the loss differentiable where the model starts")
    summary = task.summarize(dict(sums))
    if not isinstance(summary, Mapping) or list(summary) != list(task.metrics):
        raise Failure(f"summarize() returns {list(summary) if isinstance(summary, Mapping) else summary!r}, not the metrics {list(task.metrics)}",
                      "return one value per metric, in the order of metrics")
    bad = [k for k, v in summary.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise Failure(f"summarize() gives {', '.join(f'{k}={summary[k]!r}' for k in bad)}", "return finite Python floats")
    return ", ".join(f"{k} {v:.4g}" for k, v in summary.items())


@define_check("task", "full", name="jit_equals_eager")
def check_task_jit_equals_eager(s: Subject) -> None:
    """The jitted loss and sums (model split and merged, as the engine runs it) equal the eager ones (rtol 1e-5, atol 1e-6)."""
    import jax

    task, example, graphdef, state = _setup(s)
    batch, mask = _device(example.take(slice(0, _ROWS))), _ones(_ROWS)
    eager = _host(_loss(task, graphdef, state, batch, mask))
    jitted = _host(jax.jit(functools.partial(_loss, task, graphdef))(state, batch, mask))
    diff = _differ(eager, jitted)
    if diff:
        raise Failure(f"eager and jitted differ: {diff}", "keep loss() a pure function of the model, the batch and the mask (no Python state)")


@define_check("task", "full")
def check_padding_ignored(s: Subject) -> str:
    """In eval mode, rows with mask 0 change neither the loss nor any sum, whatever they hold: other real rows appended,
    rows of zeros in front (rtol 1e-5, atol 1e-6)."""
    import jax
    import numpy as np

    task, example, graphdef, state = _setup(s, mode="eval")
    real, pad = _ROWS - 2, 3
    rows = example.take(slice(0, real))
    others = example.take(slice(_ROWS, _ROWS + pad))
    zeros = jax.tree.map(np.zeros_like, others)
    loss = _jitted(task, graphdef)
    want = _host(loss(state, _device(rows), _ones(real)))
    cases = {
        f"{pad} other rows appended": (_concat(rows, others), np.r_[_ones(real), np.zeros(pad, np.float32)]),
        f"{pad} rows of zeros in front": (_concat(zeros, rows), np.r_[np.zeros(pad, np.float32), _ones(real)]),
    }
    for what, (batch, mask) in cases.items():
        got = _host(loss(state, _device(batch), mask))
        diff = _differ(want, got)
        if diff:
            raise Failure(f"with {what} (mask 0), {diff}", "multiply every per-row (or per-token) value by the mask before summing, "
                          "count the mask (not the rows), and keep padded rows finite (jnp.where, not a product, where they can be inf)")
    return f"count {want[1]['count']:g}"


def _concat(a, b):
    import jax
    import numpy as np

    return jax.tree.map(lambda x, y: np.concatenate([x, y]), a, b)


@define_check("task", "full")
def check_sums_additive(s: Subject) -> str:
    """In eval mode, the sums of a batch split in two (3 rows and 5) added up equal the sums of the whole, and summarize()
    gives the same metrics from either (rtol 1e-5): what lets the scan, the devices and the processes add them up."""
    import math

    task, example, graphdef, state = _setup(s, mode="eval")
    loss = _jitted(task, graphdef)
    whole = _host(loss(state, _device(example.take(slice(0, _ROWS))), _ones(_ROWS)))[1]
    first = _host(loss(state, _device(example.take(slice(0, 3))), _ones(3)))[1]
    second = _host(loss(state, _device(example.take(slice(3, _ROWS))), _ones(_ROWS - 3)))[1]
    if not set(first) == set(second) == set(whole):
        raise Failure(f"the sums of the parts are named {sorted(first)} and {sorted(second)}, of the whole {sorted(whole)}",
                      "return the same sums for every batch")
    merged = {k: first[k] + second[k] for k in whole}
    for k in whole:
        if not math.isclose(merged[k], whole[k], rel_tol=_RTOL, abs_tol=_ATOL):
            raise Failure(f"sum {k!r} of the whole batch is {whole[k]!r}, of its two parts added {merged[k]!r}",
                          "return sums over rows (or tokens), never means or other non-additive values: summarize() divides")
    a, b = task.summarize(dict(merged)), task.summarize(dict(whole))
    for k in task.metrics:
        if not math.isclose(float(a[k]), float(b[k]), rel_tol=_RTOL, abs_tol=_ATOL):
            raise Failure(f"summarize() gives {k} {a[k]!r} from the parts' sums, {b[k]!r} from the whole's",
                          "compute each metric from the sums alone")
    return f"{len(whole)} sums"


@define_check("task", "full")
def check_vmaps_over_trials(s: Subject) -> str:
    """The loss vmaps over a leading trial axis as a sweep runs it: two models' states stacked, and each traced float
    parameter given per trial, give each trial's own loss and sums (rtol 1e-5, atol 1e-6)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxyard.core.registry.params import build, traced_fields

    task, example, graphdef, state0 = _setup(s, seed=0)
    state1 = _setup(s, seed=10)[3]
    batch, mask = _device(example.take(slice(0, _ROWS))), _ones(_ROWS)
    params = s.params()
    traced = [n for n in traced_fields(type(params)) if isinstance(getattr(params, n), float)]
    trials: list[dict[str, float]] = [{n: getattr(params, n) for n in traced} for _ in range(2)]
    for name in traced:  # the default, and a value next to it that its validators accept
        default = getattr(params, name)
        for other in (default + 0.01 * (abs(default) or 1.0), default - 0.01 * (abs(default) or 1.0)):
            try:
                build(type(params), {**s.values(), name: other}, where=s.label)
            except Exception:  # refused by a validator: try the other side
                continue
            trials[1][name] = other
            break
    expected = []
    for values, state in zip(trials, (state0, state1), strict=True):
        own = s.entry.create(build(type(params), {**s.values(), **values}, where=s.label)) if traced else task
        expected.append(_host(_jitted(own, graphdef)(state, batch, mask)))

    def one(state, values):
        own = _task(s, values) if traced else task
        return _loss(own, graphdef, state, batch, mask)

    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), state0, state1)
    inputs = {k: jnp.asarray([t[k] for t in trials], jnp.float32) for k in traced}
    try:
        loss, sums = jax.jit(jax.vmap(one))(stacked, inputs)
    except Exception as err:
        raise Failure(f"vmapped over 2 trials it raises {type(err).__name__}: {error_text(err)}",
                      "compute with the traced parameters (jnp.where, not if), and keep loss() free of Python control flow on values") from err
    for i in range(2):
        got = _host((np.asarray(loss)[i], {k: np.asarray(v)[i] for k, v in sums.items()}))
        diff = _differ(expected[i], got)
        if diff:
            raise Failure(f"trial {i} of the vmapped loss differs from its own loss: {diff}",
                          "compute each trial from its own model and parameters (no reductions over the leading axis)")
    return f"traced: {', '.join(f'{k} {trials[0][k]:g}/{trials[1][k]:g}' for k in traced) or 'none'}"
