"""The built-in rnn (flax's stock GRU/LSTM cells through nnx.RNN): it trains and evaluates on a
sequence loader (next_token on tokens, beating a unigram model) and on features read as a
sequence, is causal for next_token (bidirectional is refused there), and passes the kit for
next_token (tests/kit/test_conformance.py checks it for classification)."""

import json
import math

import numpy as np

import jaxyard
from jaxyard.core.train.build import build
from jaxyard.core.train.loop import make_loop, summarize
from jaxyard.testing import check_component

from helpers import assert_one_line_error, tiny

TOKENS = dict(train_size=300, val_size=100, test_size=50, seq_len=8)


def test_next_token_on_the_tokens_loader_beats_a_unigram_model(run_cli, tmp_path):
    """2 epochs from the CLI; the validation perplexity below the unigram model's (token
    frequencies of the training split, scored on the validation split) by a third."""
    from jaxyard.plugins.loaders import TokensParams, tokens

    data = tokens(TokensParams(**TOKENS), seed=0)
    train, val = np.asarray(data.train["tokens"])[:, 1:], np.asarray(data.val["tokens"])[:, 1:]
    counts = np.bincount(train.ravel(), minlength=data.num_classes) + 1.0
    unigram = float(np.exp(-np.mean(np.log((counts / counts.sum())[val.ravel()]))))
    sets = [x for k, v in TOKENS.items() for x in ("--set", f"loader.{k}={v}")]
    out = tmp_path / "t"
    result = run_cli(["run", "--task", "next_token", "--loader", "tokens", "--model", "rnn", "--epochs", "2", "--batch-size", "16",
                      "--lr", "1e-2", "--set", "model.hidden=32", "--set", "run.warmup_steps=4", "--set", "run.curves=false",
                      "--checkpointer", "none", *sets, "--out", out])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = json.loads((out / "summary.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in history if "val_perplexity" in r]
    assert len(epochs) == 2 and all(math.isfinite(r["val_perplexity"]) for r in epochs)
    assert epochs[-1]["val_perplexity"] <= unigram * 2 / 3, (epochs[-1], unigram)
    assert math.isfinite(summary["test"]["test_perplexity"]) and "Model created: rnn" in result.stdout


def test_classification_reads_features_as_a_sequence():
    """Features (n, 6) are 6 steps of one channel (a bidirectional LSTM: its carries are
    pairs, its head reads both directions): an epoch trains, evaluation is finite and deterministic."""
    registry = jaxyard.build_registry()
    config = jaxyard.resolve_config(
        registry, jaxyard.load_settings(), options={"epochs": 1, "batch_size": 25, "model": "rnn"},
        sets=tiny("run.checkpointer=none", "loader.features=6", "model.hidden=8", "model.cell=lstm",
                  "model.bidirectional=true", without=["model"]),
    )
    built = build(config)
    assert built.context["input_shape"] == (6,)
    loop = make_loop(built)
    before = summarize(built, loop.evaluate("val"))
    train = summarize(built, loop.train_epoch(1))
    after, again = summarize(built, loop.evaluate("val")), summarize(built, loop.evaluate("val"))
    assert all(math.isfinite(v) for v in (*train.values(), *after.values()))
    assert after == again and after["loss"] != before["loss"]


def test_it_is_causal_for_next_token():
    """A token changed at position 5 changes no logits before it."""
    from flax import nnx

    from jaxyard.plugins.models import rnn

    model = rnn.factory(rnn.Params(layers=2, hidden=8), input_shape=(8,), num_outputs=11, vocab_size=11,
                        rngs=nnx.Rngs(params=0, dropout=1, default=2))
    model.eval()
    tokens = np.arange(16, dtype=np.int32).reshape(2, 8) % 11
    changed = tokens.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    a, b = np.asarray(model(tokens)), np.asarray(model(changed))
    assert a.shape == (2, 8, 11)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_bidirectional_next_token_is_refused_in_one_line(run_cli, tmp_path):
    result = run_cli(["run", "--task", "next_token", "--loader", "tokens", "--model", "rnn", "--set", "model.bidirectional=true",
                      "--out", tmp_path / "x"])
    assert_one_line_error(result, "model 'rnn'", "bidirectional = true", "next_token", "model.bidirectional=false")
    assert not (tmp_path / "x").exists()


def test_the_kit_passes_for_next_token(tmp_path):
    # the blocks' own checks run for classification in the conformance test, and the CLI test above trains it for next_token
    same = "the conformance test's, for classification: the same cells"
    skip = {check: same for check in ("train_eval_modes", "batch_independent", "deterministic", "uses_rngs", "jit_equals_eager")}
    skip.update(light_import="the conformance test's", trains="trained below the unigram perplexity from the CLI above")
    results = check_component("model:rnn", task="next_token", tmp_path=tmp_path, params={"hidden": 16}, skip=skip)
    assert all(r.startswith(("passed", "skipped")) for r in results.values()), results
    assert results["returns_module"] == "passed: task next_token on the kit's tokens example: input_shape (8,), output (2, 8, 11)"
