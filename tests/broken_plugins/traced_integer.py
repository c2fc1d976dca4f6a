"""An integer parameter marked traced: it shapes the program (a step count), it cannot be an input."""
import attrs

import jaxyard


@attrs.frozen
class TracedIntParams:
    period: int = jaxyard.param(10, "steps per cycle", traced=True)


def traced_int(p, *, learning_rate, decay_steps):
    """A schedule whose integer parameter claims to be traceable."""


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    register("traced-int", traced_int, params=TracedIntParams)
