"""Checks of every kind: discovery through the entry point, a description, documented parameters
that round-trip through ``--set`` and config.toml, and a plugin module that imports no jax."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from typing import Any

import attrs

from jaxyard.core.errors import UsageError
from jaxyard.core.kit.harness import (
    HEAVY_MODULES,
    CheckSkipped,
    Failure,
    Subject,
    default_registry,
    define_check,
    error_text,
    normalize_distribution,
)


@define_check("all")
def check_entry_point(s: Subject) -> str:
    """The component is found by jaxyard's own discovery, from the plugin and distribution asked for."""
    registry = s.options.registry if s.options.registry is not None else default_registry()
    entry = s.entry
    try:
        found = registry.get(entry.kind, entry.qualified)
    except UsageError:
        raise Failure(f"build_registry() does not list it ({entry.kind}s: {', '.join(registry.names(entry.kind))})",
                      "register it from a hook of the plugin the entry point names") from None
    if found.plugin != entry.plugin or found.factory is not entry.factory:
        raise Failure(f"build_registry() lists it from plugin {found.plugin!r}, not {entry.plugin!r}", "register each component once")
    info = registry.plugin(entry.plugin)
    if not info.ok:
        raise Failure(f"its plugin failed to load: {info.error}", "fix the plugin")
    if f"{entry.kind}:{entry.name}" not in info.components:  # PluginInfo lists bare names
        raise Failure(f"plugin {info.name!r} does not report it among its components", "register it from that plugin's hook")
    dist = s.options.distribution
    if dist is None:
        return f"plugin {info.name} ({info.source})"
    if not info.distribution or normalize_distribution(info.distribution) != normalize_distribution(dist):
        raise Failure(f"it comes from distribution {info.distribution!r}, not {dist!r}",
                      "declare the entry point in the distribution's pyproject.toml")
    if info.source == "builtin":
        return f"built-in plugin {info.name} of {info.distribution} {info.version}"
    if info.source != "entry point":
        raise Failure(f"its plugin was loaded as a {info.source} plugin, not through an entry point",
                      "declare [project.entry-points.jaxyard] in pyproject.toml and install the package")
    try:
        declared = {ep.name: ep.value for ep in metadata.distribution(info.distribution).entry_points if ep.group == "jaxyard"}
    except metadata.PackageNotFoundError:
        raise Failure(f"distribution {info.distribution!r} is not installed", "pip install the package") from None
    if declared.get(info.name) != info.module:
        raise Failure(f"the distribution's entry points in group 'jaxyard' are {declared}, which do not name plugin {info.name!r} = {info.module!r}",
                      "declare the entry point in [project.entry-points.jaxyard] and reinstall")
    return f"entry point {info.name} = {info.module} of {info.distribution} {info.version}"


@define_check("all")
def check_description(s: Subject) -> None:
    """It has a one-line description for `jaxyard list`."""
    text = s.entry.description
    if not text or not text.strip() or "\n" in text:
        raise Failure(f"its description is {text!r}", "give register(..., description='one line') or a docstring whose first line says what it is")
    if len(text) > 200:
        raise Failure(f"its description has {len(text)} characters", "keep the description to one short line (the factory's docstring can say more)")


@define_check("all")
def check_params_documented(s: Subject) -> None:
    """Its params class is an attrs class whose fields each have a type annotation, a default and a doc."""
    cls = s.entry.params
    if not attrs.has(cls):
        raise Failure(f"params {cls!r} is not an attrs class", "decorate the class with @attrs.frozen")
    problems = []
    for f in attrs.fields(cls):
        if f.type is None:
            problems.append(f"{f.name} has no type annotation")
        if f.default is attrs.NOTHING:
            problems.append(f"{f.name} has no default")
        if not str(f.metadata.get("doc", "")).strip():
            problems.append(f"{f.name} has no doc")
    if problems:
        raise Failure(f"in {cls.__name__}: {'; '.join(problems)}",
                      "declare each field as `name: type = jaxyard.param(default, \"one-line doc\")`")
    try:
        cls()
    except Exception as err:  # whatever a validator raises is the finding
        raise Failure(f"{cls.__name__}() with its defaults raises {type(err).__name__}: {error_text(err)}",
                      "make the defaults valid: a run with no --set must build") from None


def command_line_texts(value: Any) -> list[str]:
    """How a user may type ``value`` after ``--set KIND.KEY=``: as printed (``str``; for a sequence
    the comma list the README shows, ``256,128``) and as ``jaxyard show`` prints it (JSON)."""
    if value is None:  # `--set KEY=none`; `jaxyard show` prints null, which --set does not read as None
        return ["None", "none"]
    if isinstance(value, (tuple, list)):
        texts = [",".join(command_line_texts(v)[0] for v in value)] if value else []
    elif isinstance(value, bool):
        texts = [str(value).lower(), str(value)]
    else:
        texts = [str(value)]
    try:
        texts.append(json.dumps(list(value) if isinstance(value, tuple) else value))
    except TypeError:
        pass
    return list(dict.fromkeys(texts))


@define_check("all")
def check_params_roundtrip(s: Subject) -> None:
    """Each default survives `--set KIND.KEY=TEXT` as typed or shown, and config.toml (dump_toml, tomllib)."""
    from jaxyard.core.registry.params import CommandLineText, build, to_plain
    from jaxyard.core.registry.settings import dump_toml

    cls = s.entry.params
    where = f"{s.entry.kind} {s.entry.selector!r}"
    default = cls()
    for f in attrs.fields(cls):
        value = getattr(default, f.name)
        for text in command_line_texts(value):
            try:
                got = getattr(build(cls, {f.name: CommandLineText(text)}, where=where), f.name)
            except UsageError as err:
                raise Failure(f"--set {s.entry.kind}.{f.name}={text} (its default, as typed) is refused: {err}",
                              "use a type jaxyard converts from text (bool, int, float, str, tuple[...] of them, Literal) "
                              "or a converter that accepts the text form") from None
            if got != value:
                raise Failure(f"--set {s.entry.kind}.{f.name}={text} gives {got!r}, not its default {value!r}",
                              "use a field type the command line converts losslessly")
    plain = to_plain(default)
    try:
        text = dump_toml({s.entry.kind: {s.entry.name: plain}})
        loaded = tomllib.loads(text)[s.entry.kind][s.entry.name]
    except Exception as err:  # TypeError from dump_toml, TOMLDecodeError, ...: all findings
        raise Failure(f"its defaults {plain!r} cannot be written to and read from config.toml: {type(err).__name__}: {error_text(err)}",
                      "use values TOML holds (numbers, booleans, strings, lists of them); None is not one") from None
    try:
        again = build(cls, loaded, where=where)
    except UsageError as err:
        raise Failure(f"its defaults read back from config.toml are refused: {err}", "use field types that read back from TOML") from None
    if again != default:
        raise Failure(f"its defaults read back from config.toml are {again!r}, not {default!r}",
                      "use field types that read back from TOML unchanged (a None default is dropped from config.toml)")


@define_check("all")
def check_light_import(s: Subject) -> str:
    """Importing its plugin module imports none of jax, flax, optax, orbax (listing stays fast)."""
    module = s.entry.module.partition(":")[0]
    if not module:
        raise CheckSkipped(f"the entry does not say which module plugin {s.entry.plugin!r} is")
    if module.endswith(".py"):
        raise CheckSkipped(f"plugin {s.entry.plugin!r} is a .py file, not an importable module")
    heavy = _heavy_imports(module)
    if heavy:
        raise Failure(f"`import {module}` imports {', '.join(heavy)}",
                      "import jax, flax, optax and orbax inside the factories (and the classes that need them from a "
                      "module imported there), never at the top of the plugin module")
    return f"import {module}: no heavy modules"


@functools.cache
def _heavy_imports(module: str) -> tuple[str, ...]:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    # the same import path as this process (a plugin found through sys.path entries added at run time too)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120, env=env)
    if proc.returncode != 0:
        raise Failure(f"`import {module}` fails in a fresh process: {error_text((proc.stderr.strip().splitlines() or ['?'])[-1])}",
                      "make the plugin module importable on its own")
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))
