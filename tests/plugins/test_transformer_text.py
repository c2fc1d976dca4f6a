"""The transformer and the text loader: next_token on the default text (the standard library's
source) halves a unigram model's perplexity from the CLI; the language model is causal; the
sequence classifier trains on a classification loader; the loader splits by position,
deterministically, and refuses bad files in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import jaxyard
from jaxyard.plugins.loaders import TextParams, text
from jaxyard.testing import check_component

from helpers import as_options, assert_one_line_error, tiny

# A configuration that trains in seconds: 100,000 characters of the default text in windows of 16
# bytes (5,625 training windows), one block of width 32, 2 epochs of batches of 32 (352 steps):
# a validation perplexity of 7.5 against the unigram model's 21.0 (Python 3.11).
SMALL_TEXT = {"seq_len": 16, "max_chars": 100_000}
SMALL_MODEL = {"dim": 32, "layers": 1, "heads": 2, "dropout_rate": 0.0, "tie_embeddings": "false"}


def unigram_perplexity(data) -> float:
    """Perplexity on the val split's targets of the training split's token frequencies (add-one smoothed)."""
    train, val = np.asarray(data.train["tokens"])[:, 1:], np.asarray(data.val["tokens"])[:, 1:]
    counts = np.bincount(train.ravel(), minlength=data.num_classes) + 1.0
    return float(np.exp(-np.mean(np.log((counts / counts.sum())[val.ravel()]))))


def test_next_token_on_the_default_text_halves_the_unigram_perplexity(run_cli, tmp_path):
    unigram = unigram_perplexity(text(TextParams(**SMALL_TEXT), seed=0))
    sets = [f"loader.{k}={v}" for k, v in SMALL_TEXT.items()] + [f"model.{k}={v}" for k, v in SMALL_MODEL.items()]
    result = run_cli(["run", "--task", "next_token", "--loader", "text", "--model", "transformer", "--epochs", "2",
                      "--batch-size", "32", "--lr", "1e-2", "--checkpointer", "none", "--out", tmp_path / "lm",
                      *as_options([*sets, "run.warmup_steps=10", "run.curves=false"])])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    last = json.loads((tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_perplexity"] <= unigram / 2, (last["val_perplexity"], unigram)
    assert f"Val   - Loss: {last['val_loss']:.4f}, Perplexity: {last['val_perplexity']:.4f}" in result.stdout


def test_the_sequence_classifier_trains_on_a_classification_loader(run_cli, tmp_path):
    """16 features read as 16 positions of one channel, 4 classes, one epoch."""
    model = ["model.dim=16", "model.layers=1", "model.heads=2"]
    result = run_cli(["run", "--model", "transformer", "--epochs", "1", "--batch-size", "16", "--checkpointer", "none",
                      "--out", tmp_path / "c", *as_options([*tiny(without=["model"]), *model, "run.curves=false"])])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["task"] == "classification" and math.isfinite(summary["best"]["val_loss"]), summary
    assert 0.0 <= summary["test"]["test_acc"] <= 1.0


def build(vocab_size=None, *, input_shape=(12,), num_outputs=11, **params):
    from flax import nnx

    from jaxyard.plugins.models import transformer

    p = transformer.Params(**{"dim": 16, "layers": 2, "heads": 2, **params})
    model = transformer.factory(p, input_shape=input_shape, num_outputs=num_outputs, rngs=nnx.Rngs(0), vocab_size=vocab_size,
                                seq_len=input_shape[0] if vocab_size else None)
    model.eval()
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_the_language_model_is_causal(tie):
    """Changing the token at position 7 changes no logits before it, and those from it on."""
    model = build(11, tie_embeddings=tie)
    tokens = np.random.default_rng(0).integers(0, 11, size=(3, 12)).astype(np.int32)
    changed = tokens.copy()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    a, b = np.asarray(model(tokens)), np.asarray(model(changed))
    assert a.shape == (3, 12, 11)
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert (np.abs(a[:, 7:] - b[:, 7:]).max(axis=(0, 2)) > 1e-4).all()
    assert ("head" in vars(model) and model.head is None) == tie  # tied: the output is the embedding, transposed


def test_the_classifier_reads_features_as_positions_and_sees_every_one():
    """(batch, 4, 4, 2): 4 positions of 8 channels ((batch, L) features: the CLI test above)."""
    shape = (4, 4, 2)
    model = build(input_shape=shape, num_outputs=3, layers=1)
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    later = x.copy()
    later[:, -1] += 1.0
    a, b = np.asarray(model(x)), np.asarray(model(later))
    assert a.shape == (2, 3) and np.isfinite(a).all()
    assert np.abs(a - b).max() > 1e-5  # not causal: the last position reaches the pooled output


def test_the_classifier_refuses_integer_tokens_in_one_line():
    with pytest.raises(ValueError) as info:
        build(input_shape=(12,), num_outputs=3)(np.zeros((2, 12), np.int32))
    assert "only as a language model (task next_token)" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("sets", "fragment"), [
    (["model.heads=3"], "model 'transformer': dim = 128 is not a multiple of heads = 3"),
    (["model.max_len=16"], "max_len = 16 is shorter than the task's seq_len, 64; set model.max_len >= 64"),
])
def test_a_transformer_that_cannot_be_built_is_one_line(run_cli, tmp_path, sets, fragment):
    result = run_cli(["run", "--task", "next_token", "--loader", "text", "--model", "transformer", "--epochs", "1",
                      "--out", tmp_path / "x", *as_options(["loader.max_chars=5000", *sets])])
    assert_one_line_error(result, fragment)


SAME_BLOCKS = "the same blocks are checked for classification by the built-ins' conformance test"


def test_the_transformer_passes_the_kit_for_next_token():
    """The language model's shapes through the kit; the checks of its blocks' behaviour are those of the
    classifier (tests/kit/test_conformance.py), its training the CLI test above."""
    skip = {check: SAME_BLOCKS for check in ("train_eval_modes", "batch_independent", "deterministic", "uses_rngs", "jit_equals_eager")}
    skip.update(light_import="the conformance test's", trains="trained to half the unigram perplexity from the CLI above")
    results = check_component("model:transformer", task="next_token", params={"dim": 16, "layers": 1, "heads": 2}, skip=skip)
    assert results["returns_module"] == "passed: task next_token on the kit's tokens example: input_shape (8,), output (2, 8, 11)"
    assert results["output_shape"] == "passed: task next_token: input_shape (8,), output (8, 8, 11)"
    assert all(r.startswith(("passed", "skipped")) for r in results.values()), results


# --- the text loader ------------------------------------------------------------------------


CORPUS = "def f(x):\n    return x + 1  # café, naïve, 東京\n" * 12  # 552 characters, 612 UTF-8 bytes


def windows(ids, start, end, seq_len, stride):
    return np.stack([ids[i:i + seq_len + 1] for i in range(start, end - seq_len, stride)])


@pytest.mark.parametrize("stride", [0, 3])
def test_text_splits_by_position_into_windows(tmp_path, stride):
    (tmp_path / "t.txt").write_text(CORPUS, encoding="utf-8")
    data = text(TextParams(path=str(tmp_path / "t.txt"), seq_len=8, stride=stride, val_fraction=0.1, test_fraction=0.2), seed=0)
    ids = np.frombuffer(CORPUS.encode(), np.uint8).astype(np.int32)
    n = len(ids)
    val, test = round(n * 0.1), round(n * 0.2)
    assert data.num_classes == 256 and data.train["tokens"].dtype == np.int32
    np.testing.assert_array_equal(data.train["tokens"], windows(ids, 0, n - val - test, 8, stride or 8))
    np.testing.assert_array_equal(data.val["tokens"], windows(ids, n - val - test, n - test, 8, 8))
    np.testing.assert_array_equal(data.test["tokens"], windows(ids, n - test, n, 8, 8))


def test_text_by_characters_and_the_same_on_every_load(tmp_path):
    (tmp_path / "t.txt").write_text(CORPUS, encoding="utf-8")
    params = TextParams(path=str(tmp_path / "t.txt"), tokenizer="char", seq_len=16, max_chars=400)
    data, again = text(params, seed=0), text(params, seed=7)  # the run's seed does not change the data
    alphabet = sorted(set(CORPUS[:400]))
    assert data.num_classes == len(alphabet)
    assert "".join(alphabet[i] for i in data.train["tokens"][0]) == CORPUS[:17]
    last = data.test["tokens"][-1]
    assert "".join(alphabet[i] for i in last) in CORPUS[:400][-40:]
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(data, split)["tokens"], getattr(again, split)["tokens"])


def test_the_default_text_is_the_standard_librarys_source():
    import sysconfig
    from pathlib import Path

    data = text(TextParams(max_chars=3000, seq_len=16), seed=0)
    first = (Path(sysconfig.get_paths()["stdlib"]) / "json" / "__init__.py").read_text(encoding="utf-8")
    ids = np.frombuffer(first[:3000].encode(), np.uint8).astype(np.int32)  # its first module is longer than that
    assert data.num_classes == 256
    np.testing.assert_array_equal(data.train["tokens"], windows(ids, 0, len(ids) - 2 * round(len(ids) * 0.05), 16, 16))


@pytest.mark.parametrize(("content", "params", "fragments"), [
    (None, {}, ["loader 'text': {path}: no such file; pass --set loader.path=FILE"]),
    ("dir", {}, ["loader 'text': {path} is a directory"]),
    (b"", {}, ["loader 'text': {path} is empty"]),
    (b"caf\xe9 latin-1", {}, ["{path} is not UTF-8 text (invalid continuation byte: byte 0xe9); convert it"]),
    (b"a short text", {"seq_len": 8}, ["{path} gives 12 tokens; its val part (val_fraction: 1 tokens) is shorter than one window "
                                       "of seq_len + 1 = 9"]),
    (b"x" * 100, {"seq_len": 8, "val_fraction": 0.5, "test_fraction": 0.45},
     ["its train part (1 - val_fraction - test_fraction: 5 tokens) is shorter"]),
])
def test_text_refuses_a_bad_file_in_one_line(tmp_path, content, params, fragments):
    path = tmp_path / "t.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(jaxyard.UsageError) as info:
        text(TextParams(path=str(path), **params), seed=0)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment.format(path=path) in message, message


def test_a_missing_text_file_is_one_line_from_the_cli(run_cli, tmp_path):
    result = run_cli(["run", "--task", "next_token", "--loader", "text", "--model", "transformer",
                      "--set", f"loader.path={tmp_path / 'nope.txt'}", "--out", tmp_path / "x"])
    assert_one_line_error(result, f"loader 'text': {tmp_path / 'nope.txt'}: no such file")
    assert not (tmp_path / "x").exists()
