"""``jaxyard new-plugin``: a complete plugin package, ready to install, test and train with.

:func:`write_plugin` writes a package ``jaxyard-NAME`` (module ``jaxyard_NAME``) with one
documented, working component per requested kind, all named NAME; an entry point in the group
``jaxyard``; a test file that runs jaxyard's conformance kit (:mod:`jaxyard.testing`) over
them; and a README with the commands to install, test and run. Nothing here imports jax.

The files come from ``templates/`` (package data), which are real files: the ``.py`` ones are
valid Python that ruff lints, ``plugin.py`` holding every kind's section under its ``# --- KIND``
banner. Their tokens are replaced as the package is written: ``jaxyard_PLUGIN`` (the module),
``jaxyard-PLUGIN`` (the distribution), ``PLUGIN_NAME``, ``PLUGIN_KINDS`` (the kinds in words) and,
in the README, ``PLUGIN_ROWS``, ``PLUGIN_RUN_OPTIONS`` and ``PLUGIN_SHOW_COMMANDS``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.api import PLUGIN_API
from jaxyard.core.registry.entries import KINDS

__all__ = ["NAME_PATTERN", "next_steps", "write_plugin"]

#: A plugin name: lower-case letters and digits, single ``-`` or ``_`` between them, starting with
#: a letter (the module is ``jaxyard_`` + the name with ``-`` as ``_``).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
MAX_NAME = 40

#: What a template's tokens look like (one pass: a token is never read in what replaced another).
TOKEN = re.compile(r"\bjaxyard[-_]PLUGIN\b|\bPLUGIN_[A-Z_]+\b")
#: The template (and file) beside the plugin's module that a kind needs.
EXTRA_FILES = {"model": "_model.py", "checkpointer": "_checkpointer.py"}
#: Where ``plugin.py`` starts the section of a kind: at the blank lines before its banner.
SECTION = re.compile(r"\n\n# --- (" + "|".join(KINDS) + r") -+\n")
#: The header's import that only the checkpointer's and the logger's sections use.
PATH_IMPORT = "from pathlib import Path\n\n"


def write_plugin(directory: str | os.PathLike, name: str, kinds: Iterable[str] = ("optimizer",)) -> Path:
    """Write the package ``jaxyard-NAME`` into ``directory`` (created; must be new or empty).

    :param name: the plugin's name: the components', the entry point's, and the package is
        ``jaxyard-NAME`` with module ``jaxyard_NAME``.
    :param kinds: any of ``task``, ``optimizer``, ``scheduler``, ``model``, ``loader``,
        ``checkpointer``, ``logger`` (plural accepted): one component of each.
    :returns: the package directory.
    :raises jaxyard.UsageError: an invalid name or kind, a name jaxyard has built in for one of
        the kinds, or a directory that exists and is not empty (one line each).
    """
    from jaxyard.core.registry.loading import normalize_kind

    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid plugin name {name!r}: use lower-case letters and digits, with single '-' or '_' between them, "
            f"starting with a letter, at most {MAX_NAME} characters (for example my-optim)"
        )
    if isinstance(kinds, str):
        kinds = [kinds]
    chosen = sorted({normalize_kind(k) for k in kinds}, key=KINDS.index)
    if not chosen:
        raise UsageError(f"choose at least one kind: {', '.join(KINDS)}")
    _refuse_builtin_names(name, chosen)
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        what = "is not a directory" if not directory.is_dir() else "is not empty"
        raise UsageError(f"{directory} {what}; choose a new directory (--dir DIR)")

    module = "jaxyard_" + name.replace("-", "_")
    tokens = {
        "jaxyard_PLUGIN": module,
        "jaxyard-PLUGIN": f"jaxyard-{name}",
        "PLUGIN_NAME": name,
        "PLUGIN_KINDS": _kinds_text(chosen),
        "PLUGIN_ROWS": "\n".join(f"| {k} | `{name}` | {_WHAT[k]} |" for k in chosen),
        "PLUGIN_RUN_OPTIONS": " ".join(f"{_RUN_OPTIONS[k]} {name}" for k in chosen),
        "PLUGIN_SHOW_COMMANDS": "\n".join(f"jaxyard show {k} {name}" for k in chosen),
        "PLUGIN_API": PLUGIN_API,
        "PLUGIN_NEXT_API": _next_minor(PLUGIN_API),
    }
    files = {
        "pyproject.toml": _template("pyproject.toml.tmpl"),
        "README.md": _template("README.md.tmpl"),
        f"src/{module}/__init__.py": _plugin_module(chosen),
        "tests/test_plugin.py": _template("test_plugin.py"),
        ".gitignore": _template("gitignore.tmpl"),
    }
    files.update({f"src/{module}/{EXTRA_FILES[k]}": _template(EXTRA_FILES[k]) for k in chosen if k in EXTRA_FILES})
    directory.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_fill(text, tokens), encoding="utf-8")
    return directory


def next_steps(directory: str | os.PathLike) -> str:
    """The shell command that installs the package written in ``directory`` with its test extra
    (pytest) and runs its tests, as ``jaxyard new-plugin`` prints it."""
    return f"cd {shlex.quote(str(directory))} && pip install -e '.[test]' && python -m pytest -q"


def _template(name: str) -> str:
    """The text of ``templates/NAME``, read as package data."""
    return (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")


def _plugin_module(kinds: list[str]) -> str:
    """``plugin.py`` with only the sections of ``kinds`` (and ``Path`` imported only where one uses it)."""
    text = _template("plugin.py")
    starts = list(SECTION.finditer(text))
    ends = [m.start() for m in starts[1:]] + [len(text)]
    sections = {m.group(1): text[m.start() : end] for m, end in zip(starts, ends, strict=True)}
    header = text[: starts[0].start()]
    if not {"checkpointer", "logger"} & set(kinds):
        header = header.replace(PATH_IMPORT, "", 1)
    return header + "".join(sections[k] for k in kinds)


def _next_minor(version: str) -> str:
    """``0.3`` for ``0.2``: before 1.0 a new minor release may change the plugin API."""
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def _fill(text: str, tokens: Mapping[str, str]) -> str:
    """``text`` with every token replaced; an unknown token is a bug of the templates (KeyError)."""
    return TOKEN.sub(lambda match: tokens[match.group(0)], text)


def _refuse_builtin_names(name: str, kinds: list[str]) -> None:
    """A component named like a built-in of its kind would be reachable only as NAME:NAME."""
    from jaxyard.core.registry.loading import build_registry

    registry = build_registry()
    for entry in registry.entries():
        if entry.source == "builtin" and entry.kind in kinds and entry.name == name:
            raise UsageError(f"{entry.kind} {name!r} is built into jaxyard; choose another plugin name")


def _kinds_text(kinds: list[str]) -> str:
    words = [f"{'an' if k[0] in 'aeiou' else 'a'} {k}" for k in kinds]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_RUN_OPTIONS = {"task": "--task", "optimizer": "--optimizer", "scheduler": "--scheduler", "model": "--model", "loader": "--loader",
                "checkpointer": "--checkpointer", "logger": "--logger"}
_WHAT = {
    "task": "classification trained on the Brier score: squared error of the softmax probabilities (optax)",
    "optimizer": "SGD with momentum and decoupled weight decay, a chain of optax primitives",
    "scheduler": "polynomial decay from the peak rate to a fraction of it",
    "model": "a small MLP (flax nnx): Linear, ReLU, dropout, Linear",
    "loader": "learnable synthetic data: Gaussian blobs, one per class",
    "checkpointer": "one directory per step: the arrays in an .npz, their dtypes, shapes and checksums in a manifest",
    "logger": "one tab-separated row of metrics per epoch, in a file of the run directory",
}
