"""An event plugin with a bug: it raises at the end of epoch 2."""
import jaxyard


@jaxyard.hookimpl
def jaxyard_on_epoch_end(record):
    if record["epoch"] == 2:
        raise ZeroDivisionError("my plugin divided by zero")
