"""The ``rnn`` model's parameters and factory (flax is imported only when a model is built)."""

from __future__ import annotations

import attrs
from attrs import validators as v

from jaxyard import UsageError, param

CELLS = ("gru", "lstm")
POOLS = ("last", "mean")


@attrs.frozen
class Params:
    cell: str = param("gru", f"recurrent cell, flax's stock nnx.GRUCell or nnx.LSTMCell: {', '.join(CELLS)}", validator=v.in_(CELLS))
    hidden: int = param(64, "units of each layer's cell (per direction)", validator=v.ge(1))
    layers: int = param(1, "stacked recurrent layers, each reading the previous one's outputs", validator=v.ge(1))
    bidirectional: bool = param(False, "each layer also reads the sequence backwards (nnx.Bidirectional; not for next_token)")
    dropout_rate: float = param(0.1, "dropout on the inputs of each layer after the first and of the head, active only in training",
                                validator=[v.ge(0.0), v.lt(1.0)])
    pool: str = param("last", "what the head reads of a sequence (not next_token, which reads every position): the last step's "
                      f"output (bidirectional: the backward direction's at the first step), or the mean over steps: {', '.join(POOLS)}",
                      validator=v.in_(POOLS))
    embed_dim: int = param(0, "width of the token embedding for token inputs (next_token); 0: hidden", validator=v.ge(0))


def factory(p: Params, *, input_shape, num_outputs, rngs, vocab_size=None):
    """A recurrent network: flax's stock GRU or LSTM cells through ``nnx.RNN`` (optionally bidirectional), then a linear head.

    Features of shape (L,) are read as L steps of 1 channel, (L, C) as L steps of C channels (more axes: flattened
    into the channels); the head maps the last step's output (``pool``) to ``num_outputs`` (classification,
    regression, multilabel). For next_token (the task gives ``vocab_size``) each token is embedded and the head
    gives the next token's logits at every position, (n, T, vocab): a causal model, so not bidirectional."""
    if vocab_size is not None and p.bidirectional:
        raise UsageError("model 'rnn': bidirectional = true reads each sequence backwards too, so it would see the tokens "
                         "next_token asks it to predict; set model.bidirectional=false for next_token")
    if vocab_size is None and len(tuple(input_shape)) < 1:
        raise UsageError(f"model 'rnn' reads sequences: examples of shape (L,) or (L, C), not {tuple(input_shape)}")
    from jaxyard.plugins.models._rnn import RNN

    return RNN(tuple(input_shape), num_outputs, cell=p.cell, hidden=p.hidden, layers=p.layers, bidirectional=p.bidirectional,
               dropout_rate=p.dropout_rate, pool=p.pool, vocab_size=vocab_size, embed_dim=p.embed_dim or p.hidden, rngs=rngs)
