"""A local test plugin: models built from stock flax layers, written the way flax's docs write
them (nnx.RNN asks its Rngs for a `carry` stream; BatchNorm keeps running statistics; attention
and dropout follow train/eval). Each reads a feature vector (n, F) as a sequence of F steps."""

import attrs

from jaxyard import hookimpl, param


@attrs.frozen
class SeqParams:
    hidden: int = param(8, "units per direction / features per position")


def bigru(p, *, input_shape, num_outputs, rngs):
    """Bidirectional GRU over the features read as a sequence, then a linear head."""
    from flax import nnx

    class BiGRU(nnx.Module):
        def __init__(self):
            forward = nnx.RNN(nnx.GRUCell(1, p.hidden, rngs=rngs), rngs=rngs)
            backward = nnx.RNN(nnx.GRUCell(1, p.hidden, rngs=rngs), rngs=rngs)
            self.rnn = nnx.Bidirectional(forward, backward)
            self.head = nnx.Linear(2 * p.hidden, num_outputs, rngs=rngs)

        def __call__(self, x):
            return self.head(self.rnn(x[..., None])[:, -1])

    return BiGRU()


def norm_mlp(p, *, input_shape, num_outputs, rngs):
    """Linear, BatchNorm, relu, Dropout, Linear."""
    import jax
    from flax import nnx

    class NormMLP(nnx.Module):
        def __init__(self):
            self.hidden = nnx.Linear(input_shape[0], p.hidden, rngs=rngs)
            self.norm = nnx.BatchNorm(p.hidden, rngs=rngs)
            self.dropout = nnx.Dropout(0.2, rngs=rngs)
            self.head = nnx.Linear(p.hidden, num_outputs, rngs=rngs)

        def __call__(self, x):
            return self.head(self.dropout(jax.nn.relu(self.norm(self.hidden(x)))))

    return NormMLP()


def attention(p, *, input_shape, num_outputs, rngs):
    """Self-attention (flax's MultiHeadAttention, with dropout) over the features as positions."""
    from flax import nnx

    class Attention(nnx.Module):
        def __init__(self):
            self.embed = nnx.Linear(1, p.hidden, rngs=rngs)
            self.attend = nnx.MultiHeadAttention(2, p.hidden, dropout_rate=0.1, decode=False, rngs=rngs)
            self.head = nnx.Linear(p.hidden, num_outputs, rngs=rngs)

        def __call__(self, x):
            h = self.embed(x[..., None])
            return self.head(self.attend(h).mean(axis=1))

    return Attention()


@hookimpl
def jaxyard_register_models(register):
    register("bigru", bigru, params=SeqParams)
    register("norm-mlp", norm_mlp, params=SeqParams)
    register("attention", attention, params=SeqParams)
