"""The transformer: a decoder-only language model for ``next_token``, a sequence classifier for the
other tasks (its nnx modules are in ``_transformer.py``, loaded only when a model is built)."""

from __future__ import annotations

import math

import attrs
from attrs import validators as v

from jaxyard import UsageError, param


@attrs.frozen
class Params:
    layers: int = param(2, "transformer blocks (each: pre-norm self-attention, then a pre-norm MLP)", validator=v.ge(1))
    heads: int = param(4, "attention heads per block (must divide dim)", validator=v.ge(1))
    dim: int = param(128, "width of the token embeddings and of every block", validator=v.ge(1))
    mlp_ratio: float = param(4.0, "width of each block's MLP hidden layer, as a multiple of dim", validator=v.gt(0.0))
    dropout_rate: float = param(0.1, "dropout on the embeddings, the attention weights and each block's outputs, "
                                "active only in training", validator=[v.ge(0.0), v.lt(1.0)])
    max_len: int = param(0, "positions the learned position embedding holds (0: the task's seq_len, or the "
                         "input's length)", validator=v.ge(0))
    tie_embeddings: bool = param(True, "next_token: the output layer is the token embedding, transposed (false: "
                                 "a layer of its own)")


def factory(p: Params, *, input_shape, num_outputs, rngs, vocab_size=None, seq_len=None):
    """Decoder-only transformer language model for next_token; a sequence classifier for the other tasks.

    Token and learned position embeddings, pre-norm blocks of causal self-attention (flax's
    ``nnx.MultiHeadAttention``) and a GELU MLP, dropout, and an output tied to the token
    embedding or not.

    For next_token (the task gives ``vocab_size``) it reads int tokens (batch, T) and gives logits
    (batch, T, vocab_size), position t seeing tokens 0..t only. For the other tasks it is a
    sequence classifier: float features (batch, L) are L positions of 1 channel, (batch, L, C...)
    L positions of C... channels, each embedded by a linear layer; attention is not causal, the
    positions are mean-pooled, and a linear head gives (batch, num_outputs). Integer token
    inputs are language-model inputs only."""
    from jaxyard.plugins.models._transformer import LanguageModel, SequenceClassifier

    if p.dim % p.heads:
        raise UsageError(f"model 'transformer': dim = {p.dim} is not a multiple of heads = {p.heads}; "
                         f"choose heads dividing dim (for example heads = {math.gcd(p.dim, p.heads)})")
    hidden = max(1, round(p.dim * p.mlp_ratio))
    common = dict(layers=p.layers, heads=p.heads, dim=p.dim, hidden=hidden, dropout_rate=p.dropout_rate, rngs=rngs)
    if vocab_size is not None:
        length = int(seq_len or (input_shape[0] if input_shape else 1))
        max_len = _max_len(p.max_len, length, "the task's seq_len")
        return LanguageModel(int(vocab_size), max_len=max_len, tie=p.tie_embeddings, **common)
    shape = tuple(input_shape)
    length, channels = (shape[0], math.prod(shape[1:])) if shape else (1, 1)
    max_len = _max_len(p.max_len, length, f"the input's length (input_shape {shape})")
    return SequenceClassifier(channels, int(num_outputs), max_len=max_len, **common)


def _max_len(asked: int, needed: int, what: str) -> int:
    if asked and asked < needed:
        raise UsageError(f"model 'transformer': max_len = {asked} is shorter than {what}, {needed}; "
                         f"set model.max_len >= {needed}, or 0 for {needed}")
    return asked or needed
