"""Model checks: an nnx.Module giving (batch, num_classes) logits, train and eval modes, no mixing
of examples, initialisation from the rngs given, jit equal to eager, and it trains."""

from __future__ import annotations

import functools

from jaxyard.core.kit.harness import CANDIDATE_INPUT_SHAPES, CheckSkipped, Failure, Subject, define_check, error_text


def _model(s: Subject, shape, *, seed: int = 0):
    from flax import nnx

    model = s.create(input_shape=tuple(shape), num_classes=s.options.num_classes, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    if not isinstance(model, nnx.Module):
        raise Failure(f"the factory returned {type(model).__name__}, not an nnx.Module", "return a flax nnx.Module")
    return model


def _input_shape(s: Subject) -> tuple[int, ...]:
    """The example shape to test with: the option, the model's own ``input_shape`` parameter, or
    the first candidate the model accepts (shapes only: nothing computed)."""
    if s.options.input_shape is not None:
        return s.options.input_shape
    own = getattr(s.params(), "input_shape", None)
    if isinstance(own, (tuple, list)) and own and all(isinstance(d, int) for d in own):
        return tuple(own)
    key = (s.entry.plugin, s.entry.name, repr(s.values()), s.options.num_classes)
    if key not in _SHAPES:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        errors = []
        for shape in CANDIDATE_INPUT_SHAPES:
            try:
                abstract = nnx.eval_shape(functools.partial(_model, s, shape))
                graphdef, state = nnx.split(abstract)
                out = jax.eval_shape(functools.partial(_forward, graphdef), state, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
            except (Failure, CheckSkipped):
                raise
            except Exception as err:  # a shape the model refuses: try the next
                errors.append(f"{shape}: {type(err).__name__}: {error_text(err)[:120]}")
                continue
            if getattr(out, "shape", None) == (2, s.options.num_classes):
                _SHAPES[key] = shape
                break
            errors.append(f"{shape}: output {getattr(out, 'shape', type(out).__name__)}")
        else:
            raise Failure(f"it maps none of the example shapes {CANDIDATE_INPUT_SHAPES} to (batch, num_classes): {'; '.join(errors)}",
                          "accept (batch, *input_shape) inputs for the input_shape it is given; if it needs a particular "
                          "shape, pass input_shape={'model:NAME': shape} to the kit")
    return _SHAPES[key]


_SHAPES: dict[tuple, tuple[int, ...]] = {}


def _forward(graphdef, state, x):
    """The model's forward pass as the engine runs it: merged from its graph and state."""
    from flax import nnx

    return nnx.merge(graphdef, state)(x)


def _inputs(shape, batch: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(np.float32)


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
    """factory(params, input_shape, num_classes, rngs) returns an nnx.Module mapping (2, *input_shape) to (2, num_classes) (shapes only)."""
    shape = _input_shape(s)
    return f"input_shape {shape}"


@define_check("model", "full")
def check_output_shape(s: Subject) -> str:
    """Batches of 1, 3 and 8 give logits (batch, num_classes) in train and eval mode, finite when computed (jitted, as the engine runs it)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    model = _model(s, shape)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        graphdef, state = nnx.split(model)
        forward = functools.partial(_forward, graphdef)
        for batch in (1, 3, 8):
            out = jax.eval_shape(forward, state, jax.ShapeDtypeStruct((batch, *shape), jnp.float32))
            want = (batch, s.options.num_classes)
            if getattr(out, "shape", None) != want:
                raise Failure(f"in {mode} mode a batch of shape {(batch, *shape)} gives {getattr(out, 'shape', type(out).__name__)}, not {want}",
                              "return logits of shape (batch, num_classes) for any batch size")
        logits = np.asarray(jax.jit(forward)(state, _inputs(shape, 3)))
        if not np.isfinite(logits).all():
            raise Failure(f"in {mode} mode the logits of a batch of 3 are not finite", "keep the forward pass finite at initialisation")
    return f"input_shape {shape}, num_classes {s.options.num_classes}"


@define_check("model", "full")
def check_train_eval_modes(s: Subject) -> str:
    """Eval mode is deterministic; train and eval outputs differ when the model has dropout (rate > 0), agree when it has no dropout or batch norm."""
    import numpy as np

    shape = _input_shape(s)
    model = _model(s, shape)
    x = _inputs(shape, 8)
    dropout, batchnorm = _has(model, "Dropout"), _has(model, "BatchNorm")
    model.train()
    train1 = np.asarray(model(x))
    train2 = np.asarray(model(x))
    model.eval()
    eval1, eval2 = np.asarray(model(x)), np.asarray(model(x))
    if not np.array_equal(eval1, eval2):
        raise Failure("two calls in eval mode give different outputs", "make every stochastic layer follow model.eval() (nnx.Dropout does)")
    if dropout:
        if np.allclose(train1, eval1):
            raise Failure("it has nnx.Dropout with rate > 0, yet train-mode and eval-mode outputs agree",
                          "call the dropout layer in __call__ and let model.train()/model.eval() switch it")
        if np.array_equal(train1, train2):
            raise Failure("it has dropout, yet two train-mode calls give the same output", "draw dropout masks from the rngs' dropout stream")
        return "dropout: train differs from eval"
    if batchnorm:
        return "batch norm: eval deterministic"
    if not np.allclose(train1, eval1, rtol=1e-5, atol=1e-6):
        raise Failure("it has no dropout or batch norm, yet train-mode and eval-mode outputs differ",
                      "layers that behave differently in training must be nnx.Dropout/nnx.BatchNorm or follow model.train()/model.eval()")
    return "no dropout: train equals eval"


@define_check("model", "full")
def check_batch_independent(s: Subject) -> None:
    """In eval mode a batch's logits equal each example's own (rtol 1e-4, atol 1e-5): nothing mixes examples."""
    import numpy as np

    shape = _input_shape(s)
    model = _model(s, shape)
    model.eval()
    x = _inputs(shape, 8)
    full = np.asarray(model(x))
    each = np.concatenate([np.asarray(model(x[i : i + 1])) for i in range(len(x))])
    if not np.allclose(full, each, rtol=1e-4, atol=1e-5):
        worst = float(np.max(np.abs(full - each)))
        raise Failure(f"the logits of a batch of 8 differ from those of the examples one by one (by up to {worst:.3g})",
                      "do not mix examples in eval mode (batch statistics must come from running averages)")


@define_check("model", "full")
def check_deterministic(s: Subject) -> None:
    """Built twice from the same rngs it has bit-identical parameters and eval outputs."""
    import jax
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    a, b = _model(s, shape), _model(s, shape)
    la, lb = [_host(x) for x in jax.tree.leaves(nnx.state(a))], [_host(x) for x in jax.tree.leaves(nnx.state(b))]
    if len(la) != len(lb) or any(x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True) for x, y in zip(la, lb, strict=True)):
        raise Failure("two models built from nnx.Rngs(params=0, dropout=1) have different state",
                      "draw every initial value from the rngs given to the factory (no global or time-based seeds)")
    a.eval(), b.eval()
    x = _inputs(shape, 3)
    if not np.array_equal(np.asarray(a(x)), np.asarray(b(x))):
        raise Failure("two models built from the same rngs give different eval outputs", "make the forward pass deterministic in eval mode")


@define_check("model", "full")
def check_uses_rngs(s: Subject) -> None:
    """Built from other rngs its parameters differ (run.seed reaches the initialisation)."""
    import jax
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    la = jax.tree.leaves(nnx.state(_model(s, shape, seed=0), nnx.Param))
    lb = jax.tree.leaves(nnx.state(_model(s, shape, seed=10), nnx.Param))
    if not la:
        raise CheckSkipped("the model has no nnx.Param")
    if all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=False)):
        raise Failure("models built from nnx.Rngs(params=0) and nnx.Rngs(params=10) have identical parameters",
                      "initialise from the rngs given to the factory, not from a fixed nnx.Rngs(0)")


@define_check("model", "full", name="jit_equals_eager")
def check_model_jit_equals_eager(s: Subject) -> None:
    """In eval mode the jitted forward pass (split/merge, as the engine runs it) equals the eager one (rtol 1e-5, atol 1e-6)."""
    import jax
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    model = _model(s, shape)
    model.eval()
    x = _inputs(shape, 4)
    eager = np.asarray(model(x))
    graphdef, state = nnx.split(model)
    jitted = np.asarray(jax.jit(functools.partial(_forward, graphdef))(state, x))
    if not np.allclose(eager, jitted, rtol=1e-5, atol=1e-6):
        raise Failure(f"jitted and eager logits differ by up to {float(np.max(np.abs(eager - jitted))):.3g}",
                      "keep the forward pass a pure function of the module's state and the input")


@define_check("model", "full")
def check_trains(s: Subject) -> str:
    """The engine's own compiled epoch (lax.scan over batches, nnx.Optimizer, adam 0.01) lowers the loss of a
    learnable problem in 15 epochs, finite throughout."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxyard.core.train import steps

    shape = _input_shape(s)
    rng = np.random.default_rng(0)
    n, batch, classes = 48, 16, s.options.num_classes
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = np.argmax(x.reshape(n, -1) @ rng.normal(size=(int(np.prod(shape)), classes)), axis=1).astype(np.int32)
    model = _model(s, shape)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    model.eval()
    eval_graphdef, _ = steps.split(model, optimizer)
    model.train()
    graphdef, state = steps.split(model, optimizer)
    epoch = steps.make_train_epoch(graphdef, n, batch, False)
    evaluate = steps.make_evaluate(eval_graphdef, batch)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    before = np.asarray(evaluate(state, xs, ys))
    key = jax.random.key(0)
    for i in range(15):
        state, sums = epoch(state, {}, xs, ys, jax.random.fold_in(key, i))
        if not np.isfinite(np.asarray(sums)).all():
            raise Failure(f"the training loss is not finite in epoch {i + 1}", "keep the forward pass and its gradient finite")
    after = np.asarray(evaluate(state, xs, ys))
    loss_before, loss_after = before[0] / before[2], after[0] / after[2]
    if not np.isfinite(loss_after) or not loss_after < 0.9 * loss_before:
        raise Failure(f"the loss on the training examples goes from {loss_before:.4f} to {loss_after:.4f} in 15 epochs",
                      "let the gradient reach the parameters (nnx.Param) and keep the output a function of the input")
    return f"loss {loss_before:.4f} -> {loss_after:.4f}"
