"""A model factory that returns a flax.linen module (the other flax API) instead of an nnx.Module."""

import attrs

import jaxyard


@attrs.frozen
class NoParams:
    pass


def linen_dense(p, *, input_shape, num_outputs, rngs):
    """One flax.linen Dense layer."""
    from flax import linen

    return linen.Dense(num_outputs)


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("linen-dense", linen_dense, params=NoParams)
