"""The rnn model's module (imports flax; loaded only when a model is built)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from jaxyard.plugins.models._precision import embedded


class RNN(nnx.Module):
    """Stacked ``nnx.RNN`` layers of flax's stock GRU or LSTM cells (each optionally an
    ``nnx.Bidirectional`` pair), dropout between layers, and a linear head.

    Float features ``(n, L)`` are read as L steps of one channel, ``(n, L, C)`` as L steps of C;
    the head reads the pooled outputs: ``(n, num_outputs)``. With ``vocab_size`` (token inputs
    ``(n, T)``) each token is embedded and the head reads every position: ``(n, T, num_outputs)``.
    Each ``nnx.RNN`` draws its carry from the model's ``default`` random stream (zeros: the draw
    changes nothing).
    """

    def __init__(self, input_shape, num_outputs, *, cell="gru", hidden=64, layers=1, bidirectional=False, dropout_rate=0.1,
                 pool="last", vocab_size=None, embed_dim=64, rngs: nnx.Rngs):
        make_cell = {"gru": nnx.GRUCell, "lstm": nnx.LSTMCell}[cell]
        if vocab_size is not None:
            self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
            width = embed_dim
        else:
            width = math.prod(input_shape[1:]) if len(input_shape) > 1 else 1
        self.bidirectional, self.pool, self.tokens = bidirectional, pool, vocab_size is not None
        stack = []
        for _ in range(layers):
            if bidirectional:
                forward = nnx.RNN(make_cell(width, hidden, rngs=rngs), rngs=rngs)
                backward = nnx.RNN(make_cell(width, hidden, rngs=rngs), rngs=rngs)
                stack.append(nnx.Bidirectional(forward, backward, rngs=rngs))
            else:
                stack.append(nnx.RNN(make_cell(width, hidden, rngs=rngs), rngs=rngs))
            width = 2 * hidden if bidirectional else hidden
        self.layers = nnx.List(stack)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.head = nnx.Linear(width, num_outputs, rngs=rngs)

    def __call__(self, x):
        if self.tokens:  # (n, T) token ids
            h = embedded(self.embed, x)
        else:  # (n, L) -> L steps of 1 channel; (n, L, C, ...) -> L steps of C x ... channels
            h = x.reshape(*x.shape[:2], -1) if x.ndim > 2 else x[..., None]
            h = h if jnp.issubdtype(h.dtype, jnp.floating) else h.astype(jnp.float32)  # bf16 stays bf16 (run.precision)
        for i, layer in enumerate(self.layers):
            h = self.dropout(h) if i else h
            # bf16 (run.precision): a carry in the sequence's dtype, or flax's (its parameters' dtype at
            # creation, float32) would make the whole recurrence float32; float32 runs are left as they were
            h = layer(h) if h.dtype == jnp.float32 else layer(h, initial_carry=_zero_carry(layer, h))
        if not self.tokens:
            if self.pool == "mean":
                h = h.mean(axis=1)
            elif self.bidirectional:  # each direction's output after reading the whole sequence
                half = h.shape[-1] // 2
                h = jnp.concatenate([h[:, -1, :half], h[:, 0, half:]], axis=-1)
            else:
                h = h[:, -1]
        return self.head(self.dropout(h))


def _zero_carry(layer, h):
    """Zeros as the initial carry of ``layer`` (an ``nnx.RNN`` or an ``nnx.Bidirectional`` pair), in
    ``h``'s dtype: what flax's cells start from, without their float32."""
    def zeros(rnn):
        z = jnp.zeros((h.shape[0], rnn.cell.hidden_features), h.dtype)
        return (z, z) if isinstance(rnn.cell, nnx.LSTMCell) else z

    if isinstance(layer, nnx.Bidirectional):
        return zeros(layer.forward_rnn), zeros(layer.backward_rnn)
    return zeros(layer)
