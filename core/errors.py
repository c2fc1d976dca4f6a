"""Errors a user can act on. The CLI prints their message as one line and exits with `exit_code`."""


class JaxyardError(Exception):
    """Base class: a failure with a message that names the thing, the value and the fix."""

    exit_code = 1


class UsageError(JaxyardError):
    """Bad input: an unknown name, a bad value, a malformed configuration file."""

    exit_code = 2


class UnknownComponent(UsageError):
    """A component name that no loaded plugin registered."""


class MissingExtra(UsageError):
    """An optional dependency is not installed: names the extra to install."""

    def __init__(self, what: str, extra: str, module: str):
        self.extra, self.module = extra, module
        super().__init__(f"{what} needs {module}, which is not installed: pip install 'jaxyard[{extra}]'")


class PluginError(JaxyardError):
    """A plugin failed to load or registered something invalid (fatal only in strict mode)."""


class TrainingError(JaxyardError):
    """Training stopped on a condition the user must look at (a NaN loss, for instance)."""


def one_line(err: BaseException, limit: int = 400) -> str:
    """``TypeName: message`` on one line (whitespace collapsed, cut at ``limit`` characters)."""
    text = " ".join(str(err).split())
    out = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."
