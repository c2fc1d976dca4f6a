"""A plugin implementing a misspelled hook (British spelling)."""

import jaxyard


def misspelled(p, *, learning_rate):
    """Never registered."""


@jaxyard.hookimpl
def jaxyard_register_optimiser(register):
    register("misspelled", misspelled)
