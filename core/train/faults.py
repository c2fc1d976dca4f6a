"""A component's fault named: an exception from a factory or a component's own code as one line
naming the component and where it comes from (its plugin, its distribution)."""

from __future__ import annotations

from jaxyard.core.errors import JaxyardError, PluginError, one_line


def broken(choice, what: str) -> PluginError:
    """A factory broke its contract: the plugin's bug, named with where the plugin comes from."""
    return PluginError(f"{choice.entry.kind} {choice.name!r} ({choice.entry.origin()}) {what}")


def calling(choice, doing: str, fn):
    """``fn()``, with an exception from the component's own code named like a factory's."""
    try:
        return fn()
    except JaxyardError:
        raise
    except Exception as err:
        raise broken(choice, f"failed {doing}: {one_line(err)}") from err
