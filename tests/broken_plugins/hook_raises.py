"""A plugin whose hook raises while registering."""

import jaxyard


@jaxyard.hookimpl
def jaxyard_register_schedulers(register):
    raise ValueError("hook_raises: registration failed on purpose")
