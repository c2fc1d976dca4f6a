"""Model checks: an nnx.Module giving the output a task reads (classification: logits (batch,
num_classes)), train and eval modes, no mixing of examples, initialisation from the rngs given,
jit equal to eager, and it trains on the task's loss.

A model is checked for a task (the kit's ``task=``, default ``classification``): it is built as
the engine builds it, ``factory(params, input_shape=..., num_outputs=..., rngs=...)`` plus the
keys of the task's context it names (:func:`jaxyard.core.kit.examples.model_keywords`), for the
first of the kit's example data sets the task accepts, and called with ``task.inputs(batch)``.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs

from jaxyard.core.kit import examples
from jaxyard.core.kit.harness import CANDIDATE_INPUT_SHAPES, CheckSkipped, Failure, Subject, define_check, error_text

DEFAULT_TASK = "classification"


@attrs.frozen
class _Spec:
    """What a model is checked with: the task, its example data, the input shape the factory is
    given and the per-row output shape the task expects (None: not checked)."""

    task_name: str
    task: Any
    example: examples.Example
    input_shape: tuple[int, ...]
    out: tuple[int, ...] | None

    def context(self) -> dict[str, Any]:
        return self.example.context

    def inputs(self, rows: int, start: int = 0):
        """The model's inputs for ``rows`` rows of the example, from row ``start``."""
        return self.task.inputs(self.example.take(slice(start, start + rows)))

    def want(self, rows: int) -> tuple[int, ...] | None:
        return None if self.out is None else (rows, *self.out)


def _model(s: Subject, spec: _Spec, *, seed: int = 0):
    from flax import nnx

    rngs = examples.rngs_for(spec.task, seed)
    model = s.create(**examples.model_keywords(s.entry.factory, spec.input_shape, spec.context(), rngs))
    if not isinstance(model, nnx.Module):
        raise Failure(f"the factory returned {type(model).__name__}, not an nnx.Module", "return a flax nnx.Module")
    return model


def _shape_of(out) -> Any:
    """An output's shape (a pytree's shapes, for a model returning several arrays)."""
    import jax

    shapes = [getattr(leaf, "shape", None) for leaf in jax.tree.leaves(out)]
    return shapes[0] if len(shapes) == 1 and not isinstance(out, (tuple, list, dict)) else shapes


def _spec(s: Subject) -> _Spec:
    """The task, example and input shape to test with: the input shape is the option, the model's
    own ``input_shape`` parameter, or the first candidate the model accepts (shapes only: nothing
    computed). Token data has one shape: the candidates are not tried."""
    name = s.options.task or DEFAULT_TASK
    key = (id(examples.registry_of(s)), s.entry.plugin, s.entry.name, repr(s.values()), s.options.num_classes, name, s.options.input_shape)
    if key in _SPECS:
        return _SPECS[key]
    import jax
    import numpy as np
    from flax import nnx

    task = examples.task_named(s, name)
    own = getattr(s.params(), "input_shape", None)
    if s.options.input_shape is not None:
        shapes: tuple = (s.options.input_shape,)
    elif isinstance(own, (tuple, list)) and own and all(isinstance(d, int) for d in own):
        shapes = (tuple(own),)
    else:
        shapes = CANDIDATE_INPUT_SHAPES
    errors = []
    for shape in shapes:
        try:
            example = examples.find_example(task, tuple(shape), classes=s.options.num_classes)
        except Failure as failure:
            raise Failure(f"task {name!r}, which the kit checks it with, {failure.what}",
                          f"pass the kit the task the model is for: task={{{s.label!r}: 'NAME'}}") from None
        spec = _Spec(name, task, example, example.input_shape, examples.output_shape(task, example))
        try:
            abstract = nnx.eval_shape(functools.partial(_model, s, spec))
            graphdef, state = nnx.split(abstract)
            x = jax.tree.map(lambda a: jax.ShapeDtypeStruct((2, *a.shape[1:]), a.dtype), spec.inputs(2))
            out = jax.eval_shape(functools.partial(_forward, graphdef), state, x)
            if spec.out is None:
                jax.eval_shape(functools.partial(_task_loss, spec.task, graphdef), state, example.take(slice(0, 2)), np.ones(2, np.float32))
        except (Failure, CheckSkipped):
            raise
        except Exception as err:  # a shape the model refuses: try the next
            errors.append(f"{spec.input_shape}: {type(err).__name__}: {error_text(err)[:120]}")
        else:
            if spec.out is None or _shape_of(out) == spec.want(2):
                _SPECS[key] = spec
                return spec
            errors.append(f"{spec.input_shape}: output {_shape_of(out)}")
        if example.name not in ("classes", "values", "tags"):  # its inputs do not follow input_shape
            break
    want = "(batch, *task output)" if len(errors) != 1 else f"(2, {', '.join(map(str, spec.out or ()))})"
    raise Failure(f"for task {name!r} it maps none of the example shapes {shapes} to {want}: {'; '.join(errors)}",
                  "accept (batch, *input_shape) inputs for the input_shape it is given and return the output the task reads "
                  "(num_outputs wide); if it needs a particular shape, pass input_shape={'model:NAME': shape} to the kit, "
                  "if it is for another task, task={'model:NAME': 'TASK'}")


_SPECS: dict[tuple, _Spec] = {}


def _forward(graphdef, state, x):
    """The model's forward pass as the engine runs it: merged from its graph and state."""
    from flax import nnx

    return nnx.merge(graphdef, state)(x)


def _task_loss(task, graphdef, state, batch, mask):
    from flax import nnx

    return task.loss(nnx.merge(graphdef, state), batch, mask)


def _leaves(out) -> list:
    import jax
    import numpy as np

    return [np.asarray(leaf) for leaf in jax.tree.leaves(out)]


def _close(a, b, *, rtol: float, atol: float) -> bool:
    import numpy as np

    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(x.shape == y.shape and np.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(la, lb, strict=True))


def _equal(a, b) -> bool:
    import numpy as np

    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def _worst(a, b) -> float:
    import numpy as np

    return max((float(np.max(np.abs(x - y))) for x, y in zip(_leaves(a), _leaves(b), strict=False) if x.shape == y.shape and x.size), default=0.0)


def _host(x):
    """A leaf of module state as a NumPy array (RNG keys as their key data)."""
    import jax
    import numpy as np

    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _has(model, cls_name: str) -> bool:
    from flax import nnx

    cls = getattr(nnx, cls_name)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, cls) and (cls_name != "Dropout" or float(getattr(node, "rate", 0.0)) > 0.0):
            return True
    return False


@define_check("model")
def check_returns_module(s: Subject) -> str:
    """factory(params, input_shape, num_outputs, rngs, ...the task's context) returns an nnx.Module mapping two rows of
    the task's inputs to (2, *the task's output_shape) (shapes only; the task: the kit's task=, default classification)."""
    spec = _spec(s)
    return f"task {spec.task_name} on the kit's {spec.example.name} example: input_shape {spec.input_shape}, output {spec.want(2)}"


@define_check("model", "full")
def check_output_shape(s: Subject) -> str:
    """Batches of 1, 3 and 8 give the task's output (batch, *output_shape) in train and eval mode, finite when computed
    (jitted, as the engine runs it)."""
    import jax
    import numpy as np
    from flax import nnx

    spec = _spec(s)
    model = _model(s, spec)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        graphdef, state = nnx.split(model)
        forward = functools.partial(_forward, graphdef)
        for rows in (1, 3, 8):
            x = spec.inputs(rows)
            out = jax.eval_shape(forward, state, x)
            if spec.out is not None and _shape_of(out) != spec.want(rows):
                raise Failure(f"in {mode} mode a batch of {rows} (inputs {_shape_of(x)}) gives {_shape_of(out)}, not {spec.want(rows)}",
                              f"return the output task {spec.task_name!r} reads, (batch, *{spec.out}), for any batch size")
        out = jax.jit(forward)(state, spec.inputs(3))
        if not all(np.isfinite(leaf).all() for leaf in _leaves(out) if leaf.dtype.kind in "fc"):
            raise Failure(f"in {mode} mode the output for a batch of 3 is not finite", "keep the forward pass finite at initialisation")
    return f"task {spec.task_name}: input_shape {spec.input_shape}, output {spec.want(8)}"


@define_check("model", "full")
def check_train_eval_modes(s: Subject) -> str:
    """Eval mode is deterministic; train and eval outputs differ when the model has dropout (rate > 0), agree when it has no dropout or batch norm."""
    spec = _spec(s)
    model = _model(s, spec)
    x = spec.inputs(8)
    dropout, batchnorm = _has(model, "Dropout"), _has(model, "BatchNorm")
    model.train()
    train1, train2 = _leaves(model(x)), _leaves(model(x))
    model.eval()
    eval1, eval2 = _leaves(model(x)), _leaves(model(x))
    if not _equal(eval1, eval2):
        raise Failure("two calls in eval mode give different outputs", "make every stochastic layer follow model.eval() (nnx.Dropout does)")
    if dropout:
        if _close(train1, eval1, rtol=1e-5, atol=1e-8):
            raise Failure("it has nnx.Dropout with rate > 0, yet train-mode and eval-mode outputs agree",
                          "call the dropout layer in __call__ and let model.train()/model.eval() switch it")
        if _equal(train1, train2):
            raise Failure("it has dropout, yet two train-mode calls give the same output", "draw dropout masks from the rngs' dropout stream")
        return "dropout: train differs from eval"
    if batchnorm:
        return "batch norm: eval deterministic"
    if not _close(train1, eval1, rtol=1e-5, atol=1e-6):
        raise Failure("it has no dropout or batch norm, yet train-mode and eval-mode outputs differ",
                      "layers that behave differently in training must be nnx.Dropout/nnx.BatchNorm or follow model.train()/model.eval()")
    return "no dropout: train equals eval"


@define_check("model", "full")
def check_batch_independent(s: Subject) -> None:
    """In eval mode a batch's output equals each example's own (rtol 1e-4, atol 1e-5): nothing mixes examples."""
    import jax
    import numpy as np

    spec = _spec(s)
    model = _model(s, spec)
    model.eval()
    full = model(spec.inputs(8))
    each = [model(spec.inputs(1, i)) for i in range(8)]
    joined = jax.tree.map(lambda *rows: np.concatenate([np.asarray(r) for r in rows]), *each)
    if not _close(full, joined, rtol=1e-4, atol=1e-5):
        raise Failure(f"the output for a batch of 8 differs from those of the examples one by one (by up to {_worst(full, joined):.3g})",
                      "do not mix examples in eval mode (batch statistics must come from running averages)")


@define_check("model", "full")
def check_deterministic(s: Subject) -> None:
    """Built twice from the same rngs it has bit-identical state and eval outputs."""
    import jax
    import numpy as np
    from flax import nnx

    spec = _spec(s)
    a, b = _model(s, spec), _model(s, spec)
    la, lb = [_host(x) for x in jax.tree.leaves(nnx.state(a))], [_host(x) for x in jax.tree.leaves(nnx.state(b))]
    if len(la) != len(lb) or any(x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True) for x, y in zip(la, lb, strict=True)):
        raise Failure("two models built from the same nnx.Rngs seeds have different state",
                      "draw every initial value from the rngs given to the factory (no global or time-based seeds)")
    a.eval(), b.eval()
    x = spec.inputs(3)
    if not _equal(a(x), b(x)):
        raise Failure("two models built from the same rngs give different eval outputs", "make the forward pass deterministic in eval mode")


@define_check("model", "full")
def check_uses_rngs(s: Subject) -> None:
    """Built from other rngs its parameters differ (run.seed reaches the initialisation)."""
    import jax
    import numpy as np
    from flax import nnx

    spec = _spec(s)
    la = jax.tree.leaves(nnx.state(_model(s, spec, seed=0), nnx.Param))
    lb = jax.tree.leaves(nnx.state(_model(s, spec, seed=10), nnx.Param))
    if not la:
        raise CheckSkipped("the model has no nnx.Param")
    if all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=False)):
        raise Failure("models built from nnx.Rngs(params=0, ...) and nnx.Rngs(params=10, ...) have identical parameters",
                      "initialise from the rngs given to the factory, not from a fixed nnx.Rngs(0)")


@define_check("model", "full", name="jit_equals_eager")
def check_model_jit_equals_eager(s: Subject) -> None:
    """In eval mode the jitted forward pass (split/merge, as the engine runs it) equals the eager one (rtol 1e-5, atol 1e-6)."""
    import jax
    from flax import nnx

    spec = _spec(s)
    model = _model(s, spec)
    model.eval()
    x = spec.inputs(4)
    eager = model(x)
    graphdef, state = nnx.split(model)
    jitted = jax.jit(functools.partial(_forward, graphdef))(state, x)
    if not _close(eager, jitted, rtol=1e-5, atol=1e-6):
        raise Failure(f"jitted and eager outputs differ by up to {_worst(eager, jitted):.3g}",
                      "keep the forward pass a pure function of the module's state and the input")


_EPOCHS, _BATCH = 15, 16


@define_check("model", "full")
def check_trains(s: Subject) -> str:
    """The engine's own compiled epoch (lax.scan over batches, nnx.Optimizer, adam 0.01, the task's loss) and evaluation
    lower the task's loss on the kit's learnable example in 15 epochs, finite throughout."""
    import math

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxyard.core.train import steps

    spec = _spec(s)
    data, rows = jax.tree.map(jnp.asarray, spec.example.batch), spec.example.rows
    model = _model(s, spec)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    model.eval()
    eval_graphdef, _ = steps.split(model, optimizer)
    model.train()
    graphdef, state = steps.split(model, optimizer)

    def task(inputs):  # the engine's task of the traced inputs: none here
        return spec.task

    epoch = steps.make_train_epoch(graphdef, rows, _BATCH, False, task=task)
    evaluate = steps.make_evaluate(eval_graphdef, _BATCH, task=task)
    valid = jnp.ones(rows, jnp.float32)

    def loss_of(sums) -> float:
        return float(spec.task.summarize({k: float(v) for k, v in sums.items()})["loss"])

    before = loss_of(evaluate(state, {}, data, valid))
    key = jax.random.key(0)
    for i in range(_EPOCHS):
        state, sums = epoch(state, {}, data, jax.random.fold_in(key, i))
        if not all(np.isfinite(np.asarray(v)) for v in jax.tree.leaves(sums)):
            raise Failure(f"the training loss is not finite in epoch {i + 1}", "keep the forward pass and its gradient finite")
    after = loss_of(evaluate(state, {}, data, valid))
    if not math.isfinite(after) or not after < 0.9 * before:
        raise Failure(f"the loss of task {spec.task_name!r} on the training examples goes from {before:.4f} to {after:.4f} in {_EPOCHS} epochs",
                      "let the gradient reach the parameters (nnx.Param) and keep the output a function of the input")
    return f"task {spec.task_name}: loss {before:.4f} -> {after:.4f}"
