"""A plugin registering one name twice: its own bug, so the whole plugin is skipped."""

import jaxyard


def once(p, *, learning_rate):
    """The first registration."""


def fine(p, *, learning_rate):
    """A valid optimizer registered before the repeat: it must not survive the failure."""


@jaxyard.hookimpl
def jaxyard_register_optimizers(register):
    register("twice-fine", fine)
    register("twice", once)
    register("twice", once)
