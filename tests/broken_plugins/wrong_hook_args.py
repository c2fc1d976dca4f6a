"""A plugin whose hook takes an argument the hook specification does not have."""

import jaxyard


@jaxyard.hookimpl
def jaxyard_register_optimizers(reg):
    reg("wrong-args", print)
