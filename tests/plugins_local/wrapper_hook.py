"""A registration hook written as a pluggy wrapper."""
import jaxyard


def wrapped(p, *, learning_rate):
    """An optimizer registered from a wrapper hook."""
    import optax
    return optax.sgd(learning_rate)

@jaxyard.hookimpl(wrapper=True)
def jaxyard_register_optimizers(register):
    register("wrapped", wrapped)
    return (yield)
