"""Stock flax layers train and evaluate, written the way flax's docs write them: a bidirectional GRU
(nnx.RNN draws its carry from the model's Rngs, even in evaluation). BatchNorm and attention with
dropout are the built-in cnn's and transformer's layers (tests/plugins/test_cnn.py,
test_transformer_text.py)."""

import math

import jax
import numpy as np
import pytest

import jaxyard
from jaxyard.core.train.build import build
from jaxyard.core.train.loop import make_loop, summarize

from helpers import LOCAL, tiny


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(plugins=[str(LOCAL / "flax_layers.py")], strict=True)


@pytest.mark.parametrize("model", ["bigru"])
def test_a_stock_flax_model_trains_and_evaluates(registry, model):
    config = jaxyard.resolve_config(
        registry, jaxyard.load_settings(), options={"epochs": 1, "batch_size": 25, "model": model},
        sets=tiny("run.checkpointer=none", "loader.features=6", without=["model"]),
    )
    built = build(config)
    loop = make_loop(built)
    before = summarize(built, loop.evaluate("val"))
    train = summarize(built, loop.train_epoch(1))
    after, again = summarize(built, loop.evaluate("val")), summarize(built, loop.evaluate("val"))
    assert all(math.isfinite(v) for v in (*train.values(), *after.values()))
    assert after == again  # evaluation draws nothing that changes its numbers
    assert after["loss"] != before["loss"]  # the step moved the weights
    floats = [a for a in jax.tree.leaves(built.state) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating)]
    assert all(np.all(np.isfinite(np.asarray(a))) for a in floats)
