"""The model comes from one compiled program (initialise.Initialiser), with the values the op-by-op
construction gives, compiled once for any seed and kept for the process's next build of it."""


import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jaxyard
from jaxyard.core.train.build import make_task
from jaxyard.core.train.initialise import Initialiser, create_model, model_rngs

# model -> (the context its factory is given, --set values that keep it small)
MODELS = {
    "mlp": ({"input_shape": (16,), "num_outputs": 4}, ["model.hidden_dims=32"]),
    "cnn": ({"input_shape": (8, 8, 1), "num_outputs": 4}, ["model.channels=4,8"]),
    "rnn": ({"input_shape": (8,), "num_outputs": 12, "vocab_size": 12}, ["model.hidden=8", "model.embed_dim=8"]),
    "transformer": ({"input_shape": (8,), "num_outputs": 12, "vocab_size": 12},
                    ["model.dim=16", "model.layers=1", "model.heads=2", "model.max_len=8"]),
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
        if model == "mlp":  # the default run's model: bit for bit, so its documented numbers hold
            np.testing.assert_array_equal(a, b)
        else:  # a fused initializer may round its last bit otherwise (the embeddings at some widths)
            np.testing.assert_allclose(a, b, rtol=3e-7, atol=1e-8)


def test_one_program_serves_every_seed(registry):
    cfg, context = config(registry), MODELS["mlp"][0]
    task = make_task(cfg)
    init = Initialiser(cfg, context, task)
    first = leaves(nnx.state(init(7)))
    other = leaves(nnx.state(init(8)))
    assert init.program is not None and not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    for a, b in zip(leaves(nnx.state(create_model(cfg, context, model_rngs(8, task)))), other, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_process_building_the_same_run_again_reuses_its_initialiser(registry):
    """Another seed, another learning rate, or the same run again (a notebook, a sweep's trials, a
    test suite): the program is not traced or compiled again; another model configuration gets its own."""
    from jaxyard.core.train.initialise import initialiser

    context = MODELS["mlp"][0]
    first = config(registry, seed=7)
    again = initialiser(config(registry, seed=9), context, make_task(first))
    faster = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"model": "mlp"}, sets=[*MODELS["mlp"][1], "run.learning_rate=0.1"])
    assert initialiser(first, context, make_task(first)) is again is initialiser(faster, context, make_task(faster))
    wider = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"model": "mlp"}, sets=["model.hidden_dims=48"])
    assert initialiser(wider, context, make_task(wider)) is not again


def test_the_optimizer_state_comes_from_one_program_with_the_op_by_op_values(registry):
    from jaxyard.core.train.initialise import make_optimizer

    cfg = config(registry)
    model = Initialiser(cfg, MODELS["mlp"][0], make_task(cfg))(7)
    for tx in (optax.adam(1e-3), optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))):
        compiled, eager = make_optimizer(model, tx), nnx.Optimizer(model, tx, wrt=nnx.Param)
        assert nnx.graphdef(compiled) == nnx.graphdef(eager)
        for a, b in zip(leaves(nnx.state(compiled)), leaves(nnx.state(eager)), strict=True):
            np.testing.assert_array_equal(a, b)


def test_an_optimizer_whose_init_cannot_be_traced_is_initialised_op_by_op(registry):
    from jaxyard.core.train.initialise import make_optimizer

    def init(params):  # a NumPy conversion: fine op by op, impossible inside a trace
        return {"first": np.asarray(jax.tree.leaves(params)[0]).ravel()[:3]}

    tx = optax.GradientTransformation(init, lambda updates, state, params=None: (updates, state))
    cfg = config(registry)
    model = Initialiser(cfg, MODELS["mlp"][0], make_task(cfg))(7)
    first = next(v for path, v in nnx.to_flat_state(nnx.state(make_optimizer(model, tx))) if "first" in path)
    np.testing.assert_array_equal(np.asarray(first[...]), leaves(nnx.state(model, nnx.Param))[0].ravel()[:3])


def test_a_plugins_model_is_made_by_its_factory_at_every_build(registry):
    """A plugin's factory may read outside state (pretrained weights): it is called at each build,
    as before, never compiled nor cached."""
    from jaxyard.core.train.initialise import EagerInitialiser, initialiser

    cfg = jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"model": "logreg"})
    assert cfg.model.entry.source != "builtin"
    context = MODELS["mlp"][0]
    first, second = initialiser(cfg, context, make_task(cfg)), initialiser(cfg, context, make_task(cfg))
    assert isinstance(first, EagerInitialiser) and first is not second
    for a, b in zip(leaves(nnx.state(first(7))), leaves(nnx.state(create_model(cfg, context, model_rngs(7, make_task(cfg))))), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_context_holding_arrays_is_not_a_cache_key(registry):
    """The repr of a long array is shortened, so two contexts could print alike: not kept."""
    from jaxyard.core.train.initialise import initialiser

    cfg = config(registry)
    context = {**MODELS["mlp"][0], "class_weights": np.ones(2000)}
    assert initialiser(cfg, context, make_task(cfg)) is not initialiser(cfg, context, make_task(cfg))
