"""Errors a user can act on. The CLI prints their message as one line and exits with `exit_code`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


def one_line(err: BaseException | str, limit: int = 400, *, first_line: bool = False) -> str:
    """An exception as one line: ``TypeName: message`` (jaxyard's own errors: the message, already
    phrased), whitespace collapsed, cut at ``limit`` characters. ``first_line``: only the message's
    first line (libraries that embed JSON specs or tracebacks in theirs). A string: just collapsed."""
    if isinstance(err, str):
        text, name = err, ""
    else:
        text = str(err)
        if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
            text = err.args[0]  # str(KeyError) adds quotes around the message
        name = "" if isinstance(err, JaxyardError) else type(err).__name__
    if first_line:
        text = text.strip().splitlines()[0] if text.strip() else ""
    text = " ".join(text.split())
    out = f"{name}: {text}" if name and text else (text or name)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def did_you_mean(name: str, valid: Iterable[str], n: int = 3) -> str:
    """``"; did you mean a, b?"`` naming the close matches of ``name`` among ``valid`` ("" if none):
    the one suggestion every "unknown ..." message uses."""
    close = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
