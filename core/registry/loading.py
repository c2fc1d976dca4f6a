"""The registry: plugins discovered, loaded one at a time, and their components validated.

:func:`build_registry` makes a :class:`Registry` object; nothing is filled in at import time.
Built-in plugins (modules in ``jaxyard.plugins``), third-party plugins (entry points in the
group ``jaxyard``) and local plugins (modules or ``.py`` files named in registry.toml or with
``--plugin``) all go through the same path. A plugin that fails is reported and skipped, or is
fatal in strict mode.

An entry-point plugin whose distribution requires another jaxyard (``Requires-Dist: jaxyard<0.2``)
fails before it is imported, naming both versions; one that breaks a contract at registration is
told which jaxyard it was written for (:mod:`jaxyard.core.registry.api`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import pluggy

from jaxyard.core.errors import PluginError, UnknownComponent, UsageError, did_you_mean, one_line
from jaxyard.core.registry import hookspecs
from jaxyard.core.registry.api import PACKAGE, declared_requirement, unmet_requirement, written_for
from jaxyard.core.registry.entries import CONTEXT_KEYWORDS, FACTORY_KEYWORDS, HOOKS, KINDS, Entry, PluginInfo
from jaxyard.core.registry.params import NoParams, describe, field_types
from jaxyard.core.registry.settings import Settings, env_flag

ENTRY_POINT_GROUP = "jaxyard"
ENV_LOAD = "JAXYARD_LOAD_PLUGINS"  # allow-list of entry-point plugins; empty loads none
ENV_DISABLE = "JAXYARD_DISABLE_PLUGINS"  # block-list, any kind of plugin
ENV_STRICT = "JAXYARD_STRICT_PLUGINS"  # "1": a failing plugin is fatal
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")


@attrs.frozen
class Candidate:
    """A plugin found but not yet imported."""

    name: str
    source: str
    module: str
    load: Callable[[], Any] = attrs.field(repr=False)
    distribution: str | None = None
    version: str | None = None
    requires: str | None = None  # the jaxyard version specifier its distribution declares


class Registry:
    """Components by kind and name, and the plugins that did (or did not) provide them."""

    def __init__(
        self, entries: Iterable[Entry], plugins: Iterable[PluginInfo], pm: pluggy.PluginManager, prefer: Iterable[str] = (),
        requirements: Mapping[str, str] | None = None,
    ):
        """``prefer``: qualified names (``acme:cnn``) that own their bare name when plugins share it.
        ``requirements``: plugin name -> the jaxyard version specifier its distribution declares."""
        by_bare: dict[tuple[str, str], list[Entry]] = {}
        for e in entries:
            by_bare.setdefault((e.kind, e.name), []).append(e)
        prefer = set(prefer)
        self._entries: dict[tuple[str, str], Entry] = {}  # (kind, selector) -> entry
        self._ambiguous: dict[tuple[str, str], list[Entry]] = {}
        for key, group in by_bare.items():
            owner = _owner(group, prefer)
            if owner is None:
                self._ambiguous[key] = group
            for e in group:
                e = attrs.evolve(e, ref=e.name if e is owner else e.qualified)
                self._entries[e.kind, e.selector] = e
        self.plugins = tuple(plugins)
        self.plugin_manager = pm
        self._requirements = dict(requirements or {})

    def get(self, kind: str, name: str) -> Entry:
        """The entry ``name`` selects: its bare name, or ``qualifier:name`` (``acme:cnn``,
        ``jaxyard:adam``) for any entry; a bare name two plugins share is an error listing both."""
        kind = normalize_kind(kind)
        if (kind, name) in self._entries:
            return self._entries[kind, name]
        if (kind, name) in self._ambiguous:
            group = self._ambiguous[kind, name]
            choices = ", ".join(f"{e.qualified} ({e.origin()})" for e in group)
            raise UsageError(
                f"{kind} {name!r} is registered by {len(group)} plugins; choose one: {choices} "
                f"(or make one the default in a registry file: [plugins] prefer = [\"{group[0].qualified}\"])"
            )
        qualifier, _, bare = name.rpartition(":")
        for e in self._entries.values():
            if qualifier and e.kind == kind and e.name == bare and e.qualifier == qualifier:
                return e
        raise UnknownComponent(unknown_name_message(kind, name, self.names(kind)))

    def names(self, kind: str) -> list[str]:
        """The names that select each entry of ``kind`` (qualified where a bare name is shared)."""
        return sorted(n for k, n in self._entries if k == kind)

    def entries(self, kind: str | None = None, pattern: str | None = None) -> list[Entry]:
        """Entries sorted by kind then name, optionally of one kind and matching a glob pattern."""
        kind = normalize_kind(kind) if kind else None
        return [
            e
            for e in sorted(self._entries.values(), key=lambda e: (KINDS.index(e.kind), e.selector))
            if (kind is None or e.kind == kind)
            and (pattern is None or fnmatch.fnmatchcase(e.name, pattern) or fnmatch.fnmatchcase(e.selector, pattern))
        ]

    def plugin(self, name: str) -> PluginInfo:
        for p in self.plugins:
            if p.name == name:
                return p
        raise UsageError(unknown_name_message("plugin", name, [p.name for p in self.plugins]))

    def requirement(self, name: str) -> str | None:
        """The jaxyard that plugin ``name``'s distribution requires (``">=0.2"``, ``""`` for any), or
        None when it declares none (built-ins are jaxyard itself)."""
        return self._requirements.get(name)

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if not p.ok]

    @property
    def loaded(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.ok and not p.disabled]


def _owner(group: list[Entry], prefer: set[str]) -> Entry | None:
    """Who keeps the bare name: the one a registry file prefers, else a built-in, else the only one."""
    for e in group:
        if e.qualified in prefer:
            return e
    builtin = [e for e in group if e.source == "builtin"]
    if builtin:
        return builtin[0]
    return group[0] if len(group) == 1 else None


def normalize_kind(kind: str) -> str:
    """Accept ``optimizer`` or ``optimizers``; refuse anything else with the valid kinds."""
    singular = kind[:-1] if kind.endswith("s") and kind[:-1] in KINDS else kind
    if singular not in KINDS:
        raise UsageError(unknown_name_message("kind", kind, list(KINDS)))
    return singular


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    choices = ", ".join(valid) if valid else "none registered"
    return f"unknown {kind} {name!r}{did_you_mean(name, valid)} (valid: {choices})"


def build_registry(
    settings: Settings | None = None,
    *,
    plugins: Iterable[str] = (),
    disable: Iterable[str] = (),
    strict: bool | None = None,
    on_failure: Callable[[PluginInfo], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    load: Iterable[str] | None = None,
) -> Registry:
    """Discover and load every plugin, returning the registry of their components.

    :param settings: the merged registry.toml (default: :func:`jaxyard.load_settings`).
    :param plugins: extra local plugins (module names or ``.py`` paths), as ``--plugin``.
    :param disable: plugin names to block, on top of registry.toml and ``$JAXYARD_DISABLE_PLUGINS``.
    :param strict: make a failing plugin fatal (default: ``$JAXYARD_STRICT_PLUGINS``).
    :param on_failure: called with each failed plugin's record as it fails (the CLI warns).
    :param on_warning: called with one line for each name to disable that matches no plugin.
    :param load: the entry-point plugins to load (names or distributions; empty: none), as
        ``$JAXYARD_LOAD_PLUGINS``; default: that variable, or every installed one.
    """
    if settings is None:
        from jaxyard.core.registry.settings import load_settings

        settings = load_settings()
    if strict is None:
        strict = env_flag(ENV_STRICT)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)

    def full(name: str) -> str:  # a built-in by its short name, as [plugins] builtin lists it
        return f"{PACKAGE}.plugins.{name}" if name in settings.builtin else name

    blocked = {full(n) for n in (*settings.disabled, *disable, *_env_list(ENV_DISABLE))}
    for name in blocked:
        pm.set_blocked(name)
    if load is None and ENV_LOAD in os.environ:
        load = _env_list(ENV_LOAD)

    entries: dict[tuple[str, str], Entry] = {}
    infos: list[PluginInfo] = []
    matched: set[str] = set()
    requirements: dict[str, str] = {}
    for candidate in _candidates(settings, plugins, load):
        if candidate.requires is not None:
            requirements[candidate.name] = candidate.requires
        if pm.is_blocked(candidate.name):
            matched.add(candidate.name)
            infos.append(PluginInfo(candidate.name, candidate.source, candidate.module, candidate.distribution, candidate.version, disabled=True))
            continue
        info = _load(pm, candidate, entries)
        infos.append(info)
        if not info.ok:
            if strict:
                raise PluginError(f"plugin {info.label()} failed: {info.error}")
            if on_failure:
                on_failure(info)
    for name in sorted(blocked - matched):
        if on_warning:
            loaded = ", ".join(i.name for i in infos) or "none"
            on_warning(f"Warning: no plugin is named {name!r}, so disabling it does nothing (plugins: {loaded})")
    _check_prefer(settings, list(entries.values()), infos, allow_list=load is not None)
    return Registry(entries.values(), infos, pm, prefer=settings.prefer, requirements=requirements)


def _check_prefer(settings: Settings, entries: list[Entry], infos: list[PluginInfo], *, allow_list: bool) -> None:
    """Each ``[plugins] prefer`` entry names a component a loaded plugin registers: one naming nothing
    (``zoo:cnm``) is an error naming the registry file, not a preference that silently never applies.
    A plugin that failed, is disabled or was left out by ``$JAXYARD_LOAD_PLUGINS`` is not held against it."""
    qualified = {e.qualified for e in entries}
    loaded = {_qualifier(i) for i in infos if i.ok and not i.disabled}
    absent = {_qualifier(i) for i in infos if not i.ok or i.disabled}
    for item in settings.prefer:
        qualifier, _, name = item.rpartition(":")
        if item in qualified or qualifier in absent:
            continue
        if qualifier in loaded:
            own = sorted({e.name for e in entries if e.qualifier == qualifier})
            listed = ", ".join(own[:12]) + (", ..." if len(own) > 12 else "")
            found = f"plugin {qualifier!r} registers no {name!r}{did_you_mean(name, own)} (it registers: {listed or 'nothing'})"
        elif allow_list:
            continue
        else:
            found = f"no loaded plugin is named {qualifier!r}{did_you_mean(qualifier, sorted(loaded))} (plugins: {', '.join(sorted(loaded))})"
        where = settings.prefer_file or "a registry file"
        raise UsageError(f"{where}: [plugins] prefer = {item!r} names no component: {found}")


def _qualifier(info: PluginInfo) -> str:
    """The qualifier of the components ``info`` registers (as :attr:`Entry.qualifier` spells it)."""
    return Entry("task", "-", "", NoParams, factory=_qualifier, plugin=info.name, source=info.source, module=info.module).qualifier


def _candidates(settings: Settings, extra: Iterable[str], load: Iterable[str] | None = None) -> Iterator[Candidate]:
    own = _own_version()
    for short in settings.builtin:
        module = f"{PACKAGE}.plugins.{short}"
        yield Candidate(module, "builtin", module, _importer(module), "jaxyard", own)
    allow = set(load) if load is not None else None
    seen: dict[str, str | None] = {}  # entry-point name -> its distribution
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        if allow is not None and ep.name not in allow and dist not in allow:
            continue
        if ep.name in seen:  # the same distribution found twice on sys.path is no conflict
            if dist != seen[ep.name]:
                msg = f"entry point name {ep.name!r} is already used by distribution {seen[ep.name]!r}"
                yield Candidate(ep.name, "entry point", ep.value, _failing(msg), dist, version)
            continue
        seen[ep.name] = dist
        requires = declared_requirement(ep.dist)
        unmet = unmet_requirement(requires, own, distribution=dist)
        load_it = _failing(unmet) if unmet else ep.load  # never imported: its code was written for another API
        yield Candidate(ep.name, "entry point", ep.value, load_it, dist, version, requires)
    for spec in dict.fromkeys((*settings.local, *extra)):  # a plugin named twice loads once
        yield Candidate(spec, "local", spec, _importer(spec))


def _load(pm: pluggy.PluginManager, c: Candidate, entries: dict[tuple[str, str], Entry]) -> PluginInfo:
    """Import, register and call one plugin; on any failure leave no trace of it but its record."""
    info = PluginInfo(c.name, c.source, c.module, c.distribution, c.version)
    plugin = None
    try:
        loaded = c.load()
        if pm.is_registered(loaded):
            raise PluginError(f"is the same module as plugin {pm.get_name(loaded)!r}, which is already loaded")
        pm.register(loaded, name=c.name)
        plugin = loaded  # from here on, a failure must unregister it
        hooks = _check_hooks(pm, plugin)
        if not hooks and hasattr(plugin, "__path__"):  # `--plugin DIR`: a package (or a bare directory) with no hook
            raise _Refused(
                f"{c.module} is a directory that implements no jaxyard hook, so it registers nothing: "
                f"name the plugin's module or .py file in it (--plugin {c.module.rstrip('/')}/NAME.py)"
            )
        staged: dict[tuple[str, str], Entry] = {}
        warnings: list[str] = []
        implemented = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
        others = [p for p in pm.get_plugins() if p is not plugin]
        for kind in KINDS:
            if HOOKS[kind] in implemented:  # through pluggy's own call loop (wrappers, tryfirst), this plugin alone:
                caller = pm.subset_hook_caller(HOOKS[kind], remove_plugins=others)  # what it registers is its own
                caller(register=_register_fn(kind, c, staged, entries, warnings))
    except (Exception, SystemExit, KeyboardInterrupt) as err:  # a plugin's own bug (even sys.exit() at import) must not take the registry down
        if plugin is not None:
            pm.unregister(plugin)
        error = one_line(err)
        if c.source != "builtin" and _breaks_the_api(err):
            error = f"{error}; {written_for(c.requires, _own_version())}"
        return attrs.evolve(info, error=error)
    entries.update(staged)
    return attrs.evolve(info, hooks=hooks, components=tuple(f"{k}:{e.name}" for (k, _), e in staged.items()), warnings=tuple(warnings))


def _breaks_the_api(err: BaseException) -> bool:
    """Whether a plugin's failure is one of jaxyard's contracts (the registration checks, a hook
    implementation's arguments, a jaxyard name that is not there): the jaxyard it was written for
    is worth naming. A requirement already refused, or the plugin's own bug, is not."""
    if isinstance(err, PluginError):
        return not isinstance(err, _Refused)
    if isinstance(err, pluggy.PluginValidationError):
        return True
    return isinstance(err, ImportError) and (err.name or "").partition(".")[0] == PACKAGE


def _check_hooks(pm: pluggy.PluginManager, plugin: Any) -> tuple[str, ...]:
    """The hooks ``plugin`` implements; a misspelled or undecorated one is an error."""
    for attr in dir(plugin):
        if attr.startswith(f"{hookspecs.PROJECT}_") and pm.parse_hookimpl_opts(plugin, attr) is None:
            if callable(getattr(plugin, attr, None)):  # pluggy would silently ignore it
                raise PluginError(f"defines {attr} without the @jaxyard.hookimpl decorator")
    callers = pm.get_hookcallers(plugin) or []
    for caller in callers:
        if not caller.has_spec():
            raise PluginError(f"implements unknown hook {caller.name}{did_you_mean(caller.name, HOOKS.values(), n=1)}")
    return tuple(sorted(c.name for c in callers))


def _register_fn(kind: str, candidate: Candidate, staged: dict, committed: dict, warnings: list[str]) -> Callable[..., None]:
    plugin = candidate.name

    def register(name: str, factory: Callable[..., Any], *, params: type | None = None, description: str | None = None) -> None:
        where = f"{kind} {name!r}"
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise PluginError(f"invalid {kind} name {name!r}: use lower case letters, digits, '-' and '_'")
        if not callable(factory):
            raise PluginError(f"{where}: factory must be callable, got {factory!r}")
        params = NoParams if params is None else params
        if not (isinstance(params, type) and attrs.has(params)):
            raise PluginError(f"{where}: params must be an attrs class, got {params!r}")
        for field, info in zip(attrs.fields(params), describe(params), strict=True):
            if info.default is attrs.NOTHING:
                raise PluginError(f"{where}: parameter {info.name!r} of {params.__name__} needs a default")
            if field.type is None:  # --set would store the text "0.5" in it
                raise PluginError(f"{where}: parameter {info.name!r} of {params.__name__} needs a type annotation")
            if field.metadata.get("traced") and field_types(params).get(info.name) is not float:
                raise PluginError(
                    f"{where}: parameter {info.name!r} of {params.__name__} is traced=True but of type {info.type}: "
                    f"only float parameters can be runtime inputs (integers, booleans and strings shape the program)"
                )
            if not info.doc.strip():
                raise PluginError(
                    f"{where}: parameter {info.name!r} of {params.__name__} needs a doc: "
                    f"{info.name}: TYPE = jaxyard.param(DEFAULT, \"what it does\")"
                )
        _check_signature(where, kind, factory)
        doc = (description or (factory.__doc__ or "").strip().split("\n", 1)[0]).strip()
        if not doc:
            raise PluginError(f"{where}: needs a description (argument or factory docstring)")
        entry = Entry(kind, name, doc, params, factory, plugin, candidate.source, candidate.module, candidate.distribution, candidate.version)
        if (kind, entry.qualified) in staged:
            raise PluginError(f"{where} is registered twice by plugin {plugin!r}")
        if (kind, entry.qualified) in committed:
            other = committed[kind, entry.qualified].plugin
            raise PluginError(f"{where}: plugin {other!r} already registers {entry.qualified!r}; rename one of the two plugins")
        shadowed = [e for (k, _), e in committed.items() if k == kind and e.name == name and e.source == "builtin"]
        if shadowed and candidate.source != "builtin":
            warnings.append(
                f"plugin {plugin!r} registers {kind} {name!r}, which jaxyard has built in: the built-in keeps the name, "
                f"this one is {entry.qualified!r}"
            )
        staged[kind, entry.qualified] = entry

    return register


def _check_signature(where: str, kind: str, factory: Callable[..., Any]) -> None:
    """The factory must take the params positionally and every keyword its hook passes (now, not
    in a run an hour later); a model factory may also name keys of the task's context
    (:data:`jaxyard.core.registry.entries.CONTEXT_KEYWORDS`)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to inspect
        return
    parameters = list(signature.parameters.values())
    kinds = {p.kind for p in parameters}
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = FACTORY_KEYWORDS[kind]
    expected = f"def factory(params, *, {', '.join(keywords)})"
    if not positional and inspect.Parameter.VAR_POSITIONAL not in kinds:
        raise PluginError(f"{where}: factory{signature} takes no positional argument for the params; expected {expected}")
    if inspect.Parameter.VAR_KEYWORD in kinds:
        return
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [k for k in keywords if k not in names]
    if missing:
        raise PluginError(
            f"{where}: factory{signature} does not accept {', '.join(missing)}, which jaxyard passes; expected {expected}"
        )
    required = [
        p.name
        for p in parameters[1:]
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in keywords
        and not (kind == "model" and p.name in CONTEXT_KEYWORDS)
    ]
    if required:
        raise PluginError(f"{where}: factory{signature} requires {', '.join(required)}, which jaxyard never passes; expected {expected}")


class _Refused(PluginError):
    """A plugin refused before it is imported (its jaxyard requirement, a name already taken), or a
    directory that registers nothing: the message says everything."""


def _failing(message: str) -> Callable[[], Any]:
    def load() -> Any:
        raise _Refused(message)

    return load


def _importer(spec: str) -> Callable[[], Any]:
    def load() -> Any:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]  # same stem, other folder: another module
            name = f"jaxyard_local_{path.stem}_{digest}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:  # not for a .py file, but the API allows it
                raise ImportError(f"cannot import {path}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]  # as importlib does: no half-imported module left behind
                raise
            return module
        if os.sep in spec and os.path.isdir(spec):  # a path, not a module name: nothing in it is imported
            raise _Refused(f"{spec} is a directory: name the plugin's module or .py file in it (--plugin {spec.rstrip(os.sep)}/NAME.py)")
        try:
            return importlib.import_module(spec)
        except ModuleNotFoundError as err:
            if err.name != spec.split(".")[0] or os.getcwd() in sys.path:
                raise
        sys.path.insert(0, os.getcwd())  # `--plugin mymodule` for a mymodule.py in the current directory
        try:
            return importlib.import_module(spec)
        finally:
            sys.path.remove(os.getcwd())

    return load


def _env_list(var: str) -> list[str]:
    return [s.strip() for s in os.environ.get(var, "").split(",") if s.strip()]


def _own_version() -> str | None:
    try:
        return metadata.version("jaxyard")
    except metadata.PackageNotFoundError:
        return None

