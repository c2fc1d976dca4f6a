"""A parameter without a type annotation: --set would store the text "0.5" in it."""
import attrs

import jaxyard


@attrs.frozen
class UntypedParams:
    rate = attrs.field(default=0.5, metadata={"doc": "a rate"})


def untyped(p, *, learning_rate):
    """An optimizer whose parameter has no type."""


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("untyped", untyped, params=UntypedParams)
