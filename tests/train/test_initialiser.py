"""The model and optimizer state come from one compiled program (initialise.Initialiser), with the
values the op-by-op construction gives; an optimizer whose init cannot be traced still works."""

import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxyard
from jaxyard.core.errors import PluginError
from jaxyard.core.train.build import make_task
from jaxyard.core.train.initialise import Initialiser, create_model, model_rngs

# model -> (the context its factory is given, --set values that keep it small)
MODELS = {
    "mlp": ({"input_shape": (16,), "num_outputs": 4}, ["model.hidden_dims=32"]),
    "cnn": ({"input_shape": (8, 8, 1), "num_outputs": 4}, []),
    "rnn": ({"input_shape": (8,), "num_outputs": 12, "vocab_size": 12}, []),
    "transformer": ({"input_shape": (8,), "num_outputs": 12, "vocab_size": 12}, []),
}


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(strict=True)


def config(registry, model="mlp", seed=7):
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"model": model, "seed": seed}, sets=MODELS[model][1])


def leaves(tree) -> list[np.ndarray]:
    """Every array of ``tree``, keys as their data."""
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("model", MODELS)
def test_the_compiled_initialiser_gives_the_op_by_op_values(registry, model):
    cfg, context = config(registry, model), MODELS[model][0]
    task = make_task(cfg)
    eager = create_model(cfg, context, model_rngs(7, task))
    compiled = Initialiser(cfg, context, task)(7)
    assert type(compiled) is type(eager)
    expected, got = leaves(nnx.state(eager)), leaves(nnx.state(compiled))
    assert [a.shape for a in got] == [a.shape for a in expected] and [a.dtype for a in got] == [a.dtype for a in expected]
    for a, b in zip(got, expected, strict=True):
        if model == "transformer":  # its fixed position tables: float32 rounding of the fused program
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
        else:
            np.testing.assert_array_equal(a, b)


def test_one_program_serves_every_seed(registry):
    cfg, context = config(registry), MODELS["mlp"][0]
    task = make_task(cfg)
    init = Initialiser(cfg, context, task)
    first = leaves(nnx.state(init(7)))
    other = leaves(nnx.state(init(8)))
    assert init.program is not None and not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    for a, b in zip(leaves(nnx.state(create_model(cfg, context, model_rngs(8, task)))), other, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_optimizer_state_is_initialised_in_the_same_program(registry):
    cfg, context = config(registry), MODELS["mlp"][0]
    tx = optax.adam(1e-3)
    model, optimizer = Initialiser(cfg, context, make_task(cfg), tx)(7)
    eager = nnx.Optimizer(model, tx, wrt=nnx.Param)
    for a, b in zip(leaves(nnx.state(optimizer)), leaves(nnx.state(eager)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_optimizer_whose_init_cannot_be_traced_is_initialised_op_by_op(registry):
    def init(params):  # a NumPy conversion: fine op by op, impossible inside a trace
        return {"first": np.asarray(jax.tree.leaves(params)[0]).ravel()[:3]}

    tx = optax.GradientTransformation(init, lambda updates, state, params=None: (updates, state))
    cfg, context = config(registry), MODELS["mlp"][0]
    model, optimizer = Initialiser(cfg, context, make_task(cfg), tx)(7)
    state = nnx.state(optimizer)
    first = next(v for path, v in nnx.to_flat_state(state) if "first" in path)
    np.testing.assert_array_equal(np.asarray(first[...]), leaves(nnx.state(model, nnx.Param))[0].ravel()[:3])


def test_an_optimizer_whose_init_fails_is_one_line_naming_it(registry):
    def init(params):
        raise ValueError("boom")

    tx = optax.GradientTransformation(init, lambda updates, state, params=None: (updates, state))
    cfg = config(registry)
    with pytest.raises(PluginError) as err:
        Initialiser(cfg, MODELS["mlp"][0], make_task(cfg), tx)
    assert re.fullmatch(rf"optimizer '{cfg.optimizer.name}' \(plugin .*\) failed initialising its state: ValueError: boom", str(err.value))
