"""Built-in tasks: what a run trains. Each is the objective over ``optax.losses``, its metrics as
additive sums (see :class:`jaxyard.Task`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from attrs import validators as v

from jaxyard import Task, UsageError, hookimpl, param
from jaxyard.core.task import COUNT, LOSS, features, masked_mean, targets

REGRESSION_LOSSES = ("squared", "huber")


def _kind_of(y) -> str:
    import numpy as np

    return "integer labels" if np.issubdtype(np.asarray(y).dtype, np.integer) else f"{np.asarray(y).dtype} targets"


@attrs.frozen
class ClassificationParams:
    label_smoothing: float = param(0.0, "mix this much of the uniform distribution into each one-hot label (0: off)",
                                   validator=[v.ge(0.0), v.lt(1.0)], traced=True)
    top_k: int = param(1, "also report top-k accuracy (`topK_acc`) for this k (1: accuracy only)", validator=v.ge(1))


class Classification(Task):
    """Integer labels ``y`` of shape (n,), logits (n, num_classes) from the model."""

    def __init__(self, p: ClassificationParams):
        self.p = p
        self.metrics = {LOSS: "min", "acc": "max", **({f"top{p.top_k}_acc": "max"} if p.top_k > 1 else {})}

    def context(self, data, example) -> dict[str, Any]:
        classes = getattr(data, "num_classes", None)  # None: check() says so, after the labels' dtype
        return {"num_outputs": classes and int(classes), "num_classes": classes and int(classes)}

    def check(self, batch, where, context) -> None:
        import numpy as np

        y = np.asarray(targets(batch))
        if not np.issubdtype(y.dtype, np.integer):
            raise UsageError(f"{where} gives {_kind_of(y)}; task 'classification' needs integer class labels "
                             f"(--task regression trains on float targets)")
        if y.ndim != 1:
            raise UsageError(f"{where} gives labels of shape {y.shape}; task 'classification' needs one integer label per example")
        classes = context["num_classes"]
        if not classes:
            raise UsageError(f"{where.split(':')[0]} declares no num_classes; task 'classification' needs it (its Dataset's num_classes)")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise UsageError(f"{where} has labels {int(y.min())}..{int(y.max())}, outside 0..{classes - 1} (num_classes)")

    def output_shape(self, context):
        return (context["num_classes"],)

    def predict(self, model, inputs, context) -> dict[str, Any]:
        """``class``: the most likely class (n,); ``probabilities``: the softmax of the logits (n, C)."""
        import numpy as np

        logits = np.asarray(model(inputs), np.float64)
        return {"class": logits.argmax(axis=-1).astype(np.int32), "probabilities": _softmax(logits).astype(np.float32)}

    def loss(self, model, batch, mask):
        import jax.numpy as jnp
        import optax

        x, y = features(batch), targets(batch)
        logits = model(x)
        if isinstance(self.p.label_smoothing, float) and self.p.label_smoothing == 0.0:  # a constant 0: the plain loss
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        else:
            smoothed = optax.smooth_labels(jax_one_hot(y, logits.shape[-1]), self.p.label_smoothing)
            per_example = optax.softmax_cross_entropy(logits, smoothed)
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        loss, total, count = masked_mean(per_example, mask)
        sums = {LOSS: total, "acc": jnp.sum(correct * mask), COUNT: count}
        if self.p.top_k > 1:
            top = jnp.argsort(logits, axis=-1)[..., -self.p.top_k:]
            hit = jnp.any(top == y[..., None], axis=-1).astype(jnp.float32)
            sums[f"top{self.p.top_k}_acc"] = jnp.sum(hit * mask)
        return loss, sums


def _softmax(logits):
    """The softmax over the last axis, in NumPy (host side)."""
    import numpy as np

    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def jax_one_hot(y, classes):
    import jax

    return jax.nn.one_hot(y, classes)


def classification(p: ClassificationParams):
    """Integer-label classification: softmax cross-entropy (optional label smoothing); loss, accuracy."""
    return Classification(p)


# -- shared by the tasks below --------------------------------------------------------------


def _described(y) -> str:
    """What a split's targets are, for a refusal: ``integer labels (int32)``, ``float32 targets``."""
    import numpy as np

    if np.issubdtype(y.dtype, np.integer):
        return f"integer labels ({y.dtype})"
    if y.dtype == np.bool_:
        return "bool labels"
    if np.issubdtype(y.dtype, np.floating):
        return f"{y.dtype} targets"
    return f"{y.dtype} values"


def _host_targets(batch, where: str, task: str):
    """The targets of a host batch as a NumPy array, or one line saying the batch has none."""
    import numpy as np

    try:
        return np.asarray(targets(batch))
    except (KeyError, IndexError, TypeError):
        keys = ", ".join(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise UsageError(f"{where} gives batches without targets ({keys}); task {task!r} needs (x, y) rows "
                         "(a jaxyard.Split) or {'x': ..., 'y': ...}") from None


def _width(example) -> int:
    """Targets per row of the training split's ``example`` (any it cannot read: 1, and check refuses them)."""
    import numpy as np

    try:
        y = np.asarray(targets(example))
    except (KeyError, IndexError, TypeError):
        return 1
    return int(y.shape[1]) if y.ndim == 2 else 1


def _columns(y, where: str, task: str, what: str) -> int:
    """Targets per row of ``y``: shape (n,) is one, (n, d) is d; any other shape is refused."""
    if y.ndim not in (1, 2):
        raise UsageError(f"{where} gives {what} of shape {y.shape}; task {task!r} needs shape (n,) or (n, {what})")
    return 1 if y.ndim == 1 else int(y.shape[1])


def _same_columns(columns: int, where: str, context, what: str) -> None:
    if columns != context["num_outputs"]:
        raise UsageError(f"{where} gives {columns} {what} per example; the training split gives {context['num_outputs']}")


def _as_rows(values):
    """(n,) -> (n, 1); (n, d) unchanged."""
    return values.reshape(values.shape[0], -1)


def _matched(outputs, y, task: str):
    """The model's outputs as (n, d), the shape of the targets ``y`` (traced: shapes are static)."""
    outputs = _as_rows(outputs)
    if outputs.shape != y.shape:
        raise ValueError(f"task {task!r}: the model gives outputs of shape {outputs.shape} for targets of shape {y.shape}")
    return outputs


def _is_zero(value) -> bool:
    """A parameter that is the constant 0 (a traced one never is: it may take any value)."""
    return isinstance(value, (int, float)) and value == 0


# -- regression -----------------------------------------------------------------------------


@attrs.frozen
class RegressionParams:
    loss: str = param("squared", "what is minimised: squared (the squared error) or huber (quadratic within delta, "
                      "linear beyond)", validator=v.in_(REGRESSION_LOSSES))
    delta: float = param(1.0, "huber: the error at which the loss turns from quadratic to linear (squared: unused)",
                         validator=v.gt(0.0), traced=True)


class Regression(Task):
    """Float targets ``y`` of shape (n,) or (n, d); the model gives (n, d) (d = 1 for (n,) targets).

    Each row's loss is the mean over its d targets of ``optax.losses.squared_error`` (or
    ``huber_loss``), so ``loss`` equals ``mse`` for the squared loss. ``mse`` and ``mae`` are over
    every target value. ``r2`` is the coefficient of determination of each target dimension,
    averaged over the dimensions (scikit-learn's ``r2_score`` with ``multioutput="uniform_average"``),
    computed from additive sums per dimension j: Σ squared error ``sse_j``, Σ y ``sum_y_j``,
    Σ y² ``sum_yy_j`` and ``count``; a dimension with constant targets scores 1 when predicted
    exactly, else 0. The sums are float32: standardize targets whose mean is far larger than their
    spread (|mean| > 100 x std), or R² loses precision.
    """

    metrics = {LOSS: "min", "mse": "min", "mae": "min", "r2": "max"}

    def __init__(self, p: RegressionParams):
        self.p = p

    def context(self, data, example) -> dict[str, Any]:
        return {"num_outputs": _width(example)}

    def check(self, batch, where, context) -> None:
        import numpy as np

        y = _host_targets(batch, where, "regression")
        if not np.issubdtype(y.dtype, np.floating):
            hint = " (--task classification trains on integer labels)" if np.issubdtype(y.dtype, np.integer) else ""
            raise UsageError(f"{where} gives {_described(y)}; task 'regression' needs float targets{hint}")
        _same_columns(_columns(y, where, "regression", "targets"), where, context, "targets")
        finite = np.isfinite(y.reshape(len(y), -1)).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            value = y.reshape(len(y), -1)[row][~np.isfinite(y.reshape(len(y), -1)[row])][0]
            raise UsageError(f"{where} holds {value} in the targets of row {row}; task 'regression' needs finite targets")

    def output_shape(self, context):
        return (context["num_outputs"],)

    def predict(self, model, inputs, context) -> dict[str, Any]:
        """``value``: the predicted targets (n, d), d = 1 for targets trained as (n,)."""
        import numpy as np

        return {"value": _as_rows(np.asarray(model(inputs), np.float32))}

    def loss(self, model, batch, mask):
        import jax.numpy as jnp
        import optax

        y = _as_rows(jnp.asarray(targets(batch), jnp.float32))
        predicted = _matched(jnp.asarray(model(self.inputs(batch)), jnp.float32), y, "regression")
        if self.p.loss == "huber":
            elementwise = optax.losses.huber_loss(predicted, y, delta=self.p.delta)
        else:
            elementwise = optax.losses.squared_error(predicted, y)
        loss, total, count = masked_mean(elementwise.mean(axis=1), mask)
        error = predicted - y
        rows = mask[:, None]
        sse, sum_y, sum_yy = (jnp.sum(a * rows, axis=0) for a in (jnp.square(error), y, jnp.square(y)))
        sums = {LOSS: total, "mae": jnp.sum(jnp.abs(error).mean(axis=1) * mask), COUNT: count}
        for j in range(y.shape[1]):
            sums.update({f"sse_{j}": sse[j], f"sum_y_{j}": sum_y[j], f"sum_yy_{j}": sum_yy[j]})
        return loss, sums

    def summarize(self, sums) -> dict[str, float]:
        count = float(sums[COUNT])
        dims = sum(1 for name in sums if name.startswith("sse_"))
        sse = [float(sums[f"sse_{j}"]) for j in range(dims)]
        scores = []
        for j in range(dims):
            spread = float(sums[f"sum_yy_{j}"]) - float(sums[f"sum_y_{j}"]) ** 2 / max(count, 1.0)
            if spread > 0.0:
                scores.append(1.0 - sse[j] / spread)
            else:  # constant targets (or float32 cancellation): scikit-learn's convention
                scores.append(1.0 if sse[j] == 0.0 else 0.0)
        values = max(count, 1.0) * max(dims, 1)
        return {
            LOSS: float(sums[LOSS]) / max(count, 1.0),
            "mse": sum(sse) / values,
            "mae": float(sums["mae"]) / max(count, 1.0),
            "r2": sum(scores) / max(dims, 1),
        }


def regression(p: RegressionParams):
    """Float targets: squared error or Huber loss; loss, mse, mae and R²."""
    return Regression(p)


# -- multilabel -----------------------------------------------------------------------------


@attrs.frozen
class MultilabelParams:
    focal_gamma: float = param(0.0, "focusing exponent of optax's sigmoid focal loss (0: plain sigmoid cross-entropy)",
                               validator=v.ge(0.0), traced=True)


class Multilabel(Task):
    """0/1 labels ``y`` of shape (n, L) (or (n,): a binary task, L = 1); the model gives L logits.

    Each row's loss is the mean over its L labels of ``optax.losses.sigmoid_binary_cross_entropy``
    (``sigmoid_focal_loss`` when ``focal_gamma`` is not a constant 0). A label is predicted on
    when its logit is above 0 (probability above 0.5): ``acc`` is the share of labels right, over
    rows and labels; ``exact`` the share of rows whose L labels are all right.
    """

    metrics = {LOSS: "min", "acc": "max", "exact": "max"}

    def __init__(self, p: MultilabelParams):
        self.p = p

    def context(self, data, example) -> dict[str, Any]:
        return {"num_outputs": _width(example)}

    def check(self, batch, where, context) -> None:
        import numpy as np

        y = _host_targets(batch, where, "multilabel")
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) or np.issubdtype(y.dtype, np.complexfloating):
            raise UsageError(f"{where} gives {_described(y)}; task 'multilabel' needs 0/1 labels")
        wrong = (y != 0) & (y != 1)
        if wrong.any():
            if np.issubdtype(y.dtype, np.integer):
                raise UsageError(f"{where} gives {_described(y)} {int(y.min())}..{int(y.max())}; task 'multilabel' needs "
                                 "0/1 labels, one column per label (--task classification trains on class labels)")
            value = y[wrong][0]
            raise UsageError(f"{where} gives {_described(y)} (such as {value:g}); task 'multilabel' needs 0/1 labels "
                             "(--task regression trains on float targets)")
        _same_columns(_columns(y, where, "multilabel", "labels"), where, context, "labels")

    def output_shape(self, context):
        return (context["num_outputs"],)

    def predict(self, model, inputs, context) -> dict[str, Any]:
        """``probabilities``: each label's sigmoid (n, L); ``labels``: 1 where it is above 0.5, else 0."""
        import numpy as np

        logits = _as_rows(np.asarray(model(inputs), np.float64))
        return {"probabilities": (1.0 / (1.0 + np.exp(-logits))).astype(np.float32), "labels": (logits > 0).astype(np.int32)}

    def loss(self, model, batch, mask):
        import jax.numpy as jnp
        import optax

        logits = jnp.asarray(model(self.inputs(batch)))
        y = _as_rows(jnp.asarray(targets(batch))).astype(logits.dtype)
        logits = _matched(logits, y, "multilabel")
        if _is_zero(self.p.focal_gamma):
            elementwise = optax.losses.sigmoid_binary_cross_entropy(logits, y)
        else:
            elementwise = optax.losses.sigmoid_focal_loss(logits, y, gamma=self.p.focal_gamma)
        loss, total, count = masked_mean(elementwise.mean(axis=1).astype(jnp.float32), mask)
        right = ((logits > 0) == (y > 0.5)).astype(jnp.float32)
        sums = {LOSS: total, "acc": jnp.sum(right.mean(axis=1) * mask), "exact": jnp.sum(right.min(axis=1) * mask),
                COUNT: count}
        return loss, sums


def multilabel(p: MultilabelParams):
    """0/1 labels, several per example: sigmoid cross-entropy; loss, label accuracy, exact match."""
    return Multilabel(p)


# -- next_token -----------------------------------------------------------------------------


_TOKEN_BATCH = "{'tokens': int (n, T + 1)} batches (a loader like 'tokens')"


class NextToken(Task):
    """Language modelling: batches ``{"tokens": int (n, T + 1)}``, optionally with ``"mask"`` of the
    same shape (1: a real token, 0: padding). The model reads ``tokens[:, :-1]`` and gives logits
    (n, T, V) for ``tokens[:, 1:]``; a target token counts where its mask is 1 (and its row is real).

    The loss is ``optax.losses.softmax_cross_entropy_with_integer_labels`` averaged over the tokens
    that count; the sums count tokens, not rows. ``perplexity`` is exp of the mean loss; ``token_acc``
    the share of tokens whose most likely prediction is right. V is the loader's ``num_classes``
    (the vocabulary's size), or the training split's largest token + 1.
    """

    metrics = {LOSS: "min", "perplexity": "min", "token_acc": "max"}

    def context(self, data, example) -> dict[str, Any]:
        import numpy as np

        vocab = getattr(data, "num_classes", None)
        tokens = np.asarray(example["tokens"]) if isinstance(example, Mapping) and "tokens" in example else None
        if tokens is None or tokens.ndim != 2 or tokens.shape[1] < 2:  # refused by check, which names the split
            return {"num_outputs": vocab or 1, "vocab_size": vocab or 1, "seq_len": 1}
        if not vocab:
            vocab = int(tokens.max()) + 1 if tokens.size and np.issubdtype(tokens.dtype, np.integer) else 1
        seq_len = int(tokens.shape[1]) - 1
        return {"num_outputs": vocab, "vocab_size": vocab, "seq_len": seq_len, "input_shape": (seq_len,)}

    def check(self, batch, where, context) -> None:
        import numpy as np

        tokens = self._tokens(batch, where)
        vocab, seq_len = context["vocab_size"], context["seq_len"]
        if not np.issubdtype(tokens.dtype, np.integer):
            raise UsageError(f"{where} gives {tokens.dtype} tokens; task 'next_token' needs integer token ids "
                             f"0..{vocab - 1}")
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise UsageError(f"{where} gives tokens of shape {tokens.shape}; task 'next_token' needs (n, T + 1) with T >= 1")
        if tokens.shape[1] != seq_len + 1:
            raise UsageError(f"{where} gives tokens of shape {tokens.shape}; task 'next_token' needs (n, {seq_len + 1}), "
                             "like the training split")
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
            raise UsageError(f"{where} has tokens {int(tokens.min())}..{int(tokens.max())}, outside 0..{vocab - 1} "
                             "(the vocabulary: the loader's num_classes)")
        if "mask" in batch:
            token_mask = np.asarray(batch["mask"])
            if token_mask.shape != tokens.shape:
                raise UsageError(f"{where} gives a token mask of shape {token_mask.shape} for tokens of shape "
                                 f"{tokens.shape}; they must match")
            if ((token_mask != 0) & (token_mask != 1)).any():
                raise UsageError(f"{where} gives a token mask holding values other than 0 and 1 (1: a real token)")

    @staticmethod
    def _tokens(batch, where: str):
        import numpy as np

        if not isinstance(batch, Mapping) or "tokens" not in batch:
            what = f"batches with {', '.join(map(str, batch))}" if isinstance(batch, Mapping) else "(x, y) rows"
            raise UsageError(f"{where} gives {what}; task 'next_token' needs {_TOKEN_BATCH}")
        return np.asarray(batch["tokens"])

    def inputs(self, batch):
        return batch["tokens"][:, :-1]

    def output_shape(self, context):
        return (context["seq_len"], context["vocab_size"])

    def predict(self, model, inputs, context, *, max_new_tokens: int = 16) -> dict[str, Any]:
        """Greedy generation: ``tokens``, the ``max_new_tokens`` most likely next tokens after each
        prompt (n, max_new_tokens), one model call per token (deterministic).

        ``inputs`` are prompts, int token ids (n, P), P >= 1. The model reads windows of
        ``seq_len`` tokens: the prompt so far (its last ``seq_len`` tokens once longer), padded
        on the right with token 0, and the next token is the argmax of the logits at the window's
        last real position. The padding changes nothing for a causal model (position t reads
        tokens 0..t: the transformer, a one-way rnn); a model reading both ways is not one to
        generate with."""
        import numpy as np

        prompts = np.asarray(inputs)
        vocab, window = int(context["vocab_size"]), int(context["seq_len"])
        if prompts.ndim != 2 or prompts.shape[1] < 1:
            raise UsageError(f"prompts of shape {prompts.shape}; task 'next_token' generates from int token ids (n, P), P >= 1")
        if not (np.issubdtype(prompts.dtype, np.integer) or np.array_equal(prompts, np.round(prompts))):
            raise UsageError(f"prompts of {prompts.dtype} values; task 'next_token' generates from int token ids 0..{vocab - 1}")
        if prompts.size and (prompts.min() < 0 or prompts.max() >= vocab):
            raise UsageError(f"prompts hold tokens {int(prompts.min())}..{int(prompts.max())}, outside 0..{vocab - 1} "
                             "(the vocabulary the run trained on)")
        if max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {max_new_tokens}: generate at least 1 token")
        sequence = prompts.astype(np.int32)
        for _ in range(max_new_tokens):
            seen = sequence[:, -window:]
            padded = np.zeros((len(sequence), window), np.int32)
            padded[:, :seen.shape[1]] = seen
            logits = np.asarray(model(padded))
            following = logits[:, seen.shape[1] - 1].argmax(axis=-1).astype(np.int32)
            sequence = np.concatenate([sequence, following[:, None]], axis=1)
        return {"tokens": sequence[:, prompts.shape[1]:]}

    def loss(self, model, batch, mask):
        import jax.numpy as jnp
        import optax

        tokens = batch["tokens"]
        logits = model(self.inputs(batch))
        labels = tokens[:, 1:]
        weight = jnp.broadcast_to(mask[:, None], labels.shape).astype(jnp.float32)
        if "mask" in batch:
            weight = weight * batch["mask"][:, 1:].astype(jnp.float32)
        per_token = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).astype(jnp.float32)
        loss, total, count = masked_mean(per_token, weight)
        right = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
        return loss, {LOSS: total, "token_acc": jnp.sum(right * weight), COUNT: count}

    def summarize(self, sums) -> dict[str, float]:
        import math

        count = max(float(sums[COUNT]), 1.0)
        loss = float(sums[LOSS]) / count
        return {LOSS: loss, "perplexity": math.exp(min(loss, 709.0)), "token_acc": float(sums["token_acc"]) / count}


def next_token(p):
    """Language modelling on token sequences (with a token mask): cross-entropy; loss, perplexity, token accuracy."""
    return NextToken()


@hookimpl
def jaxyard_register_tasks(register):
    register("classification", classification, params=ClassificationParams)
    register("regression", regression, params=RegressionParams)
    register("multilabel", multilabel, params=MultilabelParams)
    register("next_token", next_token)
