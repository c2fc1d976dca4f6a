"""A plugin that forgot @jaxyard.hookimpl: pluggy alone would ignore the function silently."""


def undecorated(p, *, learning_rate):
    """Never registered."""


def jaxyard_register_optimizers(register):
    register("undecorated", undecorated)
