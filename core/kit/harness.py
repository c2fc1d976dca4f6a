"""The kit's harness: what a check is, the components it runs on, opt-outs and the two ways to run them.

A check is a function of a :class:`Subject` registered with :func:`define_check`; the modules of
:mod:`jaxyard.core.kit.checks` hold them, one per kind. It returns a note (what was observed) or
None, raises :class:`Failure` (what is wrong, what to fix) when the component breaks its contract
and :class:`CheckSkipped` when the check cannot apply. :func:`check_component` runs them without
pytest, :func:`parametrize_with_checks` gives pytest one test per component and check.
Nothing here imports jax: the checks import it inside.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core.errors import UsageError, one_line
from jaxyard.core.registry.entries import KINDS, Entry

__all__ = [
    "CANDIDATE_INPUT_SHAPES",
    "CHECKS",
    "HEAVY_MODULES",
    "NUM_CLASSES",
    "TIERS",
    "Check",
    "CheckSkipped",
    "Failure",
    "Options",
    "Subject",
    "all_checks",
    "check_component",
    "checks_for",
    "components",
    "default_registry",
    "define_check",
    "error_text",
    "label",
    "normalize_distribution",
    "parametrize_with_checks",
    "resolve_entry",
    "run_check",
]

#: "api": the checks that train nothing; "full": those and the numerical ones.
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


class Failure(Exception):
    """Raised inside a check: what is wrong and what to do about it (the message's "Fix:")."""

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
    task: str | None = None  # models and loaders: the task they are checked with (models: classification when None)
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
        """``KIND:NAME``, as skip keys and test ids spell the component."""
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
        """Its params class built from :meth:`values` (a refused value is a UsageError)."""
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
        entry = resolve_entry(entry, self.options.registry)
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
        """The same check, run with ``options``."""
        return attrs.evolve(self, options=options)


#: Every check, in the order the modules of jaxyard.core.kit.checks register them (see all_checks).
CHECKS: list[Check] = []


def define_check(kinds: str | tuple[str, ...], tier: str = "api", name: str | None = None):
    """Register a check function; its docstring's first paragraph is the check's description.

    :param kinds: the kinds it applies to (``"all"`` for every kind).
    :param tier: ``"api"`` (trains nothing) or ``"full"``.
    :param name: the check's name (default: the function's, less ``check_``).
    """

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
        except Failure as failure:
            raise AssertionError(_message(subject, check, failure.what, failure.fix)) from None
        except AssertionError as err:
            raise AssertionError(_message(subject, check, error_text(err) or "an assertion failed", "see the assertion above")) from err
        except Exception as err:
            what = f"it raised {type(err).__name__}: {error_text(err)}"
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


def error_text(err: BaseException | str) -> str:
    """The message alone, collapsed (the kit names the exception's type itself where it matters)."""
    return one_line(str(err), 600)


# --- discovery ---------------------------------------------------------------------------------


def label(entry: Entry) -> str:
    """``KIND:NAME`` as skip keys and test ids spell a component (``NAME`` qualified, ``acme:cnn``,
    where a built-in or a preferred plugin has the bare name)."""
    return f"{entry.kind}:{entry.selector}"


def normalize_distribution(dist: str) -> str:
    """A distribution's name as pip compares them (``Jaxyard_Acme`` and ``jaxyard-acme`` are one)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


@functools.cache
def default_registry():
    """The registry as ``jaxyard list`` builds it, built once per process."""
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
    registry = registry if registry is not None else default_registry()
    wanted_kinds = set(KINDS if kinds is None else (_kind(k) for k in kinds))
    if distribution is not None and plugin is not None:
        raise UsageError("components(): give distribution= or plugin=, not both")
    infos = list(registry.plugins)
    if distribution is not None:
        infos = [p for p in infos if p.distribution and normalize_distribution(p.distribution) == normalize_distribution(distribution)]
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


def resolve_entry(entry: Entry | str, registry=None) -> Entry:
    """``entry`` itself, or the entry that ``"KIND:NAME"`` names in ``registry`` (default: the installed one)."""
    if isinstance(entry, Entry):
        return entry
    kind, sep, name = str(entry).partition(":")
    if not sep:
        raise UsageError(f"name a component as KIND:NAME, for example optimizer:adam, got {entry!r}")
    return (registry if registry is not None else default_registry()).get(kind, name)


def checks_for(entry: Entry | str, tier: str = "full") -> list[Check]:
    """The checks that apply to ``entry``'s kind at ``tier`` ("api": no training; "full": all)."""
    if tier not in TIERS:
        raise UsageError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
    kind = entry.kind if isinstance(entry, Entry) else str(entry).partition(":")[0]
    kind = _kind(kind)
    allowed = TIERS[: TIERS.index(tier) + 1]
    return [c for c in all_checks() if kind in c.kinds and c.tier in allowed]


def all_checks() -> list[Check]:
    """:data:`CHECKS`, once the modules of :mod:`jaxyard.core.kit.checks` have registered theirs."""
    importlib.import_module("jaxyard.core.kit.checks")
    return CHECKS


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


def _options_for(entry: Entry, *, distribution, params, input_shape, num_classes, registry, task=None) -> Options:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:  # else labels 0..-1: no example data
        raise UsageError(f"num_classes = {num_classes!r}: the classes a model is checked with, an int of at least 1")
    shape = _per_component(input_shape, entry, what="input_shape")
    chosen = _per_component(task, entry, what="task")
    if chosen is not None and not isinstance(chosen, str):
        raise UsageError(f"task for {label(entry)} must be a task's name (e.g. 'regression'), got {chosen!r}")
    return Options(
        distribution=distribution,
        params=_per_component(params, entry, what="params"),
        input_shape=tuple(shape) if shape is not None else None,
        num_classes=num_classes,
        registry=registry,
        task=chosen,
    )


def _entries(entry_or_entries, distribution, plugin, registry, kinds) -> list[Entry]:
    if entry_or_entries is None:
        return components(distribution=distribution, plugin=plugin, registry=registry, kinds=kinds)
    items = [entry_or_entries] if isinstance(entry_or_entries, (Entry, str)) else list(entry_or_entries)
    return [resolve_entry(e, registry) for e in items]


# --- the two ways to run them -------------------------------------------------------------------


def check_component(
    entry: Entry | str,
    *,
    tier: str = "full",
    skip: Mapping[str, Any] | None = None,
    params: Any = None,
    input_shape: Any = None,
    num_classes: int = NUM_CLASSES,
    task: Any = None,
    distribution: str | None = None,
    registry=None,
    tmp_path: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Run every check of ``tier`` on one component (an Entry or ``"KIND:NAME"``).

    ``skip`` is ``{check: reason}`` (or ``{"KIND:NAME": {check: reason}}``); ``params`` the values
    to build its params class from (a dict, or a callable of a temporary directory); ``task`` the
    task a model or loader is checked with (a name, see :func:`parametrize_with_checks`). Returns
    ``{check: "passed" | "skipped: reason"}``; raises AssertionError naming every failed check.
    """
    entry = resolve_entry(entry, registry)
    if skip and not any(":" in k for k in skip):
        skip = {label(entry): skip}
    _validate_skip(skip, [entry], tier)
    options = _options_for(entry, distribution=distribution, params=params, input_shape=input_shape, num_classes=num_classes,
                           registry=registry, task=task)
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
    task: Any = None,
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
    :param task: the task a model or a loader is checked with, by name: ``"next_token"`` for
        every one, or ``{"model:gpt": "next_token"}``. A model is built with that task's context
        (``num_outputs``, ``vocab_size``, ...) for the kit's example data the task accepts, and
        its output must have the task's ``output_shape``; default ``classification``. A loader
        is checked against it; by default against the first registered task that accepts its
        data (classification first).
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
        options = _options_for(entry, distribution=distribution, params=params, input_shape=input_shape, num_classes=num_classes,
                               registry=registry, task=task)
        skips = _skips_for(skip, entry)
        for check in checks_for(entry, tier):
            reason = _skip_reason(skips, check)
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            cases.append(pytest.param(entry, check.bind(options), id=f"{label(entry)}-{check.name}", marks=marks))
    return pytest.mark.parametrize("entry, check", cases)
