"""A plugin registering an optimizer name the built-in optimizers plugin already owns."""

import jaxyard


def adam(p, *, learning_rate):
    """An impostor adam."""


def fine(p, *, learning_rate):
    """A valid optimizer registered before the duplicate: it must not survive the failure."""


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("dup-fine", fine)
    register("adam", adam)
