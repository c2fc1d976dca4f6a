"""A parameter without a doc: `jaxyard show` would have nothing to say about it."""
import attrs

import jaxyard


@attrs.frozen
class UndocumentedParams:
    rate: float = attrs.field(default=0.5)


def undocumented(p, *, learning_rate):
    """An optimizer whose parameter has no doc."""


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("undocumented", undocumented, params=UndocumentedParams)
