"""Model factories that return a flax.linen module (the other flax API) instead of an nnx.Module:
flax's own layer, and a subclass of the plugin's own."""

import attrs

import jaxyard


@attrs.frozen
class NoParams:
    pass


def linen_dense(p, *, input_shape, num_outputs, rngs):
    """One flax.linen Dense layer."""
    from flax import linen

    return linen.Dense(num_outputs)


def linen_own(p, *, input_shape, num_outputs, rngs):
    """A linen module of the plugin's own (a subclass, defined outside flax)."""
    from flax import linen

    class TwoLayers(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dense(num_outputs)(linen.relu(linen.Dense(16)(x)))

    return TwoLayers()


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("linen-dense", linen_dense, params=NoParams)
    register("linen-own", linen_own, params=NoParams)
