"""Component parameters: attrs classes with a doc per field, built and checked from user values."""

from __future__ import annotations

import math
import os
import posixpath
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path, PureWindowsPath
from typing import Any

import attrs

from jaxyard.core.errors import UsageError, did_you_mean


def param(
    default: Any = attrs.NOTHING,
    doc: str = "",
    *,
    validator=None,
    converter=None,
    traced: bool = False,
    writes: bool = False,
    outside: bool | Callable[[Any], bool] = False,
):
    """Declare one parameter of a component: an ``attrs.field`` carrying a one-line ``doc``.

    ``traced=True`` (float parameters only) lets the value reach the compiled training step as
    an input instead of a constant, so runs that differ only in it (a sweep) share one compiled
    program. The factory then receives a traced scalar: it may compute with it, but not branch
    on it in Python (``if p.momentum:``) or pass it where a Python number is required.

    ``writes=True`` (str parameters): the value names a file or folder the component writes,
    relative to the run directory. An absolute path, one starting with ``~``, one whose
    normalised form leaves the directory (``..``) or is the directory itself (``""``, ``.``),
    one holding a null byte and one in a name jaxyard writes itself (:data:`RESERVED`, as first
    component; the parameter's own default excepted) are refused, whatever gives the value; the
    factory joins it with :func:`inside`, which also refuses a link that leads out.

    ``outside=True`` (every value but the default) or ``outside=predicate`` (the values for which
    ``predicate(value)`` is true): the value sends the run's data outside its run directory (a
    server's URI, an online mode, a database elsewhere). A data file (an experiment file, a run
    directory's config.toml) cannot choose such a value: it must be the user's explicit word
    (``--set``, a registry file), else the run is refused in one line saying so.
    """
    metadata: dict[str, Any] = {"doc": doc}
    if traced:
        metadata["traced"] = True
    if writes:
        metadata["writes"] = True
        validator = [*_validators(validator), _stays_inside]
    if outside:
        metadata["outside"] = outside
    return attrs.field(default=default, validator=validator, converter=converter, metadata=metadata)


def _validators(validator) -> list:
    if validator is None:
        return []
    return list(validator) if isinstance(validator, (list, tuple)) else [validator]


#: what a ``writes=True`` value must be, as the one-line error says it
WRITES_RULE = "a path the component writes must stay inside the run directory (relative, no '~', no '..' that leaves it)"


#: what jaxyard and its built-in loggers write in a run directory, by first path component: no
#: ``writes=True`` value may name them (but for a parameter's own default), nor their case variants,
#: nor a file's companions (``config.toml.bak``, ``mlflow.db-journal``: the name, then ``.`` or ``-``)
RESERVED = {
    "config.toml": "the run's configuration", "summary.json": "the run's summary", "components.json": "where each component came from",
    "changes.jsonl": "what resume changed", "config.bound.json": "the run's bound configuration", ".jaxyard.lock": "the writers' lock",
    "checkpoints": "the checkpoints",
    "training_curves.png": "the training curves", "profile": "the profiler's trace", "mlflow.db": "the mlflow logger's",
    "mlflow-artifacts": "the mlflow logger's", "mlflow_run.json": "the mlflow logger's", "wandb": "the wandb logger's",
    "wandb_run.json": "the wandb logger's", "tensorboard": "the tensorboard logger's",
}


def normal_path(relative: str) -> str:
    """``relative`` normalised as a path in a directory (``./a//b`` -> ``a/b``; ``""`` -> ``.``)."""
    return posixpath.normpath(relative.replace("\\", "/"))


def unwritable(relative: str, default: Any = None) -> str | None:
    """Why ``relative`` (a ``writes=True`` value whose default is ``default``) cannot name what a
    component writes in a run directory, or None: a null byte, a path leaving it
    (:func:`leaves_directory`), the directory itself (but for the default), or a name of
    :data:`RESERVED` (but for the default's)."""
    if "\0" in relative:
        return "a path cannot hold a null byte"
    if leaves_directory(relative):
        return WRITES_RULE
    normal = normal_path(relative)
    if normal == "." and relative != default:  # a default of "" may mean "none" (the factory's inside() refuses it as a path)
        return "it names the run directory itself, not a file or folder in it"
    first = normal.split("/")[0].casefold()
    own = normal_path(default).split("/")[0].casefold() if isinstance(default, str) else None
    for name, why in RESERVED.items():
        name = name.casefold()
        if name != own and (first == name or ("." in name and first.startswith((f"{name}.", f"{name}-")))):
            return f"{normal.split('/')[0]!r} is jaxyard's own in the run directory ({why}); choose another name"
    return None


def leaves_directory(relative: str) -> bool:
    """Whether ``relative``, joined to a directory, names something outside it before links are
    followed: absolute (a root, a Windows drive), starting with ``~`` (which a reader of the file
    would take for a home directory), or leaving it once ``..`` is applied (``a/../../b``)."""
    text = relative.replace("\\", "/")
    if text.startswith(("/", "~")) or PureWindowsPath(relative).drive:
        return True
    return posixpath.normpath(text).split("/")[0] == ".."


def _stays_inside(instance, attribute, value) -> None:
    if isinstance(value, str) and (reason := unwritable(value, attribute.default)):
        raise ValueError(reason, attribute, None, value)


def inside(directory: str | os.PathLike, relative: str | os.PathLike, *, what: str = "", where: str = "run directory") -> Path:
    """``directory / relative``, refused unless it names something inside ``directory`` (not the
    directory itself) once links are followed.

    A factory's second guard for a ``writes=True`` parameter: the value was checked as written,
    but a run directory is data too, and a link in it (``metrics.jsonl`` -> a file elsewhere) would
    carry the writes out. ``what`` names the parameter in the error (``logger.jsonl.filename``);
    ``where`` what ``directory`` is (``sweep directory``).

    :raises UsageError: one line naming the path, where it leads, and the rule or the way out.
    """
    text = os.fspath(relative)
    name = f"{what} = {text!r}: " if what else ""
    if "\0" in text:
        raise UsageError(f"{name}a path cannot hold a null byte")
    path = Path(directory) / relative
    if normal_path(text) == ".":
        raise UsageError(f"{name}{text!r} names the {where} {directory} itself, not a file or folder in it")
    base, real = os.path.realpath(directory), os.path.realpath(path)
    if leaves_directory(text):
        raise UsageError(f"{name}{path} leads to {real}, outside the {where} {directory}; {WRITES_RULE}")
    if os.path.commonpath([base, real]) != base:
        link = _first_link(Path(directory), text) or path
        raise UsageError(f"{name}{path} leads to {real}, outside the {where} {directory}: {link} is a link, and jaxyard writes nothing "
                         f"through a link that leads out; remove the link (or move what it leads to back into the {where})")
    return path


def _first_link(directory: Path, relative: str) -> Path | None:
    """The first of ``relative``'s components under ``directory`` that is a link, if any."""
    path = directory
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            return path
    return None


def outside_value(field: attrs.Attribute, value: Any) -> bool:
    """Whether ``value`` of a parameter declared ``outside=`` sends data outside the run directory."""
    marker = field.metadata.get("outside")
    if not marker:
        return False
    if callable(marker):
        return bool(marker(value))
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    return value != default


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
    writes: bool = False  # names a path the component writes, inside the run directory
    outside: bool = False  # (some of) its values send data outside the run directory: not from a data file


def describe(cls: type) -> list[ParamInfo]:
    """Name, type (as written), default and doc of each field of an attrs parameter class."""
    out = []
    for f in attrs.fields(cls):
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        type_name = f.type if isinstance(f.type, str) else _type_name(f.type)
        out.append(ParamInfo(
            f.name, type_name or "any", default, f.metadata.get("doc", ""), bool(f.metadata.get("traced")),
            writes=bool(f.metadata.get("writes")), outside=bool(f.metadata.get("outside")),
        ))
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
