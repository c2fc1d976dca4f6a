"""run.precision = "bf16": float32 parameters and optimizer state, bfloat16 forward and backward
pass, float32 loss and sums; close to float32's numbers, deterministic, a bad value in one line."""

import collections

import jax
import numpy as np
import pytest

import jaxyard
from jaxyard.core.train import steps
from jaxyard.core.train.build import build
from jaxyard.core.train.loop import as_batch, make_loop, summarize

from helpers import assert_one_line_error, tiny

CNN = ("model.channels=4", "model.pool=1", "model.dropout_rate=0.0")  # one block of 4 channels, no pooling or dropout: compiles fast at -O0


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(strict=True)


def config(registry, precision, *sets, model="mlp"):
    without = ["model"] if model != "mlp" else []
    sets = tiny(f"run.precision={precision}", "run.learning_rate=0.01", *sets, without=without)
    return jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"epochs": 3, "batch_size": 16, "model": model}, sets=sets)


def trained(registry, precision, *sets, model="mlp"):
    """A built run after 3 epochs, and its third epoch's training metrics (no evaluation: one
    program less to compile)."""
    built = build(config(registry, precision, *sets, model=model))
    loop = make_loop(built)
    for epoch in (1, 2, 3):
        sums = loop.train_epoch(epoch)
    return built, summarize(built, sums)


def compute_dtypes(built):
    """The operand dtypes of every matmul and convolution of one traced training step and one
    evaluation batch, and the dtypes of their sums."""
    found = collections.defaultdict(set)

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found[eqn.primitive.name].update(str(v.aval.dtype) for v in eqn.invars)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    batch, mask = jax.tree.map(lambda a: a[:16], as_batch(built.data.train)), np.ones(16, np.float32)
    train = jax.make_jaxpr(lambda s: steps._step(built.train_graphdef, None, built.task_of, s, {}, batch, mask))(built.state)
    evaluate = jax.make_jaxpr(lambda s: steps._eval_sums(built.eval_graphdef, built.task_of, False, s, {}, batch, mask))(built.state)
    for closed in (train, evaluate):  # evaluation computes as training does
        walk(closed.jaxpr)
    sums = [*train.out_avals[-3:], *evaluate.out_avals]  # the task's sums: loss, acc, count
    return dict(found), {str(a.dtype) for a in sums}


def float_dtypes(tree):
    return {str(a.dtype) for a in jax.tree.leaves(tree) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating)}


@pytest.fixture(scope="module")
def mlp_runs(registry):
    return {precision: trained(registry, precision) for precision in ("float32", "bf16")}


@pytest.fixture(scope="module")
def cnn_runs(registry):
    return {precision: trained(registry, precision, *CNN, model="cnn") for precision in ("float32", "bf16")}


def test_bf16_keeps_float32_state_and_computes_in_bfloat16(mlp_runs, cnn_runs):
    """After training in bf16 every float of the state (parameters, Adam's moments, batch norm's
    statistics) is float32; every matmul and convolution of the step, forward and backward, and of
    evaluation takes bfloat16 operands (float32 ones in float32), and the sums are float32. The cnn too: batch
    norm's float32 statistics must not promote what follows it to float32."""
    built, _ = mlp_runs["bf16"]
    model, optimizer = steps.merged(built.train_graphdef, built.state)
    from flax import nnx

    assert float_dtypes(nnx.state(model)) == float_dtypes(nnx.state(optimizer)) == {"float32"}
    assert compute_dtypes(mlp_runs["float32"][0]) == ({"dot_general": {"float32"}}, {"float32"})
    assert compute_dtypes(built) == ({"dot_general": {"bfloat16"}}, {"float32"})
    assert compute_dtypes(cnn_runs["bf16"][0]) == ({"dot_general": {"bfloat16"}, "conv_general_dilated": {"bfloat16"}}, {"float32"})


def test_bf16_trains_within_tolerance_of_float32(mlp_runs, cnn_runs):
    """3 epochs of the tiny workload (mlp; cnn of one 4-channel block without pooling or dropout),
    seed 0, peak rate 0.01: bf16's loss over the third epoch within 0.01 of float32's and its
    accuracy within 0.03 (3 of 100 rows). Measured over seeds 0-3: loss differences at most
    0.0006 (mlp) and 0.0002 (cnn), accuracies equal or 1 row apart (docs/training.md: the default
    workload's and the digits cnn's test numbers)."""
    for runs in (mlp_runs, cnn_runs):
        full, half = runs["float32"][1], runs["bf16"][1]
        assert half["loss"] == pytest.approx(full["loss"], abs=0.01)
        assert half["acc"] == pytest.approx(full["acc"], abs=0.03)
        assert half != full  # bf16 did change the arithmetic


def test_bf16_same_seed_same_numbers(registry, mlp_runs):
    """A second bf16 run of the same configuration gives the same metrics and parameters."""
    from flax import nnx

    first, metrics = mlp_runs["bf16"]
    again, metrics_again = trained(registry, "bf16")
    assert metrics_again == metrics
    params = [jax.tree.leaves(nnx.state(steps.merged(b.train_graphdef, b.state)[0], nnx.Param)) for b in (first, again)]
    for a, b in zip(*params, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_precision_is_one_line(run_cli):
    """float16 is not a choice: one line naming the key, the value and the choices."""
    result = run_cli(["run", "--set", "run.precision=float16"])
    assert_one_line_error(result, "run.precision", "'float16'", "float32 or bf16")


# next_token on the tokens loader: 40 windows of 8 tokens (the models' embeddings read integer inputs)
TOKENS = ("run.task=next_token", "run.loader=tokens", "loader.train_size=40", "loader.val_size=16", "loader.test_size=16",
          "loader.seq_len=8")
SEQUENCE_MODELS = {
    "mlp": (*TOKENS, "model.hidden_dims=16"),
    "rnn": (*TOKENS, "model.hidden=8", "model.embed_dim=8"),
    "transformer": (*TOKENS, "model.dim=16", "model.layers=1", "model.heads=2", "model.max_len=8"),
    "rnn-bidirectional-classifier": ("model.hidden=8", "model.cell=lstm", "model.bidirectional=true"),  # 16 steps of 1 feature
}


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_bf16_sequence_models_compute_in_bfloat16(registry, name):
    """The language models and the rnn too: their embeddings (flax's Embed fixes float32 when
    created), the recurrence of the rnn's cells (flax's carry is float32, both directions of a
    bidirectional pair) and the transformer's tied head."""
    model = name.split("-")[0]
    tokens = "run.loader=tokens" in SEQUENCE_MODELS[name]
    sets = tiny(*SEQUENCE_MODELS[name], "run.precision=bf16", without=["model", *(["loader"] if tokens else [])])
    built = build(jaxyard.resolve_config(registry, jaxyard.load_settings(), options={"batch_size": 16, "model": model}, sets=sets))
    assert compute_dtypes(built) == ({"dot_general": {"bfloat16"}}, {"float32"})
