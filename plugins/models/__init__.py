"""Built-in models."""

from __future__ import annotations

import attrs
from attrs import validators as v

from jaxyard import hookimpl, param
from jaxyard.plugins.models import cnn, rnn, transformer

ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "elu")


def _positive_sizes(instance, attribute, value):
    if not value or any(d < 1 for d in value):
        raise ValueError("needs one or more positive layer sizes, for example 256,128", attribute, None, value)


@attrs.frozen
class MLPParams:
    hidden_dims: tuple[int, ...] = param((256, 128), "sizes of the hidden layers", validator=_positive_sizes)
    activation: str = param("relu", f"activation after each hidden layer: {', '.join(ACTIVATIONS)}", validator=v.in_(ACTIVATIONS))
    dropout_rate: float = param(0.1, "dropout after each hidden layer, active only in training", validator=[v.ge(0.0), v.lt(1.0)])


def mlp(p: MLPParams, *, input_shape, num_outputs, rngs, vocab_size=None):
    """Multi-layer perceptron: Linear, activation, dropout per hidden layer, then num_outputs (a task's logits or targets).

    For next_token (the task gives ``vocab_size``) it embeds each token and predicts the next one
    position by position (a bigram model): the baseline a sequence model should beat."""
    from jaxyard.plugins.models._mlp import MLP

    return MLP(input_shape, p.hidden_dims, num_outputs, activation=p.activation, dropout_rate=p.dropout_rate, rngs=rngs,
               vocab_size=vocab_size)


@hookimpl
def jaxyard_register_models(register):
    register("mlp", mlp, params=MLPParams)
    register("transformer", transformer.factory, params=transformer.Params)
    register("cnn", cnn.factory, params=cnn.Params)
    register("rnn", rnn.factory, params=rnn.Params)
