"""A loader factory without the `seed` keyword its hook passes (fine plugin otherwise)."""
import jaxyard


def seedless(params):
    """A loader that forgot the seed keyword."""


@jaxyard.hookimpl
def jaxyard_register_loaders(register):
    register("seedless", seedless)
