"""The conformance kit: checks that a plugin's components keep the contracts of :mod:`jaxyard.core.registry.hookspecs`.

One test file gives a plugin package a test per component and check::

    from jaxyard.core.kit import parametrize_with_checks

    @parametrize_with_checks(distribution="jaxyard-my-plugin")
    def test_conformance(entry, check, tmp_path):
        check(entry, tmp_path)

The components are found the way ``jaxyard list`` finds them (the real entry points, through
:func:`jaxyard.build_registry`), so the test fails when the package is not installed or its
entry point is wrong. The same checks run without pytest::

    from jaxyard.core.kit import check_component
    check_component("optimizer:signsgd")      # {"jit_equals_eager": "passed", ...}; AssertionError on failure

``tier="api"`` runs only the checks that train nothing (registration, parameters, what the
factory returns, shapes); ``tier="full"`` (the default) adds the numerical ones (a toy problem
optimised, jit against eager, checkpoints written and damaged). A check that does not apply
to a component is opted out with the reason, ``skip={"optimizer:sam": {"jit_equals_eager":
"uses host callbacks"}}`` (keys are ``KIND:NAME`` and check names, ``fnmatch`` patterns allowed);
an opt-out that matches nothing is an error, so a typo does not silently skip. Components
that need values to be built (a loader's file) get them with ``params={"loader:npz": {...}}``
(a dict, or a callable receiving the test's temporary directory and returning one).

This module is also a pytest plugin (the ``pytest11`` entry point ``jaxyard``), loaded in every
pytest session of an environment where jaxyard is installed: importing it imports neither jax
nor pytest's heavier parts; jax, flax, optax and numpy are imported by the checks themselves.
It offers the fixture ``jaxyard_registry`` (the registry as ``jaxyard list`` builds it).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core.errors import UsageError, one_line
from jaxyard.core.registry.entries import KINDS, Entry

__all__ = [
    "CHECKS",
    "TIERS",
    "Check",
    "CheckSkipped",
    "check_component",
    "checks_for",
    "components",
    "parametrize_with_checks",
]

TIERS = ("api", "full")
#: Modules a plugin must not import at the top of its module (hookspecs: listing must stay fast).
HEAVY_MODULES = ("jax", "jaxlib", "flax", "optax", "orbax")
#: The classes a model is built for, unless ``num_classes=`` says otherwise (not 10: a model that
#: hard-codes the usual count is caught).
NUM_CLASSES = 5
#: Input shapes tried, in order, for a model whose inputs nothing else names: the first it accepts is used.
CANDIDATE_INPUT_SHAPES = ((12,), (8, 8, 1), (28, 28, 1), (32, 32, 3))


class CheckSkipped(Exception):
    """Raised by a check that does not apply (a missing extra, a storage without files)."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class _Failure(Exception):
    """Raised inside a check: what is wrong and what to do about it."""

    def __init__(self, what: str, fix: str):
        self.what, self.fix = what, fix
        super().__init__(what)


# --- what a check runs on ----------------------------------------------------------------------


@attrs.frozen
class Options:
    """What a check needs besides the entry: how to build it and where it came from."""

    distribution: str | None = None
    params: Any = None  # dict or callable(tmp_path) -> dict: values for the params class
    input_shape: tuple[int, ...] | None = None  # models: the shape of one example
    num_classes: int = NUM_CLASSES
    registry: Any = attrs.field(default=None, eq=False)


@attrs.define
class Subject:
    """A component under test: its entry, options and a temporary directory of its own."""

    entry: Entry
    options: Options
    tmp_path: Path
    _values: dict[str, Any] | None = attrs.field(default=None, init=False)

    @property
    def label(self) -> str:
        return label(self.entry)

    def values(self) -> dict[str, Any]:
        """The values its params class is built from (a callable option is called once, with tmp_path)."""
        if self._values is None:
            values = self.options.params
            if callable(values):
                values = values(self.tmp_path)
            self._values = dict(values or {})
        return dict(self._values)

    def params(self):
        from jaxyard.core.registry.params import build

        return build(self.entry.params, self.values(), where=f"{self.entry.kind} {self.entry.selector!r}")

    def create(self, **context):
        """The component built with its params and ``context``; a missing extra skips the check."""
        from jaxyard.core.train.loggers import MissingExtra

        try:
            return self.entry.create(self.params(), **context)
        except MissingExtra as err:
            raise CheckSkipped(str(err)) from None


@attrs.frozen
class Check:
    """One conformance check: a name, the kinds it applies to, its tier and what it verifies.

    Call it on an entry: ``check(entry, tmp_path)`` raises AssertionError on a failure (one
    paragraph naming the component, the check and what to fix) and skips, under pytest, when it
    does not apply. :func:`parametrize_with_checks` hands out checks bound to their options.
    """

    name: str
    kinds: tuple[str, ...]
    tier: str
    doc: str
    func: Callable[[Subject], str | None] = attrs.field(repr=False)
    options: Options = attrs.field(factory=Options, repr=False)

    def __call__(self, entry: Entry | str, tmp_path: str | os.PathLike | None = None) -> str | None:
        entry = _resolve_entry(entry, self.options.registry)
        under_pytest = "pytest" in sys.modules
        try:
            note = run_check(entry, self, tmp_path=tmp_path)
        except CheckSkipped as skipped:
            if under_pytest:
                import pytest

                pytest.skip(skipped.reason)
            raise
        if note and under_pytest:
            print(f"{label(entry)}-{self.name}: {note}")  # what was observed (pytest -rP shows it)
        return note

    def bind(self, options: Options) -> Check:
        return attrs.evolve(self, options=options)


CHECKS: list[Check] = []


def _check(kinds: str | tuple[str, ...], tier: str = "api", name: str | None = None):
    """Register a check function; its docstring's first paragraph is the check's description."""

    def register(func, name=name):
        name = name or func.__name__.removeprefix("check_")
        doc = " ".join(textwrap.dedent(func.__doc__ or "").strip().split("\n\n")[0].split())
        CHECKS.append(Check(name, tuple(KINDS) if kinds == "all" else (kinds,) if isinstance(kinds, str) else kinds, tier, doc, func))
        return func

    return register


def run_check(entry: Entry, check: Check, *, tmp_path: str | os.PathLike | None = None) -> str | None:
    """Run one check on ``entry``; returns a note (what was observed) or None.

    Raises AssertionError with one paragraph on a failure, :class:`CheckSkipped` when the check
    does not apply.
    """
    if entry.kind not in check.kinds:
        raise CheckSkipped(f"check {check.name!r} is for {', '.join(check.kinds)}, not {entry.kind}")
    with contextlib.ExitStack() as stack:
        if tmp_path is None:
            tmp_path = stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxyard-check-"))
        subject = Subject(entry, check.options, Path(tmp_path))
        try:
            return check.func(subject)
        except CheckSkipped:
            raise
        except _Failure as failure:
            raise AssertionError(_message(subject, check, failure.what, failure.fix)) from None
        except AssertionError as err:
            raise AssertionError(_message(subject, check, _one_line(err) or "an assertion failed", "see the assertion above")) from err
        except Exception as err:
            what = f"it raised {type(err).__name__}: {_one_line(err)}"
            raise AssertionError(_message(subject, check, what, "see the traceback of the exception above")) from err


def _message(subject: Subject, check: Check, what: str, fix: str) -> str:
    entry = subject.entry
    what = what.rstrip(".")
    text = (
        f"{entry.kind} {entry.selector!r} ({entry.origin()}) fails jaxyard check {check.name!r} "
        f"({check.doc.rstrip('.')}): {what}. Fix: {fix.rstrip('.')}. If the check cannot apply to this "
        f"component, opt out with a reason: skip={{{subject.label!r}: {{{check.name!r}: \"why\"}}}}."
    )
    return " ".join(text.split())


def _one_line(err: BaseException | str) -> str:
    """The message alone, collapsed (the kit names the exception's type itself where it matters)."""
    return one_line(str(err), 600)


# --- discovery ---------------------------------------------------------------------------------


def label(entry: Entry) -> str:
    """``KIND:NAME`` as skip keys and test ids spell a component (``NAME`` qualified, ``acme:cnn``,
    where a built-in or a preferred plugin has the bare name)."""
    return f"{entry.kind}:{entry.selector}"


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@functools.cache
def _default_registry():
    from jaxyard.core.registry.loading import build_registry

    return build_registry()


def components(
    distribution: str | None = None,
    plugin: str | None = None,
    registry=None,
    kinds: Iterable[str] | None = None,
) -> list[Entry]:
    """The components a distribution (or a plugin, or every loaded plugin) registers.

    Found through the real discovery: :func:`jaxyard.build_registry` with the installed entry
    points, unless ``registry`` is given. A distribution or plugin that registers nothing, is not
    installed or failed to load is a :class:`jaxyard.UsageError` saying so (a conformance test
    must not pass by testing nothing).
    """
    registry = registry if registry is not None else _default_registry()
    wanted_kinds = set(KINDS if kinds is None else (_kind(k) for k in kinds))
    if distribution is not None and plugin is not None:
        raise UsageError("components(): give distribution= or plugin=, not both")
    infos = list(registry.plugins)
    if distribution is not None:
        infos = [p for p in infos if p.distribution and _normalize(p.distribution) == _normalize(distribution)]
        what = f"distribution {distribution!r}"
    elif plugin is not None:
        infos = [p for p in infos if p.name == plugin]
        what = f"plugin {plugin!r}"
    else:
        what = "any plugin"
    failed = [p for p in infos if not p.ok]
    if failed:
        raise UsageError("; ".join(f"plugin {p.label()} failed to load: {p.error}" for p in failed))
    if not infos:
        found = sorted({p.distribution for p in registry.plugins if p.distribution})
        hint = " (is it installed? `pip install -e .` in its directory; is it blocked by JAXYARD_LOAD_PLUGINS or JAXYARD_DISABLE_PLUGINS?)"
        raise UsageError(f"no loaded plugin comes from {what}{hint if distribution else ''}; distributions seen: {', '.join(found) or 'none'}")
    names = {p.name for p in infos}
    entries = [e for e in registry.entries() if e.plugin in names and e.kind in wanted_kinds]
    if not entries:
        raise UsageError(f"{what} registers no components{' of kinds ' + ', '.join(sorted(wanted_kinds)) if kinds else ''}")
    return entries


def _kind(kind: str) -> str:
    from jaxyard.core.registry.loading import normalize_kind

    return normalize_kind(kind)


def _resolve_entry(entry: Entry | str, registry=None) -> Entry:
    if isinstance(entry, Entry):
        return entry
    kind, sep, name = str(entry).partition(":")
    if not sep:
        raise UsageError(f"name a component as KIND:NAME, for example optimizer:adam, got {entry!r}")
    return (registry if registry is not None else _default_registry()).get(kind, name)


def checks_for(entry: Entry | str, tier: str = "full") -> list[Check]:
    """The checks that apply to ``entry``'s kind at ``tier`` ("api": no training; "full": all)."""
    if tier not in TIERS:
        raise UsageError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    kind = entry.kind if isinstance(entry, Entry) else str(entry).partition(":")[0]
    kind = _kind(kind)
    allowed = TIERS[: TIERS.index(tier) + 1]
    return [c for c in CHECKS if kind in c.kinds and c.tier in allowed]


# --- opt-outs and per-component options ---------------------------------------------------------


def _per_component(value: Any, entry: Entry, *, what: str) -> Any:
    """``value`` for ``entry`` from a mapping keyed by ``KIND:NAME`` (fnmatch patterns allowed)."""
    if not isinstance(value, Mapping):
        return value
    found = [v for k, v in value.items() if fnmatch.fnmatchcase(label(entry), k)]
    if len(found) > 1:
        raise UsageError(f"{what}: several keys match {label(entry)}")
    return found[0] if found else None


def _skips_for(skip: Mapping[str, Mapping[str, str]] | None, entry: Entry) -> dict[str, str]:
    """``{check pattern: reason}`` for ``entry``."""
    out: dict[str, str] = {}
    for key, checks in (skip or {}).items():
        if fnmatch.fnmatchcase(label(entry), key):
            out.update(checks)
    return out


def _validate_skip(skip, entries: list[Entry], tier: str) -> None:
    """Every opt-out names a component and a check that exist, with a reason."""
    if skip is None:
        return
    if not isinstance(skip, Mapping):
        raise UsageError(f"skip must map 'KIND:NAME' to {{check: reason}}, got {skip!r}")
    labels = [label(e) for e in entries]
    for key, checks in skip.items():
        if ":" not in key:
            raise UsageError(f"skip key {key!r}: name a component as KIND:NAME (patterns allowed, e.g. 'logger:*')")
        matched = [e for e, text in zip(entries, labels, strict=True) if fnmatch.fnmatchcase(text, key)]
        if not matched:
            raise UsageError(f"skip key {key!r} matches no component under test ({', '.join(labels)})")
        if not isinstance(checks, Mapping):
            raise UsageError(f"skip[{key!r}] must map check names to reasons, got {checks!r}")
        names = {c.name for e in matched for c in checks_for(e, "full")}
        for check, reason in checks.items():
            if not any(fnmatch.fnmatchcase(n, check) for n in names):
                raise UsageError(f"skip[{key!r}]: no check {check!r} applies to it (checks: {', '.join(sorted(names))})")
            if not isinstance(reason, str) or not reason.strip():
                raise UsageError(f"skip[{key!r}][{check!r}]: give the reason the check does not apply, as a string")


def _skip_reason(skips: dict[str, str], check: Check) -> str | None:
    for pattern, reason in skips.items():
        if fnmatch.fnmatchcase(check.name, pattern):
            return reason
    return None


def _options_for(entry: Entry, *, distribution, params, input_shape, num_classes, registry) -> Options:
    shape = _per_component(input_shape, entry, what="input_shape")
    return Options(
        distribution=distribution,
        params=_per_component(params, entry, what="params"),
        input_shape=tuple(shape) if shape is not None else None,
        num_classes=num_classes,
        registry=registry,
    )


def _entries(entry_or_entries, distribution, plugin, registry, kinds) -> list[Entry]:
    if entry_or_entries is None:
        return components(distribution=distribution, plugin=plugin, registry=registry, kinds=kinds)
    items = [entry_or_entries] if isinstance(entry_or_entries, (Entry, str)) else list(entry_or_entries)
    return [_resolve_entry(e, registry) for e in items]


# --- the two ways to run them -------------------------------------------------------------------


def check_component(
    entry: Entry | str,
    *,
    tier: str = "full",
    skip: Mapping[str, Any] | None = None,
    params: Any = None,
    input_shape: Any = None,
    num_classes: int = NUM_CLASSES,
    distribution: str | None = None,
    registry=None,
    tmp_path: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Run every check of ``tier`` on one component (an Entry or ``"KIND:NAME"``).

    ``skip`` is ``{check: reason}`` (or ``{"KIND:NAME": {check: reason}}``); ``params`` the values
    to build its params class from (a dict, or a callable of a temporary directory). Returns
    ``{check: "passed" | "skipped: reason"}``; raises AssertionError naming every failed check.
    """
    entry = _resolve_entry(entry, registry)
    if skip and not any(":" in k for k in skip):
        skip = {label(entry): skip}
    _validate_skip(skip, [entry], tier)
    options = _options_for(entry, distribution=distribution, params=params, input_shape=input_shape, num_classes=num_classes, registry=registry)
    skips = _skips_for(skip, entry)
    results: dict[str, str] = {}
    failures: list[str] = []
    for check in checks_for(entry, tier):
        reason = _skip_reason(skips, check)
        if reason:
            results[check.name] = f"skipped: {reason}"
            continue
        where = None
        if tmp_path is not None:
            where = Path(tmp_path) / check.name
            where.mkdir(parents=True, exist_ok=True)
        try:
            note = run_check(entry, check.bind(options), tmp_path=where)
        except CheckSkipped as skipped:
            results[check.name] = f"skipped: {skipped.reason}"
        except AssertionError as err:
            results[check.name] = "failed"
            failures.append(str(err))
        else:
            results[check.name] = "passed" + (f": {note}" if note else "")
    if failures:
        raise AssertionError(f"{len(failures)} of {len(results)} checks failed:\n" + "\n".join(f"- {f}" for f in failures))
    return results


def parametrize_with_checks(
    entries: Entry | str | Iterable[Entry | str] | None = None,
    *,
    distribution: str | None = None,
    plugin: str | None = None,
    registry=None,
    kinds: Iterable[str] | None = None,
    tier: str = "full",
    skip: Mapping[str, Mapping[str, str]] | None = None,
    params: Mapping[str, Any] | None = None,
    input_shape: Any = None,
    num_classes: int = NUM_CLASSES,
):
    """A ``pytest.mark.parametrize("entry, check", ...)`` over every component and check.

    The components are those of ``distribution`` (found through its installed entry points),
    of ``plugin``, or ``entries`` (Entry objects or ``"KIND:NAME"``). Test ids read
    ``optimizer:signsgd-jit_equals_eager``. Opted-out checks are reported as skipped with their
    reason. Use it as::

        @parametrize_with_checks(distribution="jaxyard-my-plugin", skip={...})
        def test_conformance(entry, check, tmp_path):
            check(entry, tmp_path)

    :param tier: ``"api"`` (no training: registration, parameters, what factories return) or
        ``"full"`` (also the numerical checks).
    :param skip: ``{"KIND:NAME": {"check_name": "why it does not apply"}}``; patterns allowed.
    :param params: ``{"KIND:NAME": {...}}`` or ``{"KIND:NAME": lambda tmp_path: {...}}``: values
        for a component's parameters (e.g. a loader's file).
    :param input_shape: a model's example shape, ``{"model:NAME": (28, 28, 1)}`` or one shape
        for every model (default: the model's own ``input_shape`` parameter, or the first of
        :data:`CANDIDATE_INPUT_SHAPES` it accepts).
    """
    import pytest

    if distribution is None and plugin is None and entries is None and registry is None:
        raise UsageError("parametrize_with_checks(): name the distribution (distribution='jaxyard-my-plugin'), a plugin or the entries to check")
    if tier not in TIERS:
        raise UsageError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    found = _entries(entries, distribution, plugin, registry, kinds)
    _validate_skip(skip, found, tier)
    cases = []
    for entry in found:
        options = _options_for(entry, distribution=distribution, params=params, input_shape=input_shape, num_classes=num_classes, registry=registry)
        skips = _skips_for(skip, entry)
        for check in checks_for(entry, tier):
            reason = _skip_reason(skips, check)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            cases.append(pytest.param(entry, check.bind(options), id=f"{label(entry)}-{check.name}", marks=marks))
    return pytest.mark.parametrize("entry, check", cases)


# === the checks =================================================================================
#
# Each check takes a Subject and returns a note (or None); it raises _Failure(what, fix) when the
# component breaks the contract, CheckSkipped(reason) when the check cannot apply.

# --- every kind ----------------------------------------------------------------------------------


@_check("all")
def check_entry_point(s: Subject) -> str:
    """The component is found by jaxyard's own discovery, from the plugin and distribution asked for."""
    registry = s.options.registry if s.options.registry is not None else _default_registry()
    entry = s.entry
    try:
        found = registry.get(entry.kind, entry.qualified)
    except UsageError:
        raise _Failure(f"build_registry() does not list it ({entry.kind}s: {', '.join(registry.names(entry.kind))})",
                       "register it from a hook of the plugin the entry point names") from None
    if found.plugin != entry.plugin or found.factory is not entry.factory:
        raise _Failure(f"build_registry() lists it from plugin {found.plugin!r}, not {entry.plugin!r}", "register each component once")
    info = registry.plugin(entry.plugin)
    if not info.ok:
        raise _Failure(f"its plugin failed to load: {info.error}", "fix the plugin")
    if f"{entry.kind}:{entry.name}" not in info.components:  # PluginInfo lists bare names
        raise _Failure(f"plugin {info.name!r} does not report it among its components", "register it from that plugin's hook")
    dist = s.options.distribution
    if dist is None:
        return f"plugin {info.name} ({info.source})"
    if not info.distribution or _normalize(info.distribution) != _normalize(dist):
        raise _Failure(f"it comes from distribution {info.distribution!r}, not {dist!r}",
                       "declare the entry point in the distribution's pyproject.toml")
    if info.source == "builtin":
        return f"built-in plugin {info.name} of {info.distribution} {info.version}"
    if info.source != "entry point":
        raise _Failure(f"its plugin was loaded as a {info.source} plugin, not through an entry point",
                       "declare [project.entry-points.jaxyard] in pyproject.toml and install the package")
    try:
        declared = {ep.name: ep.value for ep in metadata.distribution(info.distribution).entry_points if ep.group == "jaxyard"}
    except metadata.PackageNotFoundError:
        raise _Failure(f"distribution {info.distribution!r} is not installed", "pip install the package") from None
    if declared.get(info.name) != info.module:
        raise _Failure(f"the distribution's entry points in group 'jaxyard' are {declared}, which do not name plugin {info.name!r} = {info.module!r}",
                       "declare the entry point in [project.entry-points.jaxyard] and reinstall")
    return f"entry point {info.name} = {info.module} of {info.distribution} {info.version}"


@_check("all")
def check_description(s: Subject) -> None:
    """It has a one-line description for `jaxyard list`."""
    text = s.entry.description
    if not text or not text.strip() or "\n" in text:
        raise _Failure(f"its description is {text!r}", "give register(..., description='one line') or a docstring whose first line says what it is")
    if len(text) > 200:
        raise _Failure(f"its description has {len(text)} characters", "keep the description to one short line (the factory's docstring can say more)")


@_check("all")
def check_params_documented(s: Subject) -> None:
    """Its params class is an attrs class whose fields each have a type annotation, a default and a doc."""
    cls = s.entry.params
    if not attrs.has(cls):
        raise _Failure(f"params {cls!r} is not an attrs class", "decorate the class with @attrs.frozen")
    problems = []
    for f in attrs.fields(cls):
        if f.type is None:
            problems.append(f"{f.name} has no type annotation")
        if f.default is attrs.NOTHING:
            problems.append(f"{f.name} has no default")
        if not str(f.metadata.get("doc", "")).strip():
            problems.append(f"{f.name} has no doc")
    if problems:
        raise _Failure(f"in {cls.__name__}: {'; '.join(problems)}",
                       "declare each field as `name: type = jaxyard.param(default, \"one-line doc\")`")
    try:
        cls()
    except Exception as err:  # whatever a validator raises is the finding
        raise _Failure(f"{cls.__name__}() with its defaults raises {type(err).__name__}: {_one_line(err)}",
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


@_check("all")
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
                raise _Failure(f"--set {s.entry.kind}.{f.name}={text} (its default, as typed) is refused: {err}",
                               "use a type jaxyard converts from text (bool, int, float, str, tuple[...] of them, Literal) "
                               "or a converter that accepts the text form") from None
            if got != value:
                raise _Failure(f"--set {s.entry.kind}.{f.name}={text} gives {got!r}, not its default {value!r}",
                               "use a field type the command line converts losslessly")
    plain = to_plain(default)
    try:
        text = dump_toml({s.entry.kind: {s.entry.name: plain}})
        loaded = tomllib.loads(text)[s.entry.kind][s.entry.name]
    except Exception as err:  # TypeError from dump_toml, TOMLDecodeError, ...: all findings
        raise _Failure(f"its defaults {plain!r} cannot be written to and read from config.toml: {type(err).__name__}: {_one_line(err)}",
                       "use values TOML holds (numbers, booleans, strings, lists of them); None is not one") from None
    try:
        again = build(cls, loaded, where=where)
    except UsageError as err:
        raise _Failure(f"its defaults read back from config.toml are refused: {err}", "use field types that read back from TOML") from None
    if again != default:
        raise _Failure(f"its defaults read back from config.toml are {again!r}, not {default!r}",
                       "use field types that read back from TOML unchanged (a None default is dropped from config.toml)")


@_check("all")
def check_light_import(s: Subject) -> str:
    """Importing its plugin module imports none of jax, flax, optax, orbax (listing stays fast)."""
    module = s.entry.module.partition(":")[0]
    if not module:
        raise CheckSkipped(f"the entry does not say which module plugin {s.entry.plugin!r} is")
    if module.endswith(".py"):
        raise CheckSkipped(f"plugin {s.entry.plugin!r} is a .py file, not an importable module")
    heavy = _heavy_imports(module)
    if heavy:
        raise _Failure(f"`import {module}` imports {', '.join(heavy)}",
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
        raise _Failure(f"`import {module}` fails in a fresh process: {_one_line((proc.stderr.strip().splitlines() or ['?'])[-1])}",
                       "make the plugin module importable on its own")
    return tuple(json.loads(proc.stdout.strip().splitlines()[-1]))


# --- optimizers ------------------------------------------------------------------------------------

_TOY_LEARNING_RATES = (1e-2, 1e-1, 1e-3)
_TOY_STEPS = 100


@functools.cache
def _toy_problem():
    """A 3-class logistic regression on 64 separable points, and a parameter no loss reaches
    (its gradient is always 0: frozen or dead units must not make NaN). Returns the initial
    parameters, the loss and its jitted value-and-gradient (compiled once for every optimizer)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    y = jnp.asarray(np.argmax(np.asarray(x) @ rng.normal(size=(6, 3)), axis=1))
    params = {
        "w": jnp.asarray(0.1 * rng.normal(size=(6, 3)), jnp.float32),
        "b": jnp.zeros((3,), jnp.float32),
        "unused": jnp.zeros((2,), jnp.float32),
    }

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()  # "unused": gradient 0

    return params, loss, jax.jit(jax.value_and_grad(loss))


def _constant(lr: float):
    import optax

    return optax.constant_schedule(lr)


def _optimizer(s: Subject, lr: float = 1e-2):
    import optax

    tx = s.create(learning_rate=_constant(lr))
    if not isinstance(tx, optax.GradientTransformation):
        raise _Failure(f"the factory returned {type(tx).__name__}, not an optax.GradientTransformation",
                       "return an optax transformation (optax.chain(...) of optax primitives)")
    return tx


def _tree_close(a, b, *, rtol: float, atol: float) -> str | None:
    """None when the two pytrees match (same structure, close values), else the first difference."""
    import jax
    import numpy as np

    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    if ta != tb:  # type: ignore[operator]  # jaxlib ships PyTreeDef without type stubs
        return f"different structures: {ta} vs {tb}"
    for (path, x), (_, y) in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{jax.tree_util.keystr(path)}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}"
        if x.dtype.kind in "fc":
            if not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
                worst = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
                return f"{jax.tree_util.keystr(path)}: values differ by up to {worst:.3g} (rtol {rtol}, atol {atol})"
        elif not np.array_equal(x, y):
            return f"{jax.tree_util.keystr(path)}: {x} vs {y}"
    return None


def _finite(tree) -> str | None:
    import jax
    import numpy as np

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            return jax.tree_util.keystr(path)
    return None


@_check("optimizer")
def check_returns_transformation(s: Subject) -> str:
    """factory(params, learning_rate=schedule) returns an optax.GradientTransformation whose init and update trace (shapes only)."""
    import jax

    params, loss, _ = _toy_problem()
    tx = _optimizer(s)
    grads = jax.eval_shape(jax.grad(loss), params)
    state = jax.eval_shape(tx.init, params)
    updates, _ = jax.eval_shape(tx.update, grads, state, params)
    if jax.tree_util.tree_structure(updates) != jax.tree_util.tree_structure(params):  # type: ignore[operator]  # as in _tree_close
        raise _Failure("update() returns updates of another structure than the parameters", "return one update per parameter")
    return type(tx).__name__


def _jitted_update(s: Subject, lr: float = 1e-2):
    """``(tx, jax.jit(tx.update))`` for the component at rate ``lr``, compiled once per process."""
    key = (s.entry.kind, s.entry.name, s.entry.plugin, repr(s.values()), lr)
    if key not in _UPDATES:
        import jax

        tx = _optimizer(s, lr)
        _UPDATES[key] = (tx, jax.jit(tx.update))
    return _UPDATES[key]


_UPDATES: dict[tuple, Any] = {}


@_check("optimizer")
def check_follows_learning_rate(s: Subject) -> None:
    """The learning rate schedule it is given drives the step: rate 0 moves nothing, a positive rate moves the parameters."""
    import jax
    import numpy as np

    params, _, value_and_grad = _toy_problem()
    _, grads = value_and_grad(params)
    txs = {lr: _optimizer(s, lr) for lr in (0.0, 1e-2)}

    @jax.jit
    def first_updates(g, p):
        return {lr: tx.update(g, tx.init(p), p)[0] for lr, tx in txs.items()}

    moved = {lr: max(float(np.max(np.abs(np.asarray(u)))) for u in jax.tree.leaves(updates))
             for lr, updates in first_updates(grads, params).items()}
    if moved[0.0] != 0.0:
        raise _Failure(f"with a learning rate of 0 the first update still moves a parameter by {moved[0.0]:.3g}",
                       "pass the `learning_rate` schedule to optax as the learning rate (optax.scale_by_learning_rate "
                       "last in the chain); do not add terms after it")
    if not moved[1e-2] > 0.0:
        raise _Failure("with a learning rate of 0.01 the first update moves nothing", "pass the `learning_rate` schedule to optax")


@_check("optimizer", "full", name="jit_equals_eager")
def check_optimizer_jit_equals_eager(s: Subject) -> None:
    """Two jitted update steps equal two eager ones (rtol 1e-5, atol 1e-6): state and updates."""
    import optax

    params, _, value_and_grad = _toy_problem()
    tx, update = _jitted_update(s)
    state = tx.init(params)
    eager_params, eager_state = params, state
    for step in (1, 2):
        _, grads = value_and_grad(eager_params)
        eager_updates, new_eager_state = tx.update(grads, eager_state, eager_params)
        jit_updates, jit_state = update(grads, eager_state, eager_params)
        for what, a, b in (("updates", eager_updates, jit_updates), ("state", new_eager_state, jit_state)):
            diff = _tree_close(a, b, rtol=1e-5, atol=1e-6)
            if diff:
                raise _Failure(f"step {step}: the jitted {what} differ from the eager ones: {diff}",
                               "keep the update a pure function of its arguments (no Python state, no host callbacks "
                               "whose result changes)")
        eager_params = optax.apply_updates(eager_params, eager_updates)
        eager_state = new_eager_state


@_check("optimizer", "full")
def check_state_structure_stable(s: Subject) -> None:
    """The optimizer state keeps its tree structure, shapes and dtypes across steps (lax.scan carries it)."""
    import jax

    params, _, value_and_grad = _toy_problem()
    tx, update = _jitted_update(s)
    state0 = tx.init(params)
    p, state = params, state0
    for _ in range(3):
        updates, state = update(value_and_grad(p)[1], state, p)
        p = _apply_updates()(p, updates)

    def spec(tree):
        return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)

    if jax.tree_util.tree_structure(state0) != jax.tree_util.tree_structure(state):  # type: ignore[operator]  # as in _tree_close
        raise _Failure(f"the state's structure changes after 3 steps: {jax.tree_util.tree_structure(state0)} -> "
                       f"{jax.tree_util.tree_structure(state)}", "return a state of the same structure from update() as init() builds")
    if spec(state0) != spec(state):
        raise _Failure(f"the state's shapes or dtypes change after 3 steps: {spec(state0)} -> {spec(state)}",
                       "create every state array in init() with the dtype update() returns")
    if spec(p) != spec(params):
        raise _Failure(f"the parameters' shapes or dtypes change after 3 steps: {spec(params)} -> {spec(p)}",
                       "return updates of the parameters' dtypes")


def _trajectory(s: Subject, lr: float):
    """Losses over _TOY_STEPS jitted steps at rate ``lr``, and what first became non-finite
    (cached per component and rate: two checks read it)."""
    key = (s.entry.kind, s.entry.name, s.entry.plugin, repr(s.values()), lr)
    if key not in _TRAJECTORIES:
        import numpy as np

        params, _, value_and_grad = _toy_problem()
        tx, update = _jitted_update(s, lr)
        apply = _apply_updates()
        p, st, losses, bad = params, tx.init(params), [], None
        for _ in range(_TOY_STEPS):
            value, grads = value_and_grad(p)
            losses.append(float(value))
            updates, st = update(grads, st, p)
            p = apply(p, updates)
            if not np.isfinite(losses[-1]):
                break
        else:
            losses.append(float(value_and_grad(p)[0]))
        bad = (_finite(p) and f"parameter {_finite(p)}") or (_finite(st) and f"state {_finite(st)}")
        _TRAJECTORIES[key] = (np.asarray(losses), bad)
    return _TRAJECTORIES[key]


@functools.cache
def _apply_updates():
    import jax
    import optax

    return jax.jit(optax.apply_updates)


_TRAJECTORIES: dict[tuple, tuple[Any, Any]] = {}


@_check("optimizer", "full")
def check_no_nan(s: Subject) -> str:
    """No NaN or infinity in the loss, the parameters or the state over 100 steps of a small problem
    (rate 0.01), one parameter's gradient always 0."""
    import numpy as np

    losses, bad = _trajectory(s, 1e-2)
    if not np.isfinite(losses).all():
        first = int(np.argmin(np.isfinite(losses)))
        raise _Failure(f"the loss is {losses[first]} at step {first} (rate 0.01)",
                       "guard divisions and roots with an epsilon; check a zero gradient or zero parameter")
    if bad:
        raise _Failure(f"after {_TOY_STEPS} steps (rate 0.01) the {bad} is not finite",
                       "guard divisions and roots with an epsilon; a parameter whose gradient is always 0 must stay finite")
    return f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"


@_check("optimizer", "full")
def check_loss_decreases(s: Subject) -> str:
    """On a toy logistic regression the loss falls by at least 20% within 100 steps at one of the rates 0.01, 0.1, 0.001."""
    import numpy as np

    seen = []
    for lr in _TOY_LEARNING_RATES:
        losses, bad = _trajectory(s, lr)
        if np.isfinite(losses).all() and not bad and losses[-1] <= 0.8 * losses[0]:
            return f"rate {lr}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"
        seen.append(f"rate {lr}: {losses[0]:.4f} -> {losses[-1]:.4f}")
    raise _Failure(f"the loss does not fall by 20% in {_TOY_STEPS} steps ({'; '.join(seen)})",
                   "step against the gradient (optax scales by -learning_rate) and use the schedule it is given")


# --- schedulers ----------------------------------------------------------------------------------

_DECAY_STEPS = (1, 10, 1000)
_PEAK = 0.1
#: How far from exact a schedule may be, as a fraction of the peak: XLA fuses the arithmetic of
#: a jitted schedule, so optax.linear_schedule(0.1, 0.0, 10) gives -1.5e-9 at its last step.
_ROUNDING = 1e-6


def _schedule(s: Subject, decay_steps: int):
    schedule = s.create(learning_rate=_PEAK, decay_steps=decay_steps)
    if not callable(schedule):
        raise _Failure(f"the factory returned {type(schedule).__name__}, not a schedule (a callable of the step)",
                       "return an optax schedule, e.g. optax.linear_schedule(...)")
    return schedule


@_check("scheduler")
def check_returns_schedule(s: Subject) -> str:
    """factory(params, learning_rate, decay_steps) returns a callable of the step giving a scalar rate."""
    import jax.numpy as jnp
    import numpy as np

    schedule = _schedule(s, 10)
    value = np.asarray(schedule(jnp.asarray(0, jnp.int32)))
    if value.shape != () or value.dtype.kind not in "fiu":
        raise _Failure(f"schedule(0) is {value!r} (shape {value.shape}, dtype {value.dtype}), not a scalar number",
                       "return one rate per step")
    return f"rate at step 0: {float(value):.6g} (peak {_PEAK})"


@_check("scheduler", "full")
def check_finite_nonnegative(s: Subject) -> str:
    """Over every step 0..decay_steps (decay_steps 1, 10 and 1000, vectorised with jax.vmap) the rate is
    finite and >= 0 (to 1e-6 of the peak: float rounding under jit)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    notes = []
    for decay_steps in _DECAY_STEPS:
        schedule = _schedule(s, decay_steps)
        values = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(decay_steps + 1, dtype=jnp.int32)))
        if values.shape != (decay_steps + 1,):
            raise _Failure(f"vmapped over {decay_steps + 1} steps it returns shape {values.shape}", "return a scalar rate per step")
        bad = np.flatnonzero(~np.isfinite(values) | (values < -_ROUNDING * _PEAK))
        if bad.size:
            raise _Failure(f"with decay_steps={decay_steps} the rate at step {int(bad[0])} is {values[bad[0]]} "
                           f"(step 0: {values[0]:.6g}, step {decay_steps}: {values[-1]:.6g})",
                           "keep the rate finite and non-negative over 0..decay_steps, decay_steps = 1 included")
        notes.append(f"decay_steps={decay_steps}: {values[0]:.6g} -> {values[-1]:.6g}")
    return "; ".join(notes)


@_check("scheduler", "full")
def check_jittable(s: Subject) -> None:
    """The schedule gives the same rate jitted as eagerly (to 1e-6 of the peak), at steps 0, 1, decay_steps/2 and decay_steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    decay_steps = 100
    schedule = _schedule(s, decay_steps)
    jitted = jax.jit(schedule)
    for step in (0, 1, decay_steps // 2, decay_steps):
        eager = np.asarray(schedule(jnp.asarray(step, jnp.int32)))
        compiled = np.asarray(jitted(jnp.asarray(step, jnp.int32)))
        if not np.allclose(eager, compiled, rtol=1e-6, atol=_ROUNDING * _PEAK):
            raise _Failure(f"at step {step} the jitted rate is {compiled} and the eager one {eager}",
                       "compute the rate with jax.numpy from the step alone (no Python state)")


# --- models --------------------------------------------------------------------------------------


def _model(s: Subject, shape, *, seed: int = 0):
    from flax import nnx

    model = s.create(input_shape=tuple(shape), num_classes=s.options.num_classes, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    if not isinstance(model, nnx.Module):
        raise _Failure(f"the factory returned {type(model).__name__}, not an nnx.Module", "return a flax nnx.Module")
    return model


def _input_shape(s: Subject) -> tuple[int, ...]:
    """The example shape to test with: the option, the model's own ``input_shape`` parameter, or
    the first candidate the model accepts (shapes only: nothing computed)."""
    if s.options.input_shape is not None:
        return s.options.input_shape
    own = getattr(s.params(), "input_shape", None)
    if isinstance(own, (tuple, list)) and own and all(isinstance(d, int) for d in own):
        return tuple(own)
    key = (s.entry.plugin, s.entry.name, repr(s.values()), s.options.num_classes)
    if key not in _SHAPES:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        errors = []
        for shape in CANDIDATE_INPUT_SHAPES:
            try:
                abstract = nnx.eval_shape(functools.partial(_model, s, shape))
                graphdef, state = nnx.split(abstract)
                out = jax.eval_shape(functools.partial(_forward, graphdef), state, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
            except (_Failure, CheckSkipped):
                raise
            except Exception as err:  # a shape the model refuses: try the next
                errors.append(f"{shape}: {type(err).__name__}: {_one_line(err)[:120]}")
                continue
            if getattr(out, "shape", None) == (2, s.options.num_classes):
                _SHAPES[key] = shape
                break
            errors.append(f"{shape}: output {getattr(out, 'shape', type(out).__name__)}")
        else:
            raise _Failure(f"it maps none of the example shapes {CANDIDATE_INPUT_SHAPES} to (batch, num_classes): {'; '.join(errors)}",
                           "accept (batch, *input_shape) inputs for the input_shape it is given; if it needs a particular "
                           "shape, pass input_shape={'model:NAME': shape} to the kit")
    return _SHAPES[key]


_SHAPES: dict[tuple, tuple[int, ...]] = {}


def _forward(graphdef, state, x):
    """The model's forward pass as the engine runs it: merged from its graph and state."""
    from flax import nnx

    return nnx.merge(graphdef, state)(x)


def _inputs(shape, batch: int, seed: int = 0):
    import numpy as np

    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(np.float32)


def _host(x):
    """A leaf of module state as a NumPy array (RNG keys as their key data)."""
    import jax
    import numpy as np

    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _has(model, cls_name: str) -> bool:
    from flax import nnx

    cls = getattr(nnx, cls_name)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, cls) and (cls_name != "Dropout" or float(getattr(node, "rate", 0.0)) > 0.0):
            return True
    return False


@_check("model")
def check_returns_module(s: Subject) -> str:
    """factory(params, input_shape, num_classes, rngs) returns an nnx.Module mapping (2, *input_shape) to (2, num_classes) (shapes only)."""
    shape = _input_shape(s)
    return f"input_shape {shape}"


@_check("model", "full")
def check_output_shape(s: Subject) -> str:
    """Batches of 1, 3 and 8 give logits (batch, num_classes) in train and eval mode, finite when computed (jitted, as the engine runs it)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    model = _model(s, shape)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        graphdef, state = nnx.split(model)
        forward = functools.partial(_forward, graphdef)
        for batch in (1, 3, 8):
            out = jax.eval_shape(forward, state, jax.ShapeDtypeStruct((batch, *shape), jnp.float32))
            want = (batch, s.options.num_classes)
            if getattr(out, "shape", None) != want:
                raise _Failure(f"in {mode} mode a batch of shape {(batch, *shape)} gives {getattr(out, 'shape', type(out).__name__)}, not {want}",
                               "return logits of shape (batch, num_classes) for any batch size")
        logits = np.asarray(jax.jit(forward)(state, _inputs(shape, 3)))
        if not np.isfinite(logits).all():
            raise _Failure(f"in {mode} mode the logits of a batch of 3 are not finite", "keep the forward pass finite at initialisation")
    return f"input_shape {shape}, num_classes {s.options.num_classes}"


@_check("model", "full")
def check_train_eval_modes(s: Subject) -> str:
    """Eval mode is deterministic; train and eval outputs differ when the model has dropout (rate > 0), agree when it has no dropout or batch norm."""
    import numpy as np

    shape = _input_shape(s)
    model = _model(s, shape)
    x = _inputs(shape, 8)
    dropout, batchnorm = _has(model, "Dropout"), _has(model, "BatchNorm")
    model.train()
    train1 = np.asarray(model(x))
    train2 = np.asarray(model(x))
    model.eval()
    eval1, eval2 = np.asarray(model(x)), np.asarray(model(x))
    if not np.array_equal(eval1, eval2):
        raise _Failure("two calls in eval mode give different outputs", "make every stochastic layer follow model.eval() (nnx.Dropout does)")
    if dropout:
        if np.allclose(train1, eval1):
            raise _Failure("it has nnx.Dropout with rate > 0, yet train-mode and eval-mode outputs agree",
                           "call the dropout layer in __call__ and let model.train()/model.eval() switch it")
        if np.array_equal(train1, train2):
            raise _Failure("it has dropout, yet two train-mode calls give the same output", "draw dropout masks from the rngs' dropout stream")
        return "dropout: train differs from eval"
    if batchnorm:
        return "batch norm: eval deterministic"
    if not np.allclose(train1, eval1, rtol=1e-5, atol=1e-6):
        raise _Failure("it has no dropout or batch norm, yet train-mode and eval-mode outputs differ",
                       "layers that behave differently in training must be nnx.Dropout/nnx.BatchNorm or follow model.train()/model.eval()")
    return "no dropout: train equals eval"


@_check("model", "full")
def check_batch_independent(s: Subject) -> None:
    """In eval mode a batch's logits equal each example's own (rtol 1e-4, atol 1e-5): nothing mixes examples."""
    import numpy as np

    shape = _input_shape(s)
    model = _model(s, shape)
    model.eval()
    x = _inputs(shape, 8)
    full = np.asarray(model(x))
    each = np.concatenate([np.asarray(model(x[i : i + 1])) for i in range(len(x))])
    if not np.allclose(full, each, rtol=1e-4, atol=1e-5):
        worst = float(np.max(np.abs(full - each)))
        raise _Failure(f"the logits of a batch of 8 differ from those of the examples one by one (by up to {worst:.3g})",
                       "do not mix examples in eval mode (batch statistics must come from running averages)")


@_check("model", "full")
def check_deterministic(s: Subject) -> None:
    """Built twice from the same rngs it has bit-identical parameters and eval outputs."""
    import jax
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    a, b = _model(s, shape), _model(s, shape)
    la, lb = [_host(x) for x in jax.tree.leaves(nnx.state(a))], [_host(x) for x in jax.tree.leaves(nnx.state(b))]
    if len(la) != len(lb) or any(x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=True) for x, y in zip(la, lb, strict=True)):
        raise _Failure("two models built from nnx.Rngs(params=0, dropout=1) have different state",
                       "draw every initial value from the rngs given to the factory (no global or time-based seeds)")
    a.eval(), b.eval()
    x = _inputs(shape, 3)
    if not np.array_equal(np.asarray(a(x)), np.asarray(b(x))):
        raise _Failure("two models built from the same rngs give different eval outputs", "make the forward pass deterministic in eval mode")


@_check("model", "full")
def check_uses_rngs(s: Subject) -> None:
    """Built from other rngs its parameters differ (run.seed reaches the initialisation)."""
    import jax
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    la = jax.tree.leaves(nnx.state(_model(s, shape, seed=0), nnx.Param))
    lb = jax.tree.leaves(nnx.state(_model(s, shape, seed=10), nnx.Param))
    if not la:
        raise CheckSkipped("the model has no nnx.Param")
    if all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb, strict=False)):
        raise _Failure("models built from nnx.Rngs(params=0) and nnx.Rngs(params=10) have identical parameters",
                       "initialise from the rngs given to the factory, not from a fixed nnx.Rngs(0)")


@_check("model", "full", name="jit_equals_eager")
def check_model_jit_equals_eager(s: Subject) -> None:
    """In eval mode the jitted forward pass (split/merge, as the engine runs it) equals the eager one (rtol 1e-5, atol 1e-6)."""
    import jax
    import numpy as np
    from flax import nnx

    shape = _input_shape(s)
    model = _model(s, shape)
    model.eval()
    x = _inputs(shape, 4)
    eager = np.asarray(model(x))
    graphdef, state = nnx.split(model)
    jitted = np.asarray(jax.jit(functools.partial(_forward, graphdef))(state, x))
    if not np.allclose(eager, jitted, rtol=1e-5, atol=1e-6):
        raise _Failure(f"jitted and eager logits differ by up to {float(np.max(np.abs(eager - jitted))):.3g}",
                       "keep the forward pass a pure function of the module's state and the input")


@_check("model", "full")
def check_trains(s: Subject) -> str:
    """The engine's own compiled epoch (lax.scan over batches, nnx.Optimizer, adam 0.01) lowers the loss of a
    learnable problem in 15 epochs, finite throughout."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxyard.core.train import steps

    shape = _input_shape(s)
    rng = np.random.default_rng(0)
    n, batch, classes = 48, 16, s.options.num_classes
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = np.argmax(x.reshape(n, -1) @ rng.normal(size=(int(np.prod(shape)), classes)), axis=1).astype(np.int32)
    model = _model(s, shape)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    model.eval()
    eval_graphdef, _ = steps.split(model, optimizer)
    model.train()
    graphdef, state = steps.split(model, optimizer)
    epoch = steps.make_train_epoch(graphdef, n, batch, False)
    evaluate = steps.make_evaluate(eval_graphdef, batch)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    before = np.asarray(evaluate(state, xs, ys))
    key = jax.random.key(0)
    for i in range(15):
        state, sums = epoch(state, {}, xs, ys, jax.random.fold_in(key, i))
        if not np.isfinite(np.asarray(sums)).all():
            raise _Failure(f"the training loss is not finite in epoch {i + 1}", "keep the forward pass and its gradient finite")
    after = np.asarray(evaluate(state, xs, ys))
    loss_before, loss_after = before[0] / before[2], after[0] / after[2]
    if not np.isfinite(loss_after) or not loss_after < 0.9 * loss_before:
        raise _Failure(f"the loss on the training examples goes from {loss_before:.4f} to {loss_after:.4f} in 15 epochs",
                       "let the gradient reach the parameters (nnx.Param) and keep the output a function of the input")
    return f"loss {loss_before:.4f} -> {loss_after:.4f}"


# --- loaders -------------------------------------------------------------------------------------


def _load(s: Subject, seed: int = 0):
    from jaxyard.core.train.data import Dataset, StreamingDataset

    data = s.create(seed=seed)
    if not isinstance(data, (Dataset, StreamingDataset)):
        raise _Failure(f"the factory returned {type(data).__name__}, not a jaxyard.Dataset or StreamingDataset",
                       "return jaxyard.Dataset(train, val, test, num_classes) or a jaxyard.StreamingDataset")
    return data


def _splits(data, batch_size: int = 4) -> dict[str, tuple[Any, Any]]:
    """Each split's arrays (a Dataset) or first batch (a StreamingDataset), as NumPy."""
    import numpy as np

    from jaxyard.core.train.data import SPLITS, Dataset

    out = {}
    for split in SPLITS:
        if isinstance(data, Dataset):
            part = getattr(data, split)
            out[split] = (np.asarray(part.x), np.asarray(part.y))
        else:
            first = next(iter(data.batches(split, batch_size, 0)), None)
            if first is None:
                raise _Failure(f"batches({split!r}, {batch_size}, 0) yields nothing", "yield at least one batch per split")
            out[split] = (np.asarray(first[0]), np.asarray(first[1]))
    return out


@_check("loader")
def check_returns_dataset(s: Subject) -> str:
    """factory(params, seed) returns a jaxyard.Dataset or StreamingDataset with num_classes >= 2."""
    data = _load(s)
    if isinstance(data.num_classes, bool) or not isinstance(data.num_classes, int) or data.num_classes < 2:
        raise _Failure(f"num_classes is {data.num_classes!r}", "give the number of classes as an int >= 2")
    return f"{type(data).__name__}: sizes {data.sizes()}, input_shape {tuple(data.input_shape)}, {data.num_classes} classes"


@_check("loader")
def check_splits_nonempty(s: Subject) -> None:
    """The three splits are non-empty, with one label per example and the same example shape (a stream gives the train size)."""
    from jaxyard.core.train.data import Dataset

    data = _load(s)
    parts = _splits(data)
    if not isinstance(data, Dataset):
        train = data.sizes().get("train")
        if not isinstance(train, int) or train < 1:
            raise _Failure(f"sizes()['train'] is {train!r}", "pass sizes={'train': N, ...} to StreamingDataset: the engine needs the train size")
    for split, (x, y) in parts.items():
        if len(y) == 0 or len(x) != len(y) or y.ndim != 1:
            raise _Failure(f"the {split} split has features {x.shape} and labels {y.shape}",
                           "give every split at least one example, features (n, *input_shape) and labels (n,)")
        if tuple(x.shape[1:]) != tuple(data.input_shape):
            raise _Failure(f"the {split} examples have shape {x.shape[1:]}, but input_shape is {tuple(data.input_shape)}",
                           "give every split the same example shape")


@_check("loader")
def check_labels_in_range(s: Subject) -> None:
    """Labels are integers in [0, num_classes)."""
    import numpy as np

    data = _load(s)
    for split, (_, y) in _splits(data).items():
        if not np.issubdtype(y.dtype, np.integer):
            raise _Failure(f"the {split} labels have dtype {y.dtype}", "give labels an integer dtype (int32)")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= data.num_classes):
            raise _Failure(f"the {split} labels range over {int(y.min())}..{int(y.max())}, outside 0..{data.num_classes - 1}",
                           "number the classes 0..num_classes-1, or raise num_classes")


@_check("loader")
def check_features_finite(s: Subject) -> None:
    """Features are real numbers, all finite."""
    import numpy as np

    for split, (x, _) in _splits(_load(s)).items():
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise _Failure(f"the {split} features have dtype {x.dtype}", "give features a real dtype (float32)")
        if not np.isfinite(x).all():
            raise _Failure(f"the {split} split holds a non-finite feature", "drop or fix non-finite values in the loader")


@_check("loader")
def check_same_seed_same_data(s: Subject) -> None:
    """Two loads with the same seed give bit-identical arrays (each split, or each first batch of a stream)."""
    import numpy as np

    a, b = _splits(_load(s)), _splits(_load(s))
    for split in a:
        for i, what in enumerate(("features", "labels")):
            if a[split][i].shape != b[split][i].shape or not np.array_equal(a[split][i], b[split][i], equal_nan=True):
                raise _Failure(f"two loads with seed 0 give different {split} {what}",
                               "derive all randomness from the seed (and the loader's own seed parameters), never from global state or time")


@_check("loader")
def check_same_data_for_any_run_seed(s: Subject) -> None:
    """An in-memory Dataset is the same for run seeds 0 and 1: the data and its split follow seeds of their own
    (a sweep over run.seed trains on the same data)."""
    import numpy as np

    from jaxyard.core.train.data import Dataset

    first = _load(s, seed=0)
    if not isinstance(first, Dataset):
        raise CheckSkipped("a StreamingDataset may order its batches by the run's seed")
    a, b = _splits(first), _splits(_load(s, seed=1))
    for split in a:
        if any(a[split][i].shape != b[split][i].shape or not np.array_equal(a[split][i], b[split][i], equal_nan=True) for i in (0, 1)):
            raise _Failure(f"the {split} split differs between run seeds 0 and 1",
                           "draw the data and its split from parameters of the loader's own (data_seed, split_seed), not from `seed`")


@_check("loader")
def check_stream_first_batch(s: Subject) -> str:
    """A StreamingDataset's first batch of each split has the declared input_shape and at most the requested size."""
    from jaxyard.core.train.data import StreamingDataset

    data = _load(s)
    if not isinstance(data, StreamingDataset):
        raise CheckSkipped("an in-memory Dataset: it has no batches to check")
    for requested in (1, 4):
        for split, (x, y) in _splits(data, requested).items():
            if not 1 <= len(x) <= requested or len(y) != len(x):
                raise _Failure(f"the first {split} batch for batch_size {requested} has {len(x)} examples and {len(y)} labels",
                               "yield batches of at most batch_size examples, one label each")
            if tuple(x.shape[1:]) != tuple(data.input_shape):
                raise _Failure(f"the first {split} batch has examples of shape {x.shape[1:]}, not input_shape {tuple(data.input_shape)}",
                               "declare the shape the batches have")
    return f"input_shape {tuple(data.input_shape)}"


# --- checkpointers --------------------------------------------------------------------------------


def _storage(s: Subject, directory: Path | None = None):
    from jaxyard.core.store.checkpoint import missing_methods

    store = s.create(directory=directory or s.tmp_path / "checkpoints")
    missing = missing_methods(store)
    if missing:
        with contextlib.suppress(Exception):
            store.close()
        raise _Failure(f"the object it returns ({type(store).__name__}) lacks {', '.join(missing)}",
                       "implement save, steps, load, delete, wait and close (jaxyard.Checkpointer)")
    return store


@contextlib.contextmanager
def _opened(s: Subject, directory: Path | None = None):
    store = _storage(s, directory)
    try:
        yield store
    finally:
        store.close()


def _arrays(seed: int = 0, *, bfloat16: bool = False) -> dict[str, Any]:
    """Arrays as the engine hands them over: dotted names, host arrays, the usual dtypes and odd values."""
    import numpy as np

    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, np.finfo(np.float32).max, -1.5], np.float32)
    out = {
        "model.layers.0.kernel": rng.normal(size=(3, 4)).astype(np.float32),
        "model.layers.0.bias": special,
        "model.scalar": np.asarray(rng.normal(), np.float32),
        "model.empty": np.zeros((0, 3), np.float32),
        "model.counts": rng.integers(-(2**31), 2**31 - 1, size=(2, 3), dtype=np.int32),
        "optimizer.opt_state.0.count": np.asarray(seed + 7, np.int32),
        "optimizer.opt_state.1.empty": np.zeros((0,), np.int32),
        "rng.dropout.key": rng.integers(0, 2**32 - 1, size=(2,), dtype=np.uint32),
    }
    if bfloat16:
        import ml_dtypes

        out["model.half"] = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], dtype=ml_dtypes.bfloat16)
        out["model.half_empty"] = np.zeros((0, 2), dtype=ml_dtypes.bfloat16)
    return out


def _meta(step: int, val_loss: float = 1.0, history: list | None = None) -> dict:
    record = {"epoch": step, "step": step, "lr": 0.001, "train_loss": val_loss + 0.1, "train_acc": 0.5, "val_loss": val_loss, "val_acc": 0.25}
    return {"epoch": step, "step": step, "metrics": record, "history": (history or []) + [record], "note": "unicode: é, 日本"}


def _same_arrays(saved: Mapping[str, Any], loaded: Mapping[str, Any]) -> str | None:
    import numpy as np

    if set(saved) != set(loaded):
        return f"keys differ: missing {sorted(set(saved) - set(loaded))}, unexpected {sorted(set(loaded) - set(saved))}"
    for k, a in saved.items():
        b = loaded[k]
        b_arr = np.asarray(b)
        if b_arr.dtype != a.dtype or b_arr.shape != a.shape:
            return f"{k}: saved {a.dtype}{a.shape}, loaded {b_arr.dtype}{b_arr.shape}"
        if a.tobytes() != b_arr.tobytes():
            return f"{k}: the loaded bytes differ from the saved ones ({a!r} vs {b_arr!r})"
    return None


def _save_load(s: Subject, arrays: dict, *, what: str) -> str:
    with _opened(s) as store:
        meta = _meta(5)
        store.save(5, {k: v.copy() for k, v in arrays.items()}, json.loads(json.dumps(meta)))
        store.wait()
        restored = store.load(5)
        _compare_restored(restored, 5, arrays, meta, what=what, where="the same checkpointer")
    with _opened(s) as again:  # another process resuming: a fresh checkpointer on the directory
        if again.steps() != [5]:
            raise _Failure(f"a fresh checkpointer on the same directory lists steps {again.steps()}, not [5]",
                           "keep the checkpoints on disk (in `directory`) and list them from there")
        _compare_restored(again.load(5), 5, arrays, meta, what=what, where="a fresh checkpointer on the same directory")
    return f"{len(arrays)} arrays"


def _compare_restored(restored, step: int, arrays: dict, meta: dict, *, what: str, where: str) -> None:
    from jaxyard.core.store.checkpoint import Restored

    if not isinstance(restored, Restored):
        raise _Failure(f"load() returned {type(restored).__name__}, not jaxyard.Restored", "return jaxyard.Restored(step, arrays, meta)")
    if restored.step != step or restored.skipped:
        raise _Failure(f"load({step}) from {where} returned step {restored.step!r} with skipped {restored.skipped!r}",
                       "return Restored(step, arrays, meta) for exactly the step asked, skipped empty")
    diff = _same_arrays(arrays, restored.arrays)
    if diff:
        raise _Failure(f"{what} do not round-trip through save and load ({where}): {diff}",
                       "store the bytes with their dtype and shape and give them back unchanged (zero-size arrays included)")
    if restored.meta != meta:
        raise _Failure(f"meta does not round-trip ({where}): saved {meta!r}, loaded {restored.meta!r}",
                       "store meta as JSON and give it back unchanged")


@_check("checkpointer")
def check_implements_protocol(s: Subject) -> str:
    """factory(params, directory) returns an object with save, steps, load, delete, wait and close; close is idempotent."""
    with _opened(s) as store:
        if store.steps() != []:
            raise _Failure(f"a new checkpointer on an empty directory lists steps {store.steps()}", "list only the steps saved")
        name = type(store).__name__
    store.close()  # a second close must be harmless
    return name


@_check("checkpointer", "full")
def check_roundtrip(s: Subject) -> str:
    """save/load is bit-exact for float32 (inf, nan, -0.0, denormals), int32, uint32 keys, scalars and zero-size
    arrays, and meta, also from a fresh checkpointer."""
    return _save_load(s, _arrays(), what="float32, int32 and uint32 arrays")


@_check("checkpointer", "full")
def check_roundtrip_bfloat16(s: Subject) -> str:
    """save/load is bit-exact for bfloat16 arrays (a model may keep its parameters in bfloat16)."""
    try:
        import ml_dtypes  # noqa: F401 - only whether it is installed
    except ImportError:
        raise CheckSkipped("ml_dtypes is not installed: no bfloat16 here") from None
    return _save_load(s, _arrays(bfloat16=True), what="bfloat16 arrays")


@_check("checkpointer", "full")
def check_steps_and_delete(s: Subject) -> None:
    """steps() lists saved steps in ascending numeric order (2, 10, 100); delete removes one; loading a missing step raises CheckpointError."""
    from jaxyard.core.store.checkpoint import CheckpointError

    with _opened(s) as store:
        for step in (2, 10, 100):
            store.save(step, _arrays(step), _meta(step))
        store.wait()
        if store.steps() != [2, 10, 100]:
            raise _Failure(f"after saving steps 2, 10 and 100, steps() is {store.steps()}", "return the steps as ints, sorted numerically")
        store.delete(10)
        store.wait()
        if store.steps() != [2, 100]:
            raise _Failure(f"after delete(10), steps() is {store.steps()}", "remove the step's data in delete()")
        for missing in (10, 7):
            try:
                store.load(missing)
            except CheckpointError:
                pass
            else:
                raise _Failure(f"load({missing}) of a step that is not there returns instead of raising",
                               "raise jaxyard.CheckpointError naming the step")
        diff = _same_arrays(_arrays(100), store.load(100).arrays)
        if diff:
            raise _Failure(f"after delete(10), step 100 no longer loads as saved: {diff}", "delete only the step asked")


@_check("checkpointer", "full")
def check_save_existing_raises(s: Subject) -> None:
    """Saving a step that already holds an intact checkpoint raises CheckpointError (at save, wait or close) and leaves it intact."""
    from jaxyard.core.store.checkpoint import CheckpointError

    with _opened(s) as store:
        store.save(3, _arrays(3), _meta(3))
        store.wait()
        raised = None
        try:
            store.save(3, _arrays(99), _meta(3, 9.0))
            store.wait()
        except CheckpointError as err:
            raised = err
        except Exception as err:
            raise _Failure(f"saving step 3 again raises {type(err).__name__}: {_one_line(err)}, not CheckpointError",
                           "raise jaxyard.CheckpointError(cause, directory=..., step=...) when the step exists") from err
        if raised is None:
            raise _Failure("saving step 3 a second time does not raise", "refuse to overwrite an intact step with jaxyard.CheckpointError")
        diff = _same_arrays(_arrays(3), store.load(3).arrays)
        if diff:
            raise _Failure(f"the refused second save changed step 3: {diff}", "a failed save must never damage a step already saved")


def _files(directory: Path) -> dict[Path, tuple[int, int]]:
    out = {}
    if directory.is_dir():
        for path in directory.rglob("*"):
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                out[path] = (stat.st_size, stat.st_mtime_ns)
    return out


@_check("checkpointer", "full")
def check_damaged_latest_skipped(s: Subject) -> str:
    """With the files written by the newest save removed, CheckpointPolicy.restore('latest') returns the previous
    intact step (file-based storage only)."""
    from jaxyard.core.store.checkpoint import CheckpointError
    from jaxyard.core.store.policy import CheckpointPolicy, Monitor

    directory = s.tmp_path / "checkpoints"
    with _opened(s, directory) as store:
        store.save(1, _arrays(1), _meta(1))
        store.wait()
        before = _files(directory)
        store.save(2, _arrays(2), _meta(2, 0.5, [_meta(1)["metrics"]]))
        store.wait()
        after = _files(directory)
    new = sorted(p for p in after if p not in before)
    if not new:
        raise CheckSkipped(f"the save of step 2 created no file under {directory}: not a file-based storage, nothing generic to damage")
    for path in new:
        path.unlink()
    with _opened(s, directory) as store:
        policy = CheckpointPolicy(store, monitor=Monitor())
        try:
            restored = policy.restore("latest")
        except CheckpointError as err:
            raise _Failure(f"with step 2's files removed ({len(new)} files), restore('latest') raises: {err}",
                           "load() of a damaged step must raise CheckpointError, and the other steps must stay loadable") from None
        if restored.step != 1:
            raise _Failure(f"with step 2's {len(new)} files removed, restore('latest') returns step {restored.step}, not 1",
                           "load() must verify what it reads and raise jaxyard.CheckpointError for a damaged step")
        diff = _same_arrays(_arrays(1), restored.arrays)
        if diff:
            raise _Failure(f"step 1, restored after step 2 was damaged, differs: {diff}", "keep each step's files apart")
    return f"removed {len(new)} files of step 2; skipped {restored.skipped}"


@_check("checkpointer", "full")
def check_retention(s: Subject) -> str:
    """With CheckpointPolicy(keep_latest=2, keep_best=1) over six saves, the newest two and the best by val_loss
    are kept, and restore('best') gives the best."""
    from jaxyard.core.store.policy import CheckpointPolicy, Monitor

    losses = {1: 0.9, 2: 0.3, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.65}
    directory = s.tmp_path / "checkpoints"
    history: list = []
    with _opened(s, directory) as store:
        policy = CheckpointPolicy(store, monitor=Monitor("val_loss"), keep_latest=2, keep_best=1)
        for step, loss in losses.items():
            meta = _meta(step, loss, list(history))
            history = meta["history"]
            policy.save(step, _arrays(step), meta)
        policy.finish()  # closes the storage
    with _opened(s, directory) as store:
        if store.steps() != [2, 5, 6]:
            raise _Failure(f"after six saves with keep_latest=2 and keep_best=1 (best: step 2) "
                           f"a fresh checkpointer lists {store.steps()}, not [2, 5, 6]",
                           "delete(step) must remove the step for good; steps() must list what is on disk")
        best = CheckpointPolicy(store, monitor=Monitor("val_loss")).restore("best")
        if best.step != 2:
            raise _Failure(f"restore('best') returns step {best.step}, not 2", "give meta back unchanged from load() (the history ranks the steps)")
    return "kept [2, 5, 6]"


# --- loggers --------------------------------------------------------------------------------------


def _record(epoch: int) -> dict:
    return {"epoch": epoch, "step": 10 * epoch, "lr": 0.01 / epoch, "train_loss": 2.0 / epoch, "train_acc": 0.2 * epoch,
            "val_loss": 2.2 / epoch, "val_acc": 0.18 * epoch, "train_time": 0.5, "val_time": 0.05}


class _StandInConfig:
    """What a logger may read of ``run.config``: ``run`` (the real RunSettings) and ``to_dict()``."""

    def __init__(self, logger: str):
        from jaxyard.core.registry.run_settings import RunSettings

        self.run = RunSettings(epochs=3, loggers=(logger,))

    def to_dict(self) -> dict:
        from jaxyard.core.registry.params import to_plain

        return {"run": to_plain(self.run), "optimizer": {"adam": {"b1": 0.9}}, "model": {"mlp": {"hidden_dims": [8]}}}


def _stand_in_run(s: Subject, directory: Path, history: list, start_epoch: int):
    from jaxyard.core.train.events import Run

    return Run(
        config=_StandInConfig(s.entry.name), directory=directory,
        components={"optimizer": "adam", "scheduler": "cosine", "model": "mlp", "loader": "synthetic", "checkpointer": "none"},
        sizes={"train": 30, "val": 10, "test": 10}, num_params=42, steps_per_epoch=10, total_steps=30, warmup_steps=0,
        history=list(history), start_epoch=start_epoch,
    )


def _run_files(directory: Path, config_dict: dict, history: list) -> None:
    """What the run directory holds when a logger's finish() is called: config.toml, summary.json, the curves."""
    from jaxyard.core.registry.settings import dump_toml

    (directory / "config.toml").write_text(dump_toml(config_dict))
    (directory / "summary.json").write_text(json.dumps({"test": {"test_loss": 0.5, "test_acc": 0.8}, "history": history}))
    (directory / "training_curves.png").write_bytes(_PNG)


# a 1x1 PNG
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2213bc50000000049454e44ae426082"
)


@_check("logger")
def check_logger_protocol(s: Subject) -> str:
    """factory(params, directory) returns an object with start, log_epoch and finish (a missing extra skips, naming it)."""
    from jaxyard.core.train.loggers import LOGGER_METHODS

    logger = s.create(directory=s.tmp_path / "run")
    missing = [m for m in LOGGER_METHODS if not callable(getattr(logger, m, None))]
    if missing:
        raise _Failure(f"the object it returns ({type(logger).__name__}) lacks {', '.join(missing)}",
                       "implement start(run), log_epoch(record) and finish(run, status, result=None) (jaxyard.Logger)")
    return type(logger).__name__


@_check("logger", "full")
def check_logger_lifecycle(s: Subject) -> str:
    """A stand-in run is started, fed 3 epochs and finished; then resumed (history of 2 epochs), fed epoch 3 and
    finished, with nothing raised and nothing written outside the run directory."""
    from jaxyard.core.train.events import RunResult

    directory = s.tmp_path / "run"
    directory.mkdir(parents=True, exist_ok=True)
    cwd = s.tmp_path / "cwd"
    cwd.mkdir()
    records = [_record(e) for e in (1, 2, 3)]
    with _chdir(cwd):
        first = s.create(directory=directory)
        run = _stand_in_run(s, directory, [], 0)
        first.start(run)
        for r in records:
            run.history.append(r)
            first.log_epoch(dict(r))
        _run_files(directory, run.config_dict, records)
        first.finish(run, "finished", RunResult(directory, list(records), {"test_loss": 0.5, "test_acc": 0.8}, False,
                                                {"total_s": 1.0, "compile_s": None}))
        again = s.create(directory=directory)  # another process: `jaxyard resume` from the checkpoint of epoch 2
        run = _stand_in_run(s, directory, records[:2], 2)
        again.start(run)
        run.history.append(records[2])
        again.log_epoch(dict(records[2]))
        again.finish(run, "finished", RunResult(directory, list(records), {"test_loss": 0.5, "test_acc": 0.8}, False,
                                                {"total_s": 1.0, "compile_s": None}))
    stray = sorted(p.name for p in cwd.iterdir())
    if stray:
        raise _Failure(f"it wrote {', '.join(stray)} in the working directory", "write only under the run directory it is given")
    written = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    return f"wrote {len(written)} files under the run directory"


@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# --- the pytest plugin ------------------------------------------------------------------------------
#
# Loaded through the `pytest11` entry point in every pytest session of this environment: it must
# stay cheap (the module imports jaxyard's light core only) and change nothing unless used.

try:  # the kit's functions work without pytest
    import pytest as _pytest
except ImportError:  # pragma: no cover
    _pytest = None  # type: ignore[assignment]

if _pytest is not None:

    @_pytest.fixture(scope="session")
    def jaxyard_registry():
        """The registry as `jaxyard list` builds it: built-ins, installed entry points, registry.toml."""
        from jaxyard.core.registry.loading import build_registry

        return build_registry()

