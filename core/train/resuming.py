"""What ``resume`` compares and changes: a run is one thing.

config.toml must match the configuration the newest intact checkpoint was trained with (its meta
carries it; with no checkpoint, the run's config.bound.json), plus the changes recorded since in
changes.jsonl; ``eval`` compares with the checkpoint it reads. A key given on resume's command
line is a deliberate change: printed, recorded, written to the bound configuration and to
config.toml. A run is never made shorter than it has trained, nor given another checkpointer.
The pure comparisons live in :mod:`jaxyard.core.store.binding`; this module runs them on a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jaxyard.core.errors import UsageError
from jaxyard.core.registry.config import RunConfig
from jaxyard.core.store import binding
from jaxyard.core.store import rundir as rd
from jaxyard.core.store.checkpoint import Restored
from jaxyard.core.train.build import Built
from jaxyard.core.train.events import Echo


def load_run_config(
    run_dir: str | os.PathLike, registry=None, *, sets: Iterable[str] = (), options: dict[str, Any] | None = None,
    unbuilt: Iterable[str] = (),
) -> RunConfig:
    """The resolved configuration a run directory was trained with (with ``sets`` and
    ``options``, ``[run]`` values, over it: a resume's deliberate changes). ``unbuilt``: the
    kinds the caller never builds (``evaluate``: the loggers), whose destinations are not refused."""
    from jaxyard.core.registry.config import resolve_config
    from jaxyard.core.registry.loading import build_registry
    from jaxyard.core.registry.settings import Settings

    path = Path(run_dir) / rd.CONFIG
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a jaxyard run directory (no {rd.CONFIG})")
    registry = registry or build_registry()
    rd.check_components(run_dir, registry)
    # a stale key names `jaxyard upgrade`
    return resolve_config(registry, Settings(), config_file=str(path), options=options, sets=sets, run_dir=run_dir, unbuilt=unbuilt)


def bind_changes(config: RunConfig, restored: Restored | None, run_dir: Path, sets, options, registry) -> list[binding.Difference]:
    """The deliberate changes of a resume (the keys given on its command line whose value differs
    from the checkpoint's, or with none the run's bound configuration's); any other difference is refused."""
    given = binding.given_keys(sets, options, logger_key=lambda name: _logger_key(config, name))
    new = binding.flatten(binding.bound(config))
    old = binding.stored(restored.meta if restored is not None else None)
    if old is not None:
        assert restored is not None
        return _compare(old, restored.step, new, run_dir, given=given)
    found = binding.read_bound(run_dir) if restored is None else None  # no checkpoint: the configuration bound at the start
    if found is not None:
        return _compare(*found, new, run_dir, given=given, reference=_BOUND_REFERENCE)
    if not given:  # a checkpoint saved before configurations were bound, or a run directory from before 0.3.1: nothing to compare
        return []
    try:  # what config.toml holds, for the record of the change
        old = binding.flatten(binding.bound(load_run_config(run_dir, registry)))
    except UsageError:
        return []
    return [d for d in binding.differences(old, new) if d.key in given]


_BOUND_REFERENCE = f"its bound configuration ({binding.BOUND}; no checkpoint saved)"


def _compare(old: dict[str, Any], step: int, new: dict[str, Any], run_dir: Path, *, given: Iterable[str], reference: str | None = None,
             fix: str | None = None) -> list[binding.Difference]:
    """``binding.compare`` with the changes recorded at ``step`` or later applied to ``old``, and named as such."""
    changes = binding.read_changes(run_dir)
    return binding.compare(binding.expected(old, step, changes), new, given=given, config_path=run_dir / rd.CONFIG, step=step, run_dir=run_dir,
                           changed=binding.recorded(step, changes), reference=reference, fix=fix)


def keep_checkpointer(config: RunConfig, run_dir: Path, sets, options, registry) -> None:
    """A run keeps its checkpointer, which holds its checkpoints: ``--set run.checkpointer=...``
    naming another is refused, and a config.toml naming another than the run's bound configuration
    is a mismatch (checked before that checkpointer reads, or misses, the run's checkpoints)."""
    given = binding.given_keys(sets, options)
    new = binding.flatten(binding.bound(config))
    try:
        found = binding.read_bound(run_dir)
    except UsageError:  # damaged: refused by the comparison that needs it (no checkpoint), if any does
        found = None
    if "run.checkpointer" in given:
        if found is not None:
            old = found[0].get("run.checkpointer")
        else:  # a run directory from before 0.3.1: config.toml's own
            try:
                old = load_run_config(run_dir, registry, unbuilt=("logger",)).run.checkpointer
            except UsageError:
                old = None
        if old is not None and old != new["run.checkpointer"]:
            item = next((s for s in reversed(tuple(sets)) if s.partition("=")[0].strip() == "run.checkpointer"),
                        f"run.checkpointer={new['run.checkpointer']}")
            raise UsageError(f"--set {item}: a run keeps its checkpointer ({old}), which holds its checkpoints; to train with "
                             f"{new['run.checkpointer']}, start a new run")
    elif found is not None and found[0].get("run.checkpointer") != new.get("run.checkpointer"):
        _compare(*found, new, run_dir, given=given, reference=f"its bound configuration ({binding.BOUND})")


def refuse_shorter(built: Built, restored: Restored, options: dict[str, Any], sets: Iterable[str]) -> None:
    """A resume never makes a run shorter than it has trained: the run would end before its own
    checkpoint, rewriting its summary with nothing trained. Refused in one line naming what asked."""
    run = built.config.run
    trained = restored.step * run.accumulate_steps  # a checkpoint's step counts optimizer updates; rounds end in batches
    if built.round_ends[-1] >= trained:
        return
    keys = {"run.epochs", "run.steps"}
    if options.get("epochs") is not None:
        asked = f"--epochs {options['epochs']}"
    elif options.get("steps") is not None:
        asked = f"--steps {options['steps']}"
    else:
        asked = next((f"--set {s}" for s in reversed(tuple(sets)) if s.partition("=")[0].strip() in keys),
                     f"{rd.CONFIG}'s run.{'steps' if run.steps else 'epochs'} = {run.steps or run.epochs}")
    epochs, partial = divmod(trained, built.steps_per_epoch)
    if run.steps or partial:
        done, least = f"{trained} steps", f"--steps {trained}"
    else:
        done, least = f"{epochs} epochs", f"--epochs {epochs}"
    raise UsageError(f"{asked}: the run has already trained {done} (checkpoint step {restored.step}); a run is not made shorter: "
                     f"give {least} or more")


#: what a checkpoint's position in a stream depends on, beside the loader's own parameters
_STREAM_KEYS = ("run.batch_size", "run.shuffle", "run.seed", "run.drop_last", "run.accumulate_steps")


def refuse_moved(built: Built, restored: Restored, changes: Iterable[binding.Difference]) -> None:
    """A resume's changes must leave its checkpoint where it was: a stepped run's checkpoint at the
    end of the same round (else batches would be skipped or trained twice), and a streamed run's
    position valid in its stream (a loader's parameters or the batches changed would read it
    wrongly). Refused in one line naming the change, before anything is written."""
    changed = [c.describe() for c in changes]
    what = ", ".join(changed) or "config.toml"
    k = built.config.run.accumulate_steps
    trained, index = restored.step * k, restored.meta.get("epoch")
    if built.stepped and isinstance(index, int) and not (index < len(built.round_ends) and built.round_ends[index] == trained):
        near = [e for e in built.round_ends[1:] if e < trained][-1:] + [e for e in built.round_ends[1:] if e >= trained][:1]
        raise UsageError(
            f"{what}: checkpoint step {restored.step} ends validation {index} after {trained} batches, but the changed run's "
            f"validation {index} ends after {built.round_ends[index] if index < len(built.round_ends) else 'none'} "
            f"(its validations near it: after {' and '.join(map(str, near))}); batches would be skipped or trained twice: "
            f"resume without that change, or start a new run")
    moved = [c.describe() for c in changes if c.key.startswith("loader.") or c.key in _STREAM_KEYS]
    if "stream" in restored.meta and moved:
        raise UsageError(
            f"{', '.join(moved)}: checkpoint step {restored.step} holds loader {built.config.loader.name!r}'s position in its "
            f"stream, which this change would read wrongly; resume without changing the loader or its batches (or start a new run)")


def _logger_key(config: RunConfig, name: str) -> str:
    """How config.toml names the logger ``--set logger.NAME.KEY=...`` selects (a third-party one qualified)."""
    return next((c.key for c in config.loggers if name in (c.key, c.name, c.entry.name, c.entry.qualified)), name)


def commit_changes(directory: rd.RunDir, config: RunConfig, restored: Restored | None, changes: list[binding.Difference], *, given: bool,
            echo: Echo, registry=None) -> None:
    """A resume's deliberate changes: printed, recorded in changes.jsonl, then written to the bound
    configuration and config.toml (in that order: a resume stopped in between is read as changed,
    and the same command finishes it). A value given that config.toml holds already changes nothing
    (config.toml, its comments with it, is left as it is)."""
    step = restored.step if restored is not None else 0
    if changes:
        echo("Changed on resume: " + ", ".join(d.describe() for d in changes))
        binding.record_changes(directory.path, step, changes)
    if not given:
        return
    try:
        found = binding.read_bound(directory.path)
    except UsageError:  # damaged: this session's configuration replaces it
        found = None
    if changes or found is None or binding.canonical(found[0]) != binding.flatten(binding.bound(config)):
        binding.write_bound(directory.path, config, step)
    try:
        on_disk = binding.canonical(load_run_config(directory.path, registry or config.registry, unbuilt=("logger",)).to_dict())
    except UsageError:
        on_disk = None
    if on_disk != binding.canonical(config.to_dict()):
        directory.write_config(config.to_toml())


def check_binding(config: RunConfig, restored: Restored, run_dir: Path) -> None:
    """``evaluate`` reads config.toml to build the model, the data and the task: one that does not
    match the checkpoint evaluated (plus the changes recorded since) would give another run's
    numbers, so it is refused like ``resume`` refuses it."""
    old = binding.stored(restored.meta)
    if old is None:  # saved before configurations were bound
        return
    _compare(old, restored.step, binding.flatten(binding.bound(config)), run_dir, given=(),
             fix=f"restore {rd.CONFIG} (eval builds the run from it; it changes nothing)")
