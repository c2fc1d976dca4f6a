"""A valid local plugin (loaded with --plugin FILE.py)."""

import jaxyard


def halving(p, *, learning_rate, decay_steps):
    """Half the peak learning rate throughout."""
    import optax

    return optax.constant_schedule(learning_rate / 2)


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    register("halving", halving)
