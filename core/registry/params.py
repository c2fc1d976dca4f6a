"""Component parameters: attrs classes with a doc per field, built and checked from user values."""

from __future__ import annotations

import math
import tomllib
import types
import typing
from typing import Any

import attrs

from jaxyard.core.errors import UsageError, did_you_mean


def param(default: Any = attrs.NOTHING, doc: str = "", *, validator=None, converter=None, traced: bool = False):
    """Declare one parameter of a component: an ``attrs.field`` carrying a one-line ``doc``.

    ``traced=True`` (float parameters only) lets the value reach the compiled training step as
    an input instead of a constant, so runs that differ only in it (a sweep) share one compiled
    program. The factory then receives a traced scalar: it may compute with it, but not branch
    on it in Python (``if p.momentum:``) or pass it where a Python number is required.
    """
    metadata = {"doc": doc, "traced": True} if traced else {"doc": doc}
    return attrs.field(default=default, validator=validator, converter=converter, metadata=metadata)


def traced_fields(cls: type) -> tuple[str, ...]:
    """The parameters of ``cls`` declared ``traced=True``."""
    return tuple(f.name for f in attrs.fields(cls) if f.metadata.get("traced"))


@attrs.frozen
class NoParams:
    """The parameters of a component that takes none."""


@attrs.frozen
class ParamInfo:
    name: str
    type: str
    default: Any
    doc: str
    traced: bool = False  # may be an input of the compiled step (a sweep's runs share one program)


def describe(cls: type) -> list[ParamInfo]:
    """Name, type (as written), default and doc of each field of an attrs parameter class."""
    out = []
    for f in attrs.fields(cls):
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        type_name = f.type if isinstance(f.type, str) else _type_name(f.type)
        out.append(ParamInfo(f.name, type_name or "any", default, f.metadata.get("doc", ""), bool(f.metadata.get("traced"))))
    return out


def field_types(cls: type) -> dict[str, Any]:
    """The resolved type of each field (string annotations evaluated in the class's module)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: fall back to accepting any value
        return {f.name: (f.type if not isinstance(f.type, str) else Any) for f in attrs.fields(cls)}


class CommandLineText(str):
    """A value typed on the command line (``--set``): read once the type it is for is known."""


def parse_value(text: str) -> Any:
    """Read a command-line value as a TOML literal (``0.9``, ``true``, ``[1, 2]``), else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return str(text)


def build(cls: type, values: dict[str, Any], *, where: str):
    """Build parameter class ``cls`` from ``values``, naming ``where`` in any error.

    Unknown keys, values of the wrong type and values a validator refuses are each a
    :class:`UsageError` with the key, the value and what would be accepted.
    """
    fields = {f.name: f for f in attrs.fields(cls)}
    types_ = field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(unknown_key_message(where, key, list(fields)))
        kwargs[key] = coerce(value, types_.get(key, Any), where=f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{where}: {_validator_message(err)}") from None


def unknown_key_message(where: str, key: str, valid: list[str]) -> str:
    choices = ", ".join(valid) if valid else "none: it takes no parameters"
    return f"{where}: unknown key {key!r}{did_you_mean(key, valid)} (valid keys: {choices})"


def coerce(value: Any, tp: Any, *, where: str) -> Any:
    """Convert ``value`` to type ``tp`` where that is lossless, else raise a UsageError."""
    if tp is Any or tp is None:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(value, CommandLineText) and origin not in (typing.Union, types.UnionType):
        parsed = parse_value(value)  # `--set run.runs_dir=2024` is a name, `--set run.runs_dir='"a b"'` one too
        value = (parsed if isinstance(parsed, str) else str(value)) if tp is str else parsed
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where=where)
            except UsageError as err:
                errors.append(err)
        raise errors[0] if errors else UsageError(f"{where}: got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise UsageError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [parse_value(v.strip()) for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        items = [coerce(v, item, where=where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UsageError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):  # inf and nan pass comparisons like "> 0" and fail an epoch later
                raise UsageError(f"{where}: expected a finite number, got {value!r}")
            return number
        raise UsageError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UsageError(f"{where}: expected a string, got {value!r}")
    return value


def to_plain(params) -> dict[str, Any]:
    """The parameter values as TOML/JSON-friendly Python values (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in attrs.asdict(params, recurse=False).items()
    }


def _validator_message(err: Exception) -> str:
    # attrs validators raise ValueError(msg, attribute, validator, value); keep the readable part;
    # instance_of and other type validators raise TypeError with the same arguments.
    if isinstance(err, (ValueError, TypeError)) and len(err.args) >= 4 and isinstance(err.args[1], attrs.Attribute):
        attr, value = err.args[1], err.args[3]
        return f"{attr.name} = {value!r} is invalid: {err.args[0]}"
    return str(err)


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
