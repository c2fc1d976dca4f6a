"""The model's module: imports flax, so it is imported only when a model is built."""

from __future__ import annotations

import math

import jax
from flax import nnx


class MLP(nnx.Module):
    """Flatten, Linear, ReLU, dropout, Linear. ``model.train()`` and ``model.eval()`` switch the
    dropout, as the engine expects."""

    def __init__(self, input_shape, hidden: int, num_outputs: int, *, dropout_rate: float, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(math.prod(input_shape), hidden, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.out = nnx.Linear(hidden, num_outputs, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(self.dropout(jax.nn.relu(self.hidden(x))))
