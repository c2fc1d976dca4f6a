"""Each built-in task trains from the CLI on its built-in loader with the mlp and beats its trivial
baseline by a stated margin; a task and a loader that do not fit are one line naming both."""

import json
import math

import numpy as np
import pytest

from helpers import assert_one_line_error


def trained(run_cli, out, *args, curves=False):
    result = run_cli(["run", *args, "--checkpointer", "none", "--set", f"run.curves={str(curves).lower()}", "--out", out])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads((out / "summary.json").read_text()), result.stdout


def test_regression_explains_most_of_the_variance(run_cli, tmp_path):
    """R² >= 0.9 on the test split of the synthetic regression loader (its noise leaves R² ~0.99 possible)."""
    summary, stdout = trained(run_cli, tmp_path / "r", "--task", "regression", "--loader", "regression", "--epochs", "4",
                              "--set", "loader.train_size=2000", "--set", "run.warmup_steps=10", curves=True)
    assert summary["task"] == "regression"
    assert summary["metrics"] == {"loss": "min", "mse": "min", "mae": "min", "r2": "max"}
    assert summary["test"]["test_r2"] >= 0.9, summary["test"]
    assert "  Test R²: " in stdout and "  Test MSE: " in stdout
    from PIL import Image

    with Image.open(tmp_path / "r" / "training_curves.png") as png:  # a panel per metric and the learning rate: 5 of 5 by 4 inches
        assert png.size[0] > png.size[1] * 2


def test_multilabel_beats_predicting_all_zeros(run_cli, tmp_path):
    """Per-label accuracy above the all-zeros predictor's (the share of 0 labels) by 5 points."""
    from jaxyard.plugins.loaders import MultilabelParams, multilabel

    test = multilabel(MultilabelParams(), seed=0).test
    labels = np.asarray(test["y"] if isinstance(test, dict) else test.y)
    zeros = float(np.mean(labels == 0))
    summary, _ = trained(run_cli, tmp_path / "m", "--task", "multilabel", "--loader", "multilabel", "--epochs", "4",
                         "--set", "run.warmup_steps=10")
    assert summary["test"]["test_acc"] >= zeros + 0.05, (summary["test"], zeros)


def test_next_token_beats_a_unigram_model(run_cli, tmp_path):
    """The mlp reads each token and predicts the next (a bigram model): test perplexity below the
    unigram model's (token frequencies of the training split) by a third."""
    from jaxyard.plugins.loaders import TokensParams, tokens

    params = dict(train_size=1000, val_size=100, test_size=100, seq_len=16)
    data = tokens(TokensParams(**params), seed=0)
    train, test = np.asarray(data.train["tokens"])[:, 1:], np.asarray(data.test["tokens"])[:, 1:]
    counts = np.bincount(train.ravel(), minlength=data.num_classes) + 1.0
    unigram = float(np.exp(-np.mean(np.log((counts / counts.sum())[test.ravel()]))))
    sets = [x for k, v in params.items() for x in ("--set", f"loader.{k}={v}")]
    summary, stdout = trained(run_cli, tmp_path / "t", "--task", "next_token", "--loader", "tokens", "--epochs", "4",
                              "--set", "model.hidden_dims=32", "--set", "run.warmup_steps=10", "--lr", "1e-2", *sets)
    perplexity = summary["test"]["test_perplexity"]
    assert math.isclose(perplexity, math.exp(summary["test"]["test_loss"]), rel_tol=1e-6)
    assert perplexity <= unigram * 2 / 3, (perplexity, unigram)
    assert "  Test Perplexity: " in stdout


@pytest.mark.parametrize(("task", "loader", "fragments"), [
    ("regression", "synthetic", ["loader 'synthetic'", "integer labels", "task 'regression' needs float targets"]),
    ("classification", "regression", ["loader 'regression'", "float32 targets", "task 'classification' needs integer class labels"]),
])
def test_a_task_and_a_loader_that_do_not_fit_are_one_line(run_cli, tmp_path, task, loader, fragments):
    result = run_cli(["run", "--task", task, "--loader", loader, "--epochs", "1", "--out", tmp_path / "x"])
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_a_monitor_the_task_does_not_report_is_one_line(run_cli, tmp_path):
    result = run_cli(["run", "--task", "regression", "--loader", "regression", "--set", "run.monitor=val_acc", "--out", tmp_path / "x"])
    assert_one_line_error(result, "run.monitor = 'val_acc' is not a metric of task 'regression'", "val_r2")


@pytest.mark.parametrize(("task", "source"), [("next_token", "tokens"), ("regression", "regression")])
def test_streamed_pytree_batches_train_like_in_memory_ones(tmp_path, task, source):
    """Dict batches of tokens and float targets, streamed from Python with a partial last batch
    (90 rows in batches of 32), train; before training, their evaluation equals the same data's
    held in memory (same initial weights: the padding rows count for nothing)."""
    import jaxyard
    from jaxyard.core.train.build import build
    from jaxyard.core.train.loop import make_loop, summarize

    from helpers import LOCAL

    registry = jaxyard.build_registry(plugins=[str(LOCAL / "streams.py")], strict=True)
    sets = ["run.checkpointer=none", "model.hidden_dims=16", "model.dropout_rate=0.0", "run.warmup_steps=0"]

    def built(loader, *more):
        options = {"task": task, "loader": loader, "epochs": 1}
        return build(jaxyard.resolve_config(registry, jaxyard.load_settings(), options=options, sets=[*sets, *more]))

    streamed = built("stream-of", f"loader.source={source}")
    sizes = ["loader.train_size=90", "loader.val_size=30", "loader.test_size=30"] + ["loader.seq_len=8"] * (source == "tokens")
    in_memory = built(source, *sizes)
    loop = make_loop(streamed)
    before = summarize(streamed, loop.evaluate("val"))
    expected = summarize(in_memory, make_loop(in_memory).evaluate("val"))
    assert before == pytest.approx(expected, rel=1e-5)
    train = summarize(streamed, loop.train_epoch(1))
    after = summarize(streamed, loop.evaluate("val"))
    assert streamed.sizes["train"] == 90 and all(math.isfinite(v) for v in (*train.values(), *after.values()))
    assert after["loss"] < before["loss"]


def test_a_task_builds_its_optimizer_with_values_of_its_own_traced_or_not():
    """``make(b1=...)`` validates a concrete value (one line naming the task) and takes a traced one
    (a sweep's input) as it is."""
    import jax
    import jax.numpy as jnp

    import jaxyard
    from jaxyard.core.train.build import make_tx

    config = jaxyard.resolve_config(jaxyard.build_registry(), jaxyard.load_settings())

    class Own(jaxyard.Task):
        def __init__(self, b1):
            self.b1 = b1

        def optimizer(self, make):
            return make(learning_rate=2e-3, b1=self.b1)

    state = jax.jit(lambda b1: make_tx(config, lambda step: 1e-3, Own(b1)).init(jnp.zeros(2)))(0.5)
    assert jax.tree.leaves(state)
    with pytest.raises(jaxyard.PluginError, match=r"task 'classification' .*asked optimizer 'adam' for \{'b1': 1.5\}"):
        make_tx(config, lambda step: 1e-3, Own(1.5))


@pytest.mark.parametrize(("task", "fragments"), [
    ("summarize-raises", ["task 'summarize-raises' (plugin ", "broken_tasks.py)", "failed summarizing", "KeyError"]),
    ("loss-raises", ["task 'loss-raises' (plugin ", "broken_tasks.py) cannot compute its loss with model 'mlp'", "AttributeError: no such thing"]),
])
def test_a_task_whose_own_code_fails_is_named_in_one_line(run_cli, tmp_path, task, fragments):
    """Its summarize() (after the first epoch) or its loss (traced on two rows before anything is written)."""
    from helpers import LOCAL, tiny

    result = run_cli(["--plugin", LOCAL / "broken_tasks.py", "run", "--task", task, "--epochs", "1", "--checkpointer", "none",
                      *[x for s in tiny() for x in ("--set", s)], "--out", tmp_path / "x"])
    assert_one_line_error(result, *fragments, exit_code=1 if task == "summarize-raises" else 2)
