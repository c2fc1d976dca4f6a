"""A local test plugin: a model built from stock flax layers, written the way flax's docs write them
(nnx.RNN asks its Rngs for a `carry` stream). It reads a feature vector (n, F) as a sequence of F steps."""

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


@hookimpl
def jaxyard_register_models(register):
    register("bigru", bigru, params=SeqParams)
