"""``jaxyard new-plugin``: a complete plugin package, ready to install, test and train with.

:func:`write_plugin` writes a package ``jaxyard-NAME`` (module ``jaxyard_NAME``) with one
documented, working component per name asked for (several of a kind if asked: ``--model a
--model b``; ``--kind KIND`` asks for one named NAME), each registered under its own name; an entry
point in the group ``jaxyard``; a test file that runs jaxyard's conformance kit
(:mod:`jaxyard.testing`) over every component of the package; and a README with the commands to
install, test and run. Nothing here imports jax.

The files come from ``templates/`` (package data), which are real files: the ``.py`` ones are
valid Python that ruff lints, ``plugin.py`` holding every kind's section under its ``# --- KIND``
banner: one component's code, then the kind's hook whose last line registers it. The code is
written once per component of the kind, the register line once per component into the one hook.
Their tokens are replaced as the package is written: ``jaxyard_PLUGIN`` (the module),
``jaxyard-PLUGIN`` (the distribution), ``PLUGIN_NAME``, ``PLUGIN_COMPONENTS`` (the components in
words), ``PLUGIN_EXAMPLE`` (the first as ``KIND:NAME``), ``PLUGIN_LIST`` (one per line), in the README ``PLUGIN_ROWS``,
``PLUGIN_RUN_OPTIONS`` and ``PLUGIN_SHOW_COMMANDS``; and per component its name
``PLUGIN_COMPONENT`` and the Python names derived from it: ``Plugin`` before a capital (classes:
``PluginModelParams`` is ``MyNetModelParams`` for the model ``my-net``) and ``plugin_`` before a
lower-case letter (functions: ``plugin_model`` is ``my_net_model``).
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
TOKEN = re.compile(r"\bjaxyard[-_]PLUGIN\b|\bPLUGIN_[A-Z_]+\b|\bPlugin(?=[A-Z])|\bplugin_(?=[a-z])")
#: The template (and file) beside the plugin's module that a kind needs.
EXTRA_FILES = {"model": "_model.py", "checkpointer": "_checkpointer.py"}
#: Where ``plugin.py`` starts the section of a kind: at the blank lines before its banner.
SECTION = re.compile(r"\n\n# --- (" + "|".join(KINDS) + r") -+\n")
#: Where a section's component code ends and its kind's hook begins.
HOOK = "\n\n\n@jaxyard.hookimpl\n"
#: The header's import that only the checkpointer's and the logger's sections use.
PATH_IMPORT = "from pathlib import Path\n\n"


def write_plugin(
    directory: str | os.PathLike,
    name: str,
    kinds: Iterable[str] | None = None,
    components: Mapping[str, Iterable[str]] | None = None,
) -> Path:
    """Write the package ``jaxyard-NAME`` into ``directory`` (created; must be new or empty).

    :param name: the plugin's name: the entry point's, and the package is ``jaxyard-NAME`` with
        module ``jaxyard_NAME``.
    :param kinds: any of ``task``, ``optimizer``, ``scheduler``, ``model``, ``loader``,
        ``checkpointer``, ``logger`` (plural accepted): one component of each, named ``name``.
    :param components: ``{kind: [component name, ...]}``: one component per name, several of a kind
        if given (``{"model": ["a", "b"]}``), each registered under its own name. With neither
        ``kinds`` nor ``components``: an optimizer named ``name``.
    :returns: the package directory.
    :raises jaxyard.UsageError: an invalid plugin or component name, an unknown kind, two
        components of a kind with one name (or with names giving one Python name), a name jaxyard has
        built in for its kind, or a directory that exists and is not empty (one line each).
    """
    if not isinstance(name, str) or len(name) > MAX_NAME or not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid plugin name {name!r}: use lower-case letters and digits, with single '-' or '_' between them, "
            f"starting with a letter, at most {MAX_NAME} characters (for example my-optim)"
        )
    if isinstance(kinds, str):
        kinds = [kinds]
    if kinds is None and not components:
        kinds = ["optimizer"]
    chosen = _components(name, kinds or (), components or {})
    if not chosen:
        raise UsageError(f"choose at least one kind: {', '.join(KINDS)}")
    _refuse_builtin_names(name, chosen)
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        what = "is not a directory" if not directory.is_dir() else "is not empty"
        raise UsageError(f"{directory} {what}; choose a new directory (--dir DIR)")

    module = "jaxyard_" + name.replace("-", "_")
    pairs = [(kind, component) for kind, names in chosen.items() for component in names]
    tokens = {
        "jaxyard_PLUGIN": module,
        "jaxyard-PLUGIN": f"jaxyard-{name}",
        "PLUGIN_NAME": name,
        "PLUGIN_COMPONENTS": _components_text(chosen),
        "PLUGIN_EXAMPLE": f"{pairs[0][0]}:{pairs[0][1]}",
        "PLUGIN_LIST": "\n".join(f"- {kind} ``{component}``" for kind, component in pairs),
        "PLUGIN_ROWS": "\n".join(f"| {kind} | `{component}` | {_WHAT[kind]} |" for kind, component in pairs),
        "PLUGIN_RUN_OPTIONS": " ".join(f"{_RUN_OPTIONS[kind]} {names[0]}" for kind, names in chosen.items()),
        "PLUGIN_SHOW_COMMANDS": "\n".join(f"jaxyard show {kind} {component}" for kind, component in pairs),
        "PLUGIN_API": PLUGIN_API,
        "PLUGIN_NEXT_API": _next_minor(PLUGIN_API),
    }
    files = {
        "pyproject.toml": _template("pyproject.toml.tmpl"),
        "README.md": _template("README.md.tmpl"),
        f"src/{module}/__init__.py": _plugin_module(chosen, tokens),
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


def _plugin_module(chosen: Mapping[str, list[str]], tokens: Mapping[str, str]) -> str:
    """``plugin.py`` with only the sections of the kinds chosen, each section's code once per component
    (its tokens filled for it) and its hook registering them all; ``Path`` imported only where used."""
    text = _template("plugin.py")
    starts = list(SECTION.finditer(text))
    ends = [m.start() for m in starts[1:]] + [len(text)]
    header = text[: starts[0].start()]
    if not {"checkpointer", "logger"} & set(chosen):
        header = header.replace(PATH_IMPORT, "", 1)
    parts = [header]
    for match, end in zip(starts, ends, strict=True):
        kind = match.group(1)
        if kind not in chosen:
            continue
        code, hook = text[match.end() : end].split(HOOK)
        hook, register = hook.rstrip("\n").rsplit("\n", 1)
        each = [{**tokens, **_component_tokens(kind, component)} for component in chosen[kind]]
        parts.append(match.group(0) + "\n".join(_fill(code, t) for t in each))
        parts.append(HOOK + hook + "".join("\n" + _fill(register, t) for t in each) + "\n")
    return "".join(parts)


def _component_tokens(kind: str, component: str) -> dict[str, str]:
    """The name and the Python names of one component: ``my-net`` is ``MyNet...`` and ``my_net_...``
    (a name starting with a digit has its kind first: the model ``2x`` is ``Model2x...``, ``model_2x_...``)."""
    words = [w for w in re.split(r"[-_]+", component) if w]
    if words[0][0].isdigit():
        words.insert(0, kind)
    return {"PLUGIN_COMPONENT": component, "Plugin": "".join(w[0].upper() + w[1:] for w in words), "plugin_": "_".join(words) + "_"}


def _components(name: str, kinds: Iterable[str], components: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """``{kind: [component, ...]}`` in jaxyard's order of kinds: one named ``name`` per kind of
    ``kinds``, then those of ``components``; names checked as jaxyard's registry checks them, and
    refused twice in a kind, or when two would give the module one Python name."""
    from jaxyard.core.registry.loading import NAME_RE, normalize_kind

    kinds = [normalize_kind(kind) for kind in kinds]
    chosen: dict[str, list[str]] = {}
    for kind in kinds:
        chosen.setdefault(kind, [name])  # --kind twice is still one component
    for kind, names in components.items():
        kind = normalize_kind(kind)
        for component in [names] if isinstance(names, str) else names:
            if not isinstance(component, str) or not NAME_RE.fullmatch(component):
                raise UsageError(
                    f"invalid {kind} name {component!r}: use lower-case letters, digits, '-' and '_', "
                    f"starting with a letter or digit (for example --{kind} my-{kind})"
                )
            if component in chosen.get(kind, []):
                by_kind = f" (--kind {kind} already writes the {kind} named after the plugin)" if component == name and kind in kinds else ""
                raise UsageError(f"two {kind}s named {component!r}{by_kind}: give each --{kind} its own name")
            chosen.setdefault(kind, []).append(component)
    for kind, names in chosen.items():
        seen: dict[str, str] = {}
        for component in names:
            python = _component_tokens(kind, component)["Plugin"]
            if python in seen:
                raise UsageError(
                    f"{kind}s {seen[python]!r} and {component!r} would have the same Python names ({python}{kind.title()}Params): rename one"
                )
            seen[python] = component
    return {kind: chosen[kind] for kind in KINDS if kind in chosen}


def _next_minor(version: str) -> str:
    """``0.3`` for ``0.2``: before 1.0 a new minor release may change the plugin API."""
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def _fill(text: str, tokens: Mapping[str, str]) -> str:
    """``text`` with every token replaced; an unknown token is a bug of the templates (KeyError)."""
    return TOKEN.sub(lambda match: tokens[match.group(0)], text)


def _refuse_builtin_names(name: str, chosen: Mapping[str, list[str]]) -> None:
    """A component named like a built-in of its kind would be reachable only as PLUGIN:NAME."""
    from jaxyard.core.registry.loading import build_registry

    registry = build_registry()
    for entry in registry.entries():
        if entry.source == "builtin" and entry.name in chosen.get(entry.kind, ()):
            fix = "choose another plugin name" if entry.name == name else f"choose another --{entry.kind} name"
            raise UsageError(f"{entry.kind} {entry.name!r} is built into jaxyard; {fix}")


def _components_text(chosen: Mapping[str, list[str]]) -> str:
    """``the models a and b, the task t``."""
    return ", ".join(f"the {kind}{'s' * (len(names) > 1)} {_and(names)}" for kind, names in chosen.items())


def _and(words: list[str]) -> str:
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
