"""The MLP module (imports flax; loaded only when a model is built)."""

from __future__ import annotations

import math

import jax
from flax import nnx

from jaxyard.plugins.models._precision import embedded


class MLP(nnx.Module):
    """Flattens its input, then Linear -> activation -> Dropout per hidden layer, then Linear logits.

    With ``vocab_size`` (token inputs: a language model's window), each position's token is embedded
    and the layers apply position by position: logits ``(batch, positions, num_classes)``, a model of
    the next token given the current one."""

    def __init__(self, input_shape, hidden_dims, num_classes, *, activation="relu", dropout_rate=0.1, rngs: nnx.Rngs, vocab_size=None):
        sizes = [math.prod(input_shape), *hidden_dims]
        if vocab_size is not None:
            self.embed = nnx.Embed(vocab_size, hidden_dims[0], rngs=rngs)
            sizes = list(hidden_dims)
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)])
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
        self.activation = getattr(jax.nn, activation)

    def __call__(self, x):
        if hasattr(self, "embed"):  # tokens (batch, positions): position by position
            x = self.dropout(embedded(self.embed, x))
        else:
            x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = self.dropout(self.activation(layer(x)))
        return self.head(x)
