"""The resolved configuration of a run: ``[run]`` settings plus one validated choice per kind.

Layers, later ones winning: the shipped registry.toml, the user's registry file, the
experiment file (``run --config``), command-line options, then ``--set KIND.KEY=VALUE``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from jaxyard.core.errors import JaxyardError, PluginError, UsageError, one_line
from jaxyard.core.registry import params as P
from jaxyard.core.registry.entries import CHOSEN, KINDS, Entry
from jaxyard.core.registry.run_settings import RENAMED_RUN_KEYS, RunSettings, check_run_table, renamed  # noqa: F401 - their 0.1 home
from jaxyard.core.registry.settings import Settings, dump_toml, merge, read_config_file, toml_value
from jaxyard.core.registry.stale import refuse_stale_keys


@attrs.frozen
class Choice:
    """One component of a run: its registry entry and its validated parameters."""

    entry: Entry
    params: Any

    @property
    def name(self) -> str:
        """The name that selects it (``acme:cnn`` where a bare name is shared)."""
        return self.entry.selector

    @property
    def key(self) -> str:
        """How config files name it: a built-in by its name, anything else qualified, so that a
        saved config means the same component whatever plugins are installed later."""
        return self.entry.name if self.entry.source == "builtin" else self.entry.qualified

    def create(self, **context: Any) -> Any:
        """Build the component. A plugin's exception becomes one line naming the kind, the
        component, the plugin and its distribution (:meth:`failure`). The original is chained
        (``--debug`` shows it)."""
        try:
            return self.entry.create(self.params, **context)
        except JaxyardError:
            raise  # already one line naming what went wrong (a missing file, a missing extra)
        except Exception as err:
            raise self.failure(err) from err

    def call(self, doing: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, a call into this component's code after it was built (a checkpointer's
        ``load``, a loader's batches); its exception as one line (:meth:`failure`)."""
        try:
            return fn()
        except JaxyardError:
            raise
        except Exception as err:
            raise self.failure(err, doing) from err

    def failure(self, err: Exception, doing: str = "") -> JaxyardError:
        """``err``, raised by this component's own code (``doing``: "loading step 3"), as one line
        naming the kind, the component, its plugin and distribution, and the exception's type. An
        OSError (a file, the disk: the user's to fix) is a JaxyardError, anything else a
        PluginError (the plugin's bug, not the user's input)."""
        entry = self.entry
        what = f"{entry.kind} {entry.name!r} ({entry.origin()}) failed{' ' + doing if doing else ''}"
        if isinstance(err, OSError):
            where = f"{err.filename}: " if err.filename else ""
            return JaxyardError(f"{what}: {type(err).__name__}: {where}{err.strerror or err}")
        hint = ""
        if type(err).__name__ in ("TracerBoolConversionError", "ConcretizationTypeError", "TracerIntegerConversionError"):
            traced = ", ".join(P.traced_fields(type(self.params)))
            hint = f" (its traced=True parameters, {traced}, must only be computed with: not branched on nor converted to Python numbers)"
        return PluginError(f"{what}{hint}: {one_line(err)}")


@attrs.frozen
class RunConfig:
    """Everything a run needs, validated: nothing here can fail later for a bad value.

    ``registry`` is the registry the configuration was resolved against: its plugins receive
    the run's events.
    """

    run: RunSettings
    optimizer: Choice
    scheduler: Choice
    model: Choice
    loader: Choice
    checkpointer: Choice
    loggers: tuple[Choice, ...] = ()
    registry: Any = attrs.field(default=None, eq=False, repr=False)
    task: Choice = attrs.field(default=None, kw_only=True)  # (after the 0.2 fields: positional construction still works)

    @property
    def choices(self) -> dict[str, Choice]:
        """The six single choices by kind."""
        return {kind: getattr(self, kind) for kind in CHOSEN}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": P.to_plain(self.run)}
        for kind, choice in self.choices.items():
            out["run"][kind] = choice.key
            out[kind] = {choice.key: P.to_plain(choice.params)}
        if self.loggers:
            out["run"]["loggers"] = [c.key for c in self.loggers]
            out["logger"] = {c.key: P.to_plain(c.params) for c in self.loggers}
        return out

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


def resolve_config(
    registry,
    settings: Settings,
    *,
    config_file: str | None = None,
    options: dict[str, Any] | None = None,
    sets: Iterable[str] = (),
    loggers: Iterable[str] = (),
    run_dir: str | os.PathLike | None = None,
    unbuilt: Iterable[str] = (),
) -> RunConfig:
    """Merge the configuration layers and validate every value against the registry.

    Where a value comes from matters for one check. ``settings`` (the registry files), ``options``,
    ``sets`` and ``loggers`` are the user's explicit word; ``config_file`` is data. A parameter
    declared ``outside=`` (a tracking server, an online mode) whose value sends data outside the
    run directory is refused when only the data file gives it (a :class:`UsageError` saying how
    to allow it); the same value given explicitly too is allowed.

    :param options: ``[run]`` values from command-line options (None values are ignored).
    :param sets: ``KIND.KEY=VALUE``, ``logger.NAME.KEY=VALUE`` or ``run.KEY=VALUE`` strings;
        ``KIND`` is the chosen component.
    :param loggers: logger names added to ``run.loggers`` (``--logger``).
    :param run_dir: the run directory whose config.toml ``config_file`` is (``eval``, ``resume``): a
        key its component no longer takes (the plugin was upgraded since) is a :class:`StaleConfig`
        naming the way out, ``jaxyard upgrade RUN_DIR``, rather than an unknown key; a destination
        it names is allowed with ``jaxyard resume RUN_DIR --set KEY=VALUE``.
    :param unbuilt: kinds the caller never builds (``eval``: ``("logger",)``): their destinations
        send nothing, and are not refused.
    """
    values, sets = settings.values, list(sets)
    origin = _Origin(config_file, run_dir)
    if config_file:
        experiment = read_config_file(config_file)
        if run_dir is not None:
            refuse_stale_keys(registry, experiment, path=config_file, run_dir=str(run_dir))
        _check_component_tables(registry, experiment, config_file)
        values = merge(values, experiment)
    run_values = renamed(dict(values.get("run", {})))
    run_values.update({k: val for k, val in (options or {}).items() if val is not None})
    component_sets: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    for item in sets:
        section, key, value = parse_set(item)
        if section == "run":
            run_values[RENAMED_RUN_KEYS.get(key, key)] = value
        else:
            component_sets[section][key] = value
    run = P.build(RunSettings, run_values, where="run")
    explicit_run = {**renamed(dict(settings.values.get("run", {}))), **{k: v for k, v in (options or {}).items() if v is not None}}
    explicit_run.update((RENAMED_RUN_KEYS.get(k, k), v) for section, k, v in map(parse_set, sets) if section == "run")
    origin.check(run, explicit_run, table="run", set_prefix="run")
    run = attrs.evolve(run, loggers=tuple(dict.fromkeys((*run.loggers, *loggers))))

    def choose(kind: str, name: str, sets_: dict[str, Any]) -> Choice:
        entry = registry.get(kind, name)
        # its parameters may be written under its bare name (when it owns it), as selected, or
        # qualified; the more specific table wins key by key
        names = list(dict.fromkeys([entry.name] * (entry.selector == entry.name) + [entry.selector, name, entry.qualified]))
        table = {**_table(values, kind, names), **sets_}
        params = P.build(entry.params, table, where=f"{kind} {entry.name!r}")
        if kind not in unbuilt:
            prefix = f"logger.{name}" if kind == "logger" else kind
            origin.check(params, {**_table(settings.values, kind, names), **sets_}, table=f"{kind}.{name}", set_prefix=prefix)
        return Choice(entry, params)

    choices = {kind: choose(kind, getattr(run, kind), component_sets[kind]) for kind in CHOSEN}
    logger_sets: dict[str, dict[str, Any]] = {}
    chosen = {registry.get("logger", n).qualified: n for n in run.loggers}
    for key, value in component_sets["logger"].items():
        name, _, param = key.rpartition(".")  # a qualifier may hold dots (a module name); a parameter never does
        target = registry.get("logger", name).qualified
        if target not in chosen:
            add = f"add --logger {name}" if run_dir is None else f"add it with --set run.loggers={','.join((*run.loggers, name))}"  # resume
            raise UsageError(f"--set logger.{key}: logger {name!r} is not in run.loggers ({', '.join(run.loggers) or 'none'}); {add}")
        logger_sets.setdefault(chosen[target], {})[param] = value
    chosen_loggers = tuple(choose("logger", name, logger_sets.get(name, {})) for name in run.loggers)
    run = attrs.evolve(run, loggers=tuple(c.key for c in chosen_loggers), **{kind: c.key for kind, c in choices.items()})
    _refuse_shared_paths([*choices.items(), *((f"logger.{c.key}", c) for c in chosen_loggers)])
    return RunConfig(run, **choices, loggers=chosen_loggers, registry=registry)


def _refuse_shared_paths(tables: Iterable[tuple[str, Choice]]) -> None:
    """Two ``writes=True`` parameters of the chosen components naming one path in the run directory
    (``logger.csv.filename`` = ``logger.jsonl.filename``) would write over each other: one line."""
    seen: dict[str, tuple[str, str]] = {}
    for prefix, choice in tables:
        for field in attrs.fields(type(choice.params)):
            value = getattr(choice.params, field.name)
            if not field.metadata.get("writes") or not isinstance(value, str):
                continue
            key, normal = f"{prefix}.{field.name}", P.normal_path(value).casefold()
            if normal == ".":  # a default meaning "none": no path
                continue
            if normal in seen:
                other, given = seen[normal]
                raise UsageError(f"{key} = {value!r} and {other} = {given!r} name the same path in the run directory: "
                                 f"the two would write over each other; give one of them another")
            seen[normal] = (key, value)


def outside_sets(config: RunConfig) -> list[str]:
    """The ``--set`` items that give ``config``'s destinations (its ``outside=`` values that send data
    outside the run directory): what a sweep's trials, which read their base configuration from a
    data file (base.toml), are given again as the user's word."""
    out = []
    tables = [("run", config.run)] + [(f"logger.{c.key}" if c.entry.kind == "logger" else c.entry.kind, c.params)
                                      for c in [*config.choices.values(), *config.loggers]]
    for prefix, params in tables:
        for field in attrs.fields(type(params)):
            value = getattr(params, field.name)
            if P.outside_value(field, value):
                out.append(f"{prefix}.{field.name}={value if isinstance(value, str) else toml_value(value)}")
    return out


def _table(values: dict[str, Any], kind: str, names: list[str]) -> dict[str, Any]:
    """A component's parameters in ``values``: its tables under ``names``, later names winning."""
    table: dict[str, Any] = {}
    for n in names:
        table.update(values.get(kind, {}).get(n, {}))
    return table


@attrs.frozen
class _Origin:
    """Where values came from, for the ``outside=`` parameters: the registry files and the command
    line are the user's word, ``config_file`` (an experiment file, a run's config.toml) is data."""

    config_file: str | None
    run_dir: str | os.PathLike | None

    def check(self, params, explicit: dict[str, Any], *, table: str, set_prefix: str) -> None:
        """Refuse a value of ``params`` that sends data outside the run directory unless
        ``explicit`` (the same parameters from the registry files and the command line) gives it."""
        types_ = P.field_types(type(params))
        for field in attrs.fields(type(params)):
            value = getattr(params, field.name)
            if not P.outside_value(field, value) or self._given(explicit, field.name, types_.get(field.name, Any), value):
                continue
            where = f"{self.config_file}: " if self.config_file else ""
            shown = value if isinstance(value, str) else P.to_plain(params)[field.name]
            assignment = shlex.quote(f"{set_prefix}.{field.name}={shown}")
            if self.run_dir is not None:
                allow = f"jaxyard resume {self.run_dir} --set {assignment}"
            else:
                allow = f"--set {assignment} on the command line, or in a registry file"
            raise UsageError(
                f"{where}[{table}] {field.name} = {value!r} sends the run's data outside its run directory, which a data file "
                f"cannot choose; to allow it, give it yourself: {allow}"
            )

    @staticmethod
    def _given(explicit: dict[str, Any], key: str, tp: Any, value: Any) -> bool:
        if key not in explicit:
            return False
        try:
            return P.coerce(explicit[key], tp, where=key) == value
        except UsageError:
            return False


def _check_component_tables(registry, data: dict[str, Any], path: str) -> None:
    """Every ``[KIND.NAME]`` table of an experiment file names a registered component and its keys,
    chosen or not: a typo there is caught now, not in a later run."""
    for kind in KINDS:
        for name, table in data.get(kind, {}).items():
            try:
                entry = registry.get(kind, name)
            except UsageError as err:
                raise UsageError(f"{path}: [{kind}.{name}]: {err}") from None
            try:
                P.build(entry.params, table, where=f"[{kind}.{name}]")
            except UsageError as err:
                raise UsageError(f"{path}: {err}") from None


def parse_set(item: str) -> tuple[str, str, Any]:
    """Split ``optimizer.momentum=0.9`` into ``("optimizer", "momentum", 0.9)``."""
    target, sep, text = item.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not key or (section == "logger" and "." not in key.strip(".")):
        raise UsageError(
            f"--set {item!r}: expected KIND.KEY=VALUE (logger.NAME.KEY=VALUE for a logger), for example optimizer.momentum=0.9"
        )
    sections = ("run", *KINDS)
    if section not in sections:
        raise UsageError(f"--set {item!r}: unknown section {section!r} (valid: {', '.join(sections)})")
    return section, key, P.CommandLineText(text.strip())
