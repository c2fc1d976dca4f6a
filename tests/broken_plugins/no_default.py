"""A plugin whose params class has a field without a default."""

import attrs

import jaxyard


@attrs.frozen
class NoDefaultParams:
    depth: int = jaxyard.param(doc="number of layers, but no default")


def nodefault(p, *, input_shape, num_classes, rngs):
    """A model whose parameter has no default."""


@jaxyard.hookimpl
def jaxyard_register_models(register):
    register("no-default", nodefault, params=NoDefaultParams)
