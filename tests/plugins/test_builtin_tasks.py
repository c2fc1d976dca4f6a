"""The built-in tasks called directly (no engine): their losses against optax, their sums (padding,
additivity), their metrics, their refusals, their traced parameters; and the synthetic loaders for them."""

import copy
from types import SimpleNamespace

import numpy as np
import optax
import pytest

import jaxyard
from jaxyard.core.registry.params import build
from jaxyard.plugins import tasks as T


@pytest.fixture(scope="module")
def registry():
    return jaxyard.build_registry(strict=True)


def make(registry, name, **values):
    entry = registry.get("task", name)
    return entry.create(build(entry.params, values, where=f"task {name!r}"))


def load(registry, name, **values):
    entry = registry.get("loader", name)
    return entry.create(build(entry.params, values, where=f"loader {name!r}"), seed=0)


def replaced(params, **values):
    """``params`` with traced values set as the engine sets them: no validator run."""
    out = copy.copy(params)
    for name, value in values.items():
        object.__setattr__(out, name, value)
    return out


def host(sums):
    return {k: float(v) for k, v in sums.items()}


def linear(w):
    """A 'model': any callable of the inputs."""
    import jax.numpy as jnp

    return lambda x: jnp.asarray(x) @ w


rng = np.random.default_rng(0)
X = rng.normal(size=(12, 4)).astype(np.float32)
W3 = rng.normal(size=(4, 3)).astype(np.float32)
Y3 = rng.normal(size=(12, 3)).astype(np.float32) + 5.0
LABELS = (rng.random((12, 3)) < 0.4).astype(np.int32)
VOCAB, SEQ = 7, 5
TOKENS = rng.integers(0, VOCAB, size=(6, SEQ + 1)).astype(np.int32)
TABLE = rng.normal(size=(VOCAB, VOCAB)).astype(np.float32)


def bigram(table):
    import jax.numpy as jnp

    return lambda tokens: jnp.asarray(table)[tokens]


# name, task values, model, batch, garbage targets for padded rows
CASES = {
    "regression": ({}, linear(W3), (X, Y3), lambda y: np.full_like(y, 1e4)),
    "huber": ({"loss": "huber", "delta": 0.5}, linear(W3), (X, Y3), lambda y: np.full_like(y, -1e4)),
    "regression_1d": ({}, linear(W3[:, :1]), (X, Y3[:, 0]), lambda y: np.full_like(y, 7.0)),
    "multilabel": ({}, linear(W3), (X, LABELS), lambda y: 1 - y),
    "focal": ({"focal_gamma": 2.0}, linear(W3), (X, LABELS), lambda y: 1 - y),
    "next_token": ({}, bigram(TABLE), {"tokens": TOKENS}, lambda t: (t + 3) % VOCAB),
}
TASK_OF = {"huber": "regression", "regression_1d": "regression", "focal": "multilabel"}


def case(registry, name):
    values, model, batch, garbage = CASES[name]
    return make(registry, TASK_OF.get(name, name), **values), model, batch, garbage


def rows(batch, index):
    if isinstance(batch, dict):
        return {k: v[index] for k, v in batch.items()}
    return tuple(a[index] for a in batch)


def n_rows(batch):
    return len(batch["tokens"] if isinstance(batch, dict) else batch[1])


def test_tasks_are_registered_with_their_metrics(registry):
    found = {e.name: e for e in registry.entries("task")}
    assert {"classification", "regression", "multilabel", "next_token"} <= set(found)
    assert make(registry, "regression").metrics == {"loss": "min", "mse": "min", "mae": "min", "r2": "max"}
    assert make(registry, "multilabel").metrics == {"loss": "min", "acc": "max", "exact": "max"}
    assert make(registry, "next_token").metrics == {"loss": "min", "perplexity": "min", "token_acc": "max"}
    for name in ("regression", "multilabel", "next_token"):
        assert found[name].description and "\n" not in found[name].description


def test_regression_params_are_checked(registry):
    with pytest.raises(jaxyard.UsageError, match="loss"):
        make(registry, "regression", loss="absolute")
    with pytest.raises(jaxyard.UsageError, match="delta"):
        make(registry, "regression", delta=0.0)
    assert T.RegressionParams.__attrs_attrs__.delta.metadata["traced"]
    assert T.MultilabelParams.__attrs_attrs__.focal_gamma.metadata["traced"]


def test_losses_equal_optax(registry):
    import jax
    import jax.numpy as jnp

    @jax.jit  # one program for the references: quicker than op by op
    def references(pred, y, labels, logits, tokens):
        return (
            jnp.mean(optax.losses.squared_error(pred, y)),
            jnp.mean(optax.losses.huber_loss(pred, y, delta=0.5)),
            jnp.mean(optax.losses.sigmoid_binary_cross_entropy(pred, labels)),
            jnp.mean(optax.losses.sigmoid_focal_loss(pred, labels, gamma=2.0)),
            jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, tokens)),
        )

    expected = references(X @ W3, Y3, LABELS.astype(np.float32), TABLE[TOKENS[:, :-1]], TOKENS[:, 1:])
    mask = np.ones(12, np.float32)
    for name, reference in zip(("regression", "huber", "multilabel", "focal"), expected, strict=False):
        task, model, batch, _ = case(registry, name)
        np.testing.assert_allclose(task.loss(model, batch, mask)[0], reference, rtol=1e-6, err_msg=name)
    loss, sums = case(registry, "next_token")[0].loss(bigram(TABLE), {"tokens": TOKENS}, np.ones(6, np.float32))
    np.testing.assert_allclose(loss, expected[-1], rtol=1e-6)
    assert float(sums["count"]) == 6 * SEQ  # tokens, not rows


@pytest.mark.parametrize("name", list(CASES))
def test_padded_rows_change_no_sum(registry, name):
    """The second half of a batch made padding (garbage features and targets, mask 0): the loss and
    the sums are those of the first half alone."""
    task, model, batch, garbage = case(registry, name)
    n = n_rows(batch)
    half = rows(batch, slice(0, n // 2))
    loss, sums = task.loss(model, half, np.ones(n // 2, np.float32))
    if isinstance(batch, dict):
        padded = {"tokens": np.concatenate([half["tokens"], garbage(half["tokens"])])}
    else:
        padded = (np.concatenate([half[0], half[0] * 100]), np.concatenate([half[1], garbage(half[1])]))
    mask = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(np.float32)
    padded_loss, padded_sums = task.loss(model, padded, mask)
    np.testing.assert_allclose(padded_loss, loss, rtol=1e-6)
    assert padded_sums.keys() == sums.keys()
    for key in sums:
        np.testing.assert_allclose(padded_sums[key], sums[key], rtol=1e-6, err_msg=key)


def test_regression_metrics_match_numpy(registry):
    task = make(registry, "regression")
    pred = X @ W3
    _, sums = task.loss(linear(W3), (X, Y3), np.ones(12, np.float32))
    got = task.summarize(host(sums))
    r2 = np.mean([1 - np.sum((pred[:, j] - Y3[:, j]) ** 2) / np.sum((Y3[:, j] - Y3[:, j].mean()) ** 2) for j in range(3)])
    np.testing.assert_allclose(got["mse"], np.mean((pred - Y3) ** 2), rtol=1e-5)
    np.testing.assert_allclose(got["loss"], got["mse"], rtol=1e-6)
    np.testing.assert_allclose(got["mae"], np.mean(np.abs(pred - Y3)), rtol=1e-5)
    np.testing.assert_allclose(got["r2"], r2, rtol=1e-4)


def test_regression_r2_of_perfect_predictions_is_one(registry):
    task = make(registry, "regression")
    y = X @ W3
    _, sums = task.loss(linear(W3), (X, y), np.ones(12, np.float32))
    got = task.summarize(host(sums))
    assert got["r2"] == pytest.approx(1.0, abs=1e-5) and got["mse"] == pytest.approx(0.0, abs=1e-9)
    # a constant target predicted exactly scores 1, predicted wrongly 0 (scikit-learn's convention)
    _, sums = task.loss(lambda x: np.zeros((len(x), 1), np.float32), (X, np.zeros(12, np.float32)), np.ones(12, np.float32))
    assert task.summarize(host(sums))["r2"] == 1.0
    _, sums = task.loss(lambda x: np.ones((len(x), 1), np.float32), (X, np.zeros(12, np.float32)), np.ones(12, np.float32))
    assert task.summarize(host(sums))["r2"] == 0.0


def test_regression_refuses_a_model_output_of_another_shape(registry):
    with pytest.raises(ValueError, match=r"outputs of shape \(12, 3\) for targets of shape \(12, 1\)"):
        make(registry, "regression").loss(linear(W3), (X, Y3[:, 0]), np.ones(12, np.float32))


def test_multilabel_accuracy_and_exact_match(registry):
    task = make(registry, "multilabel")
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1]], np.int32)
    logits = np.array([[3.0, -1.0], [2.0, -2.0], [1.0, 0.5], [-1.0, -1.0]], np.float32)  # 6 of 8 right, rows 0 and 2 exact
    _, sums = task.loss(lambda x: logits, (np.zeros((4, 1), np.float32), y), np.ones(4, np.float32))
    got = task.summarize(host(sums))
    assert got["acc"] == pytest.approx(6 / 8) and got["exact"] == pytest.approx(2 / 4)
    binary = task.loss(lambda x: logits[:, :1], (np.zeros((4, 1), np.float32), y[:, 0]), np.ones(4, np.float32))[1]
    assert task.summarize(host(binary))["acc"] == pytest.approx(3 / 4)  # (n,) labels: one label


def test_next_token_counts_tokens_under_its_token_mask(registry):
    task = make(registry, "next_token")
    token_mask = np.ones_like(TOKENS, np.float32)
    token_mask[0, -2:] = 0  # row 0: its last two tokens are padding
    token_mask[1, :] = 0
    row_mask = np.array([1, 1, 1, 1, 1, 0], np.float32)  # row 5: a padded row
    loss, sums = task.loss(bigram(TABLE), {"tokens": TOKENS, "mask": token_mask}, row_mask)
    assert float(sums["count"]) == SEQ - 2 + 0 + 3 * SEQ
    weight = token_mask[:, 1:] * row_mask[:, None]
    per_token = np.asarray(optax.losses.softmax_cross_entropy_with_integer_labels(TABLE[TOKENS[:, :-1]], TOKENS[:, 1:]))
    np.testing.assert_allclose(loss, np.sum(per_token * weight) / weight.sum(), rtol=1e-6)
    right = (TABLE[TOKENS[:, :-1]].argmax(-1) == TOKENS[:, 1:]) * weight
    got = task.summarize(host(sums))
    assert got["token_acc"] == pytest.approx(right.sum() / weight.sum())
    assert got["perplexity"] == pytest.approx(np.exp(got["loss"]), rel=1e-9)
    assert task.summarize({"loss": 1e6, "token_acc": 0.0, "count": 1.0})["perplexity"] > 1e300  # no overflow error


def test_contexts(registry):
    data = load(registry, "regression", train_size=20, val_size=5, test_size=5, targets=2)
    assert make(registry, "regression").context(data, (data.train.x, data.train.y)) == {"num_outputs": 2}
    assert make(registry, "multilabel").context(None, (X, LABELS)) == {"num_outputs": 3}
    assert make(registry, "multilabel").context(None, (X, LABELS[:, 0])) == {"num_outputs": 1}
    task = make(registry, "next_token")
    expected = {"num_outputs": VOCAB, "vocab_size": VOCAB, "seq_len": SEQ, "input_shape": (SEQ,)}
    tokens = {"tokens": np.full((2, SEQ + 1), VOCAB - 1, np.int32)}
    assert task.context(None, tokens) == expected  # the largest token + 1
    assert task.context(SimpleNamespace(num_classes=30), tokens)["vocab_size"] == 30
    assert task.output_shape(expected) == (SEQ, VOCAB)
    # what the context cannot read it leaves to check, which names the split
    assert make(registry, "regression").context(None, {"tokens": TOKENS}) == {"num_outputs": 1}
    assert task.context(None, (X, LABELS))["seq_len"] == 1
    np.testing.assert_array_equal(task.inputs({"tokens": TOKENS}), TOKENS[:, :-1])


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_integer_labels_for_regression_and_float_targets_for_classification_are_one_line(registry):
    where = "loader 'synthetic': the train split"
    with pytest.raises(jaxyard.UsageError) as err:
        make(registry, "regression").check((X, np.arange(12, dtype=np.int32)), where, {"num_outputs": 1})
    assert one_line(err) == (f"{where} gives integer labels (int32); task 'regression' needs float targets "
                             "(--task classification trains on integer labels)")
    with pytest.raises(jaxyard.UsageError) as err:
        make(registry, "classification").check((X, Y3[:, 0]), where, {"num_classes": 3, "num_outputs": 3})
    text = one_line(err)
    assert text.startswith(where) and "float32" in text and "'classification'" in text and "regression" in text


@pytest.mark.parametrize(
    "name, batch, context, match",
    [
        ("regression", (X, np.r_[Y3[:11, 0], np.nan]), {"num_outputs": 1}, r"holds nan in the targets of row 11; .* finite"),
        ("regression", (X, Y3), {"num_outputs": 1}, "gives 3 targets per example; the training split gives 1"),
        ("regression", (X, Y3[:, :, None]), {"num_outputs": 1}, r"shape \(12, 3, 1\)"),
        ("regression", {"tokens": TOKENS}, {"num_outputs": 1}, r"without targets \(tokens\)"),
        ("multilabel", (X, np.arange(12, dtype=np.int32)), {"num_outputs": 1}, r"integer labels \(int32\) 0..11; .*classification"),
        ("multilabel", (X, Y3), {"num_outputs": 3}, r"float32 targets \(such as .*\); .*--task regression"),
        ("multilabel", (X, LABELS), {"num_outputs": 2}, "gives 3 labels per example; the training split gives 2"),
        ("next_token", (X, LABELS), {"vocab_size": VOCAB, "seq_len": SEQ}, r"gives \(x, y\) rows; .*'tokens'"),
        ("next_token", {"tokens": TOKENS.astype(np.float32)}, {"vocab_size": VOCAB, "seq_len": SEQ}, "float32 tokens; .*integer"),
        ("next_token", {"tokens": TOKENS}, {"vocab_size": VOCAB - 1, "seq_len": SEQ}, r"outside 0..5"),
        ("next_token", {"tokens": TOKENS}, {"vocab_size": VOCAB, "seq_len": SEQ + 1}, r"needs \(n, 7\)"),
        ("next_token", {"tokens": TOKENS[:, :1]}, {"vocab_size": VOCAB, "seq_len": 1}, r"shape \(6, 1\); .*T >= 1"),
        ("next_token", {"tokens": TOKENS, "mask": np.ones((6, 2))}, {"vocab_size": VOCAB, "seq_len": SEQ}, "token mask of shape"),
    ],
)
def test_checks_refuse_in_one_line(registry, name, batch, context, match):
    with pytest.raises(jaxyard.UsageError, match=match) as err:
        make(registry, name).check(batch, "the val split", context)
    assert one_line(err).startswith("the val split ")


def test_checks_accept_what_the_tasks_train_on(registry):
    make(registry, "regression").check((X, Y3), "split", {"num_outputs": 3})
    make(registry, "multilabel").check((X, LABELS.astype(bool)), "split", {"num_outputs": 3})
    make(registry, "multilabel").check((X, LABELS.astype(np.float32)), "split", {"num_outputs": 3})
    make(registry, "next_token").check({"tokens": TOKENS, "mask": np.ones_like(TOKENS, bool)}, "split", {"vocab_size": VOCAB, "seq_len": SEQ})


@pytest.mark.parametrize(
    "name, field, values, model, batch",
    [
        ("classification", "label_smoothing", (0.0, 0.1, 0.3), linear(W3), (X, np.arange(12, dtype=np.int32) % 3)),
        ("regression", "delta", (0.1, 1.0, 3.0), linear(W3), (X, Y3)),
        ("multilabel", "focal_gamma", (0.0, 1.0, 2.0), linear(W3), (X, LABELS)),
    ],
)
def test_traced_parameters_jit_and_vmap_over_trials(registry, name, field, values, model, batch):
    import jax
    import jax.numpy as jnp

    extra = {"loss": "huber"} if name == "regression" else {}
    entry = registry.get("task", name)
    params = build(entry.params, extra, where=name)
    mask = jnp.ones(12)

    def trial(value):
        return entry.create(replaced(params, **{field: value})).loss(model, batch, mask)[0]

    losses = jax.jit(jax.vmap(trial))(jnp.asarray(values, jnp.float32))
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))
    eager = [entry.create(build(entry.params, {**extra, field: value}, where=name)).loss(model, batch, mask)[0] for value in values]
    np.testing.assert_allclose(losses, eager, rtol=1e-5)


# -- the loaders ----------------------------------------------------------------------------------


def arrays(split):
    return {k: np.asarray(v) for k, v in split.items()} if isinstance(split, dict) else {"x": split.x, "y": split.y}


@pytest.mark.parametrize("name", ["regression", "multilabel", "tokens"])
def test_loaders_are_deterministic_and_data_seed_changes_them(registry, name):
    small = {"train_size": 50, "val_size": 10, "test_size": 10}
    first, again, other = load(registry, name, **small), load(registry, name, **small), load(registry, name, data_seed=1, **small)
    for split in ("train", "val", "test"):
        a, b, c = arrays(getattr(first, split)), arrays(getattr(again, split)), arrays(getattr(other, split))
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert any(not np.array_equal(a[key], c[key]) for key in a)


def test_regression_loader_shapes():
    import jaxyard.plugins.loaders as L

    data = L.regression(L.RegressionParams(train_size=30, val_size=10, test_size=20), seed=0)
    assert (data.train.x.shape, data.train.y.shape, data.test.y.shape) == ((30, 8), (30,), (20,))
    assert data.train.x.dtype == data.train.y.dtype == np.float32 and data.num_classes is None
    two = L.regression(L.RegressionParams(targets=2, features=3), seed=0)
    assert two.train.y.shape == (4000, 2) and two.val.x.shape == (500, 3)
    y = np.concatenate([two.train.y, two.val.y, two.test.y])
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=0.05)  # signal standardized, noise 0.1


def test_multilabel_loader_shapes_and_balance():
    import jaxyard.plugins.loaders as L

    data = L.multilabel(L.MultilabelParams(), seed=0)
    assert data.train.x.shape == (1000, 16) and data.train.y.shape == (1000, 5) and data.num_classes is None
    assert set(np.unique(data.train.y)) == {0, 1}
    share = data.train.y.mean(axis=0)
    assert share.min() > 0.1 and share.max() < 0.5  # every label occurs; all-zeros scores below 0.9 accuracy
    assert L.multilabel(L.MultilabelParams(labels=1, train_size=10), seed=0).train.y.shape == (10,)


def test_tokens_loader_beats_unigram_with_the_previous_token(registry):
    """A bigram model fitted on the training split scores a far lower test perplexity than a unigram
    model, measured by the next_token task itself."""
    data = load(registry, "tokens")
    train, test = data.train["tokens"], data.test["tokens"]
    assert train.shape == (2000, 33) and train.dtype == np.int32 and data.num_classes == 24
    assert test.min() >= 0 and test.max() < 24
    counts = np.ones((24, 24))
    np.add.at(counts, (train[:, :-1].ravel(), train[:, 1:].ravel()), 1)
    unigram = np.log(counts.sum(axis=0) / counts.sum()).astype(np.float32)
    task = make(registry, "next_token")
    task.check(data.test, "test", task.context(data, data.train))
    mask = np.ones(len(test), np.float32)
    table = np.log(counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)
    with_previous = task.summarize(host(task.loss(bigram(table), data.test, mask)[1]))["perplexity"]
    without = task.summarize(host(task.loss(lambda t: np.broadcast_to(unigram, (*t.shape, 24)), data.test, mask)[1]))["perplexity"]
    assert with_previous < 0.5 * without
