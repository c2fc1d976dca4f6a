"""The resolved configuration of a run: ``[run]`` settings plus one validated choice per kind.

Layers, later ones winning: the shipped registry.toml, the user's registry file, the
experiment file (``run --config``), command-line options, then ``--set KIND.KEY=VALUE``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from attrs import validators as v

from jaxyard.core import params as P
from jaxyard.core.entries import CHOSEN, KINDS, Entry
from jaxyard.core.errors import JaxyardError, PluginError, UsageError, one_line
from jaxyard.core.policy import MONITORS
from jaxyard.core.settings import Settings, dump_toml, merge, read_config_file


def _devices(instance, attribute, value) -> None:
    if not (value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)):
        raise ValueError(f"expected all or a positive number of devices, got {value!r}", attribute, None, value)


@attrs.frozen
class RunSettings:
    """The ``[run]`` table: which components to use and how to train."""

    optimizer: str = P.param("adam", "optimizer to use (`jaxyard list optimizers`)")
    scheduler: str = P.param("cosine", "learning-rate schedule to use")
    model: str = P.param("mlp", "model to train")
    loader: str = P.param("synthetic", "data set to train on")
    checkpointer: str = P.param("orbax", "how checkpoints are saved")
    epochs: int = P.param(10, "number of passes over the training split", validator=v.ge(1))
    batch_size: int = P.param(32, "examples per training step", validator=v.ge(1))
    learning_rate: float = P.param(1e-3, "peak learning rate, given to the schedule", validator=v.gt(0.0), traced=True)
    warmup_steps: int = P.param(
        100, "linear warmup from 0 to the peak rate, before the schedule (not `constant`'s: it is constant)", validator=v.ge(0)
    )
    clip_norm: float = P.param(0.0, "clip gradients to this global norm (0: off)", validator=v.ge(0.0))
    seed: int = P.param(0, "seeds the initialisation, dropout and the shuffle", validator=[v.ge(0), v.lt(2**31)])
    drop_last: bool = P.param(False, "drop the last partial batch instead of padding and masking it")
    eval_batch_size: int = P.param(1000, "examples per evaluation step (speed only)", validator=v.ge(1))
    save_every: int = P.param(5, "save a checkpoint every N epochs (the last epoch is always saved)", validator=v.ge(1))
    patience: int = P.param(0, "stop after this many epochs without improvement of `monitor` (0: off)", validator=v.ge(0))
    min_delta: float = P.param(0.0, "smallest change of `monitor` that counts as an improvement", validator=v.ge(0.0))
    monitor: str = P.param(
        "val_loss",
        "the metric that makes an epoch best, for early stopping, checkpoint retention and `eval --checkpoint best` "
        "(*_loss: lower is better, *_acc: higher)",
        validator=v.in_(MONITORS),
    )
    accumulate_steps: int = P.param(
        1, "gradient accumulation: average the gradients of N batches per optimizer update (effective batch N x batch_size)",
        validator=v.ge(1),
    )
    ema_decay: float = P.param(
        0.0, "keep an exponential moving average of the weights with this decay, e.g. 0.999 (0: off); `eval --weights ema`",
        validator=[v.ge(0.0), v.lt(1.0)],
    )
    devices: int | str = P.param(
        "all", "local devices to train on: all, or N (a 1-D mesh: the batch is split over them)", validator=_devices,
        converter=lambda v: int(v) if isinstance(v, str) and v.strip().isdigit() else v,
    )
    shard_params: bool = P.param(False, "split the parameters and optimizer state over the devices too (ZeRO-3/FSDP style)")
    curves: bool = P.param(True, "plot the training curves to training_curves.png when the run ends (a sweep's trials: off)")
    profile: bool = P.param(False, "write a jax.profiler trace of the second epoch to the run directory's profile/")
    keep_latest: int = P.param(3, "checkpoints: keep the newest N", validator=v.ge(1))
    keep_best: int = P.param(1, "checkpoints: also keep the N best by `monitor`", validator=v.ge(0))
    loggers: tuple[str, ...] = P.param(("jsonl",), "experiment loggers (`jaxyard list loggers`); `--logger NAME` adds one")
    runs_dir: str = P.param(
        "runs", "directory under which each run (and sweep) gets a directory of its own; `--out DIR` names that directory instead"
    )


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
        component, the plugin and its distribution (a PluginError: the plugin's bug, not the
        user's input); an OSError names the component it came from. The original is chained
        (``--debug`` shows it)."""
        entry = self.entry
        try:
            return entry.create(self.params, **context)
        except JaxyardError:
            raise  # already one line naming what went wrong (a missing file, a missing extra)
        except OSError as err:
            where = f"{err.filename}: " if err.filename else ""
            raise JaxyardError(f"{entry.kind} {entry.name!r}: {where}{err.strerror or err}") from err
        except Exception as err:
            hint = ""
            if type(err).__name__ in ("TracerBoolConversionError", "ConcretizationTypeError", "TracerIntegerConversionError"):
                traced = ", ".join(P.traced_fields(type(self.params)))
                hint = f" (its traced=True parameters, {traced}, must only be computed with: not branched on nor converted to Python numbers)"
            raise PluginError(f"{entry.kind} {entry.name!r} ({entry.origin()}) failed{hint}: {one_line(err)}") from err


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

    @property
    def choices(self) -> dict[str, Choice]:
        """The five single choices by kind."""
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


#: ``[run]`` keys renamed since a release: files (an old run's config.toml) still read
RENAMED_RUN_KEYS = {"out": "runs_dir"}


def renamed(table: dict[str, Any]) -> dict[str, Any]:
    """A ``[run]`` table with its old key names replaced (the new name wins if both are set)."""
    out = {RENAMED_RUN_KEYS.get(k, k): v for k, v in table.items() if k not in RENAMED_RUN_KEYS}
    for old, new in RENAMED_RUN_KEYS.items():
        if old in table:
            out.setdefault(new, table[old])
    return out


def check_run_table(table: dict[str, Any]) -> None:
    """Check a ``[run]`` table's keys and value types (used when reading files)."""
    table = renamed(table)
    types = P.field_types(RunSettings)
    valid = [f.name for f in attrs.fields(RunSettings)]
    for key, value in table.items():
        if key not in types:
            raise UsageError(P.unknown_key_message("run", key, valid))
        P.coerce(value, types[key], where=f"run.{key}")


def resolve_config(
    registry,
    settings: Settings,
    *,
    config_file: str | None = None,
    options: dict[str, Any] | None = None,
    sets: Iterable[str] = (),
    loggers: Iterable[str] = (),
) -> RunConfig:
    """Merge the configuration layers and validate every value against the registry.

    :param options: ``[run]`` values from command-line options (None values are ignored).
    :param sets: ``KIND.KEY=VALUE``, ``logger.NAME.KEY=VALUE`` or ``run.KEY=VALUE`` strings;
        ``KIND`` is the chosen component.
    :param loggers: logger names added to ``run.loggers`` (``--logger``).
    """
    values = settings.values
    if config_file:
        experiment = read_config_file(config_file)
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
    run = attrs.evolve(run, loggers=tuple(dict.fromkeys((*run.loggers, *loggers))))

    def choose(kind: str, name: str, sets_: dict[str, Any]) -> Choice:
        entry = registry.get(kind, name)
        tables = values.get(kind, {})
        # its parameters may be written under its bare name (when it owns it), as selected, or
        # qualified; the more specific table wins key by key
        table: dict[str, Any] = {}
        for n in dict.fromkeys([entry.name] * (entry.selector == entry.name) + [entry.selector, name, entry.qualified]):
            table.update(tables.get(n, {}))
        table.update(sets_)
        return Choice(entry, P.build(entry.params, table, where=f"{kind} {entry.name!r}"))

    choices = {kind: choose(kind, getattr(run, kind), component_sets[kind]) for kind in CHOSEN}
    logger_sets: dict[str, dict[str, Any]] = {}
    chosen = {registry.get("logger", n).qualified: n for n in run.loggers}
    for key, value in component_sets["logger"].items():
        name, _, param = key.rpartition(".")  # a qualifier may hold dots (a module name); a parameter never does
        target = registry.get("logger", name).qualified
        if target not in chosen:
            raise UsageError(f"--set logger.{key}: logger {name!r} is not in run.loggers ({', '.join(run.loggers) or 'none'}); add --logger {name}")
        logger_sets.setdefault(chosen[target], {})[param] = value
    chosen_loggers = tuple(choose("logger", name, logger_sets.get(name, {})) for name in run.loggers)
    run = attrs.evolve(run, loggers=tuple(c.key for c in chosen_loggers), **{kind: c.key for kind, c in choices.items()})
    return RunConfig(run, **choices, loggers=chosen_loggers, registry=registry)


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
