"""A plugin whose params class is a plain class, not an attrs class."""

import jaxyard


class PlainParams:
    momentum: float = 0.9


def plain(p, *, learning_rate):
    """An optimizer with plain-class params."""


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("plain-params", plain, params=PlainParams)
