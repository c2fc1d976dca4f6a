"""registry.toml: which plugins load, and the defaults for ``run``.

The shipped registry.toml is read first; a user's file (``--registry FILE`` or
``$JAXYARD_REGISTRY``) is merged over it, table by table. Experiment files given to
``run --config`` use the same ``[run]`` and ``[KIND.NAME]`` tables.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.entries import KINDS
from jaxyard.core.registry.params import unknown_key_message
from jaxyard.core.registry.run_settings import check_run_table

ENV_REGISTRY = "JAXYARD_REGISTRY"
PLUGIN_KEYS = ("builtin", "disabled", "local", "prefer")
TABLES = ("plugins", "run", *KINDS)


@attrs.frozen
class Settings:
    """The merged registry files: plugin choices, ``[run]`` defaults and component parameters."""

    builtin: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    local: tuple[str, ...] = ()
    prefer: tuple[str, ...] = ()  # qualified names that own their bare name when plugins share it
    values: dict[str, Any] = attrs.field(factory=dict)  # {"run": {...}, "optimizer": {"adam": {...}}, ...}
    files: tuple[str, ...] = ()
    prefer_file: str | None = None  # the registry file whose [plugins] prefer is in effect (its errors name it)


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is on: set, and not "", "0", "false", "no" or "off"."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def shipped_registry() -> Path:
    return Path(str(resources.files("jaxyard") / "registry.toml"))


def load_settings(user_file: str | os.PathLike | None = None) -> Settings:
    """Read the shipped registry.toml, then ``user_file`` (or ``$JAXYARD_REGISTRY``) over it."""
    user_file = user_file or os.environ.get(ENV_REGISTRY) or None
    files = [shipped_registry()] + ([Path(user_file)] if user_file else [])
    plugins: dict[str, tuple[str, ...]] = {k: () for k in PLUGIN_KEYS}
    values: dict[str, Any] = {}
    prefer_file = None
    for path in files:
        data = read_config_file(path, allow_plugins=True)
        for key, items in data.pop("plugins", {}).items():
            if key == "local":  # relative paths are relative to the file that names them
                items = [_relative_to(path, item) for item in items]
            if key == "prefer":
                _check_prefer(path, items)
                prefer_file = str(path)
            plugins[key] = tuple(items)
        values = merge(values, data)
    return Settings(**plugins, values=values, files=tuple(str(f) for f in files), prefer_file=prefer_file)


def _check_prefer(path: Path, items: list[str]) -> None:
    """Each ``[plugins] prefer`` entry is ``PLUGIN:NAME``, and names a bare name once: two for one name
    would leave the choice to the order of the list. (Whether a loaded plugin registers it is
    checked when the registry is built.)"""
    text = path.read_text(encoding="utf-8")
    seen: dict[str, str] = {}
    for item in items:
        qualifier, _, bare = item.rpartition(":")
        if not (qualifier and bare):
            raise UsageError(_at(path, text, "prefer", f"[plugins] prefer: {item!r} is not PLUGIN:NAME (e.g. \"acme:cnn\")", table="plugins"))
        if bare in seen:
            raise UsageError(_at(
                path, text, "prefer", f"[plugins] prefer names {bare!r} twice ({seen[bare]!r} and {item!r}); keep the one you mean",
                table="plugins",
            ))
        seen[bare] = item


def read_config_file(path: str | os.PathLike, *, allow_plugins: bool = False) -> dict[str, Any]:
    """Parse and check the layout of a registry or experiment TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; TOML files must be UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"{path}: malformed TOML: {err}") from None
    except RecursionError:  # tomllib recurses per level: `a = [[[[...]]]]` thousands deep
        raise UsageError(f"{path}: malformed TOML: arrays or tables nested too deeply") from None
    tables = TABLES if allow_plugins else TABLES[1:]
    for key, value in data.items():
        if key not in tables:
            raise UsageError(_at(path, text, key, unknown_key_message("top level", key, list(tables))))
        if not isinstance(value, dict):
            raise UsageError(_at(path, text, key, f"{key!r} must be a table ([{key}]), got {value!r}"))
    for key, value in data.get("plugins", {}).items():
        if key not in PLUGIN_KEYS:
            raise UsageError(_at(path, text, key, unknown_key_message("[plugins]", key, list(PLUGIN_KEYS)), table="plugins"))
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise UsageError(_at(path, text, key, f"plugins.{key} must be a list of strings, got {value!r}", table="plugins"))
    if "run" in data:
        for key, value in data["run"].items():  # one key at a time, so the error names its line
            try:
                check_run_table({key: value})
            except UsageError as err:
                raise UsageError(_at(path, text, key, str(err), table="run")) from None
    for kind in KINDS:
        for name, table in data.get(kind, {}).items():
            if not isinstance(table, dict):
                msg = f"{kind}.{name} must be a table of parameters ([{kind}.{name}]), got {table!r}"
                raise UsageError(_at(path, text, name, msg))
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``, table by table; other values are replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write ``{"run": {...}, "optimizer": {"adam": {...}}}`` as TOML (the layout of config files)."""
    lines: list[str] = []

    def table(header: str, values: dict[str, Any]) -> None:
        lines.append(f"[{header}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None)
        lines.append("")

    for key, value in data.items():
        if all(isinstance(v, dict) for v in value.values()) and value:
            for name, sub in value.items():
                table(f"{key}.{_toml_key(name)}", sub)
        else:
            table(key, value)
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_value(v: Any) -> str:
    """``v`` as a TOML value: ``true``, ``3``, ``1e-08``, ``"val_loss"``, ``[256, 128]``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def _relative_to(path: Path, item: str) -> str:
    if item.endswith(".py") and not os.path.isabs(item):
        return str((path.parent / item).resolve())
    return item


def _at(path: Path, text: str, key: str, message: str, *, table: str | None = None) -> str:
    """Prefix ``message`` with the file and, where it can be found, the line defining ``key``
    (searched for after the ``[table]`` header, when the file has one)."""
    start = 0
    if table:
        header = re.search(rf"^\s*\[\s*[\"']?{re.escape(table)}[\"']?\s*\]", text, re.M)
        start = header.end() if header else 0
    pattern = re.compile(rf"^\s*(\[\s*)?[\"']?{re.escape(key)}[\"']?\s*(=|\]|\.)", re.M)
    match = pattern.search(text, start) or pattern.search(text)
    line = f", line {text.count(chr(10), 0, match.start()) + 1}" if match else ""
    return f"{path}{line}: {message}"
