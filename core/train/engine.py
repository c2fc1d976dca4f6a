"""Orchestration: ``train(config)``, ``resume(run_dir)`` and ``evaluate(run_dir)``.

A run is: build the components (:mod:`jaxyard.core.train.build`), then train them epoch by epoch
(:class:`jaxyard.core.train.fit.Fit`, one method per phase), telling the plugins
(:mod:`jaxyard.core.train.events`). Everything around the step is a plugin on those events: the
printed report, the loggers (metrics.jsonl is one), the NaN guard, early stopping, checkpoint
cadence and the curves PNG. The library prints nothing unless given ``echo``.

In a job of several processes (:mod:`jaxyard.core.scale.processes`) every process trains and receives
every event; process 0 alone writes the run directory, prints, logs and saves checkpoints, and
tells the others what it decided (the directory, the checkpoint restored, an error). Here, before
anything is built or written, the processes agree on their resolved configuration (``agree_config``);
then every process builds the run and agrees that it did (``processes.together``); process 0
claims the directory and makes the loggers and the checkpointer (``processes.from_primary``).

A run is one thing: every checkpoint carries the configuration it was trained with, and the run
directory's config.bound.json the one it started with (:mod:`jaxyard.core.store.binding`).
``resume`` refuses a config.toml that does not match its newest intact checkpoint (with none,
config.bound.json), and ``evaluate`` one that does not match the checkpoint it reads;
``resume``'s ``epochs``, ``steps`` and ``sets`` change a run deliberately (printed, recorded in
changes.jsonl, config.bound.json and config.toml), but never make it shorter than it has trained
nor change its checkpointer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import attrs

from jaxyard.core.errors import PluginError, UsageError
from jaxyard.core.metrics import label as metric_label
from jaxyard.core.registry.config import RunConfig
from jaxyard.core.registry.params import inside
from jaxyard.core.scale import processes
from jaxyard.core.scale.layout import make_layout
from jaxyard.core.store import binding
from jaxyard.core.store import rundir as rd
from jaxyard.core.store.checkpoint import CheckpointError, Restored, missing_methods
from jaxyard.core.store.policy import CheckpointPolicy
from jaxyard.core.train import resuming
from jaxyard.core.train.build import Built, build, enable_compile_cache
from jaxyard.core.train.events import Echo, RunResult, silent
from jaxyard.core.train.fit import Fit, monitor_of, place_restored, read_latest
from jaxyard.core.train.fit import describe_components as describe_components  # its 0.1 home: benchmarks import it from here
from jaxyard.core.train.loggers import LOGGER_METHODS
from jaxyard.core.train.loop import Progress, make_loop, summarize
from jaxyard.core.train.resuming import load_run_config
from jaxyard.core.train.traced import Programs

__all__ = ["Evaluation", "RunResult", "evaluate", "read_checkpoint", "resume", "train"]


@attrs.frozen
class Evaluation:
    """What :func:`evaluate` returns: the checkpoint evaluated and its test metrics (``metrics``:
    the task's, by name: ``{"loss": ..., "acc": ...}``)."""

    step: int
    epoch: int | None
    metrics: dict[str, float]
    skipped: tuple[tuple[int, str], ...] = ()

    @property
    def test_loss(self) -> float:
        return self.metrics["loss"]

    @property
    def test_acc(self) -> float:
        """A classification's test accuracy (0.2's field)."""
        return self.metrics["acc"]


def train(
    config: RunConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    echo: Echo = silent,
    warn: Echo | None = None,
    progress: Progress | None = None,
    compile_cache: str | os.PathLike | None = None,
    programs: Programs | None = None,
    make_loop: Callable[[Built], Any] | None = None,
) -> RunResult:
    """Train ``config`` in a new run directory and evaluate on the test split.

    :param out_dir: the run's directory (must be new or empty); default ``run.runs_dir/<timestamp>-...``.
    :param echo: called with each line of the report (the CLI passes ``click.echo``).
    :param warn: called with warnings (a logger dropped, ...); default: ``echo``.
    :param progress: makes a per-epoch progress bar for streamed data (the CLI passes
        ``click.progressbar`` when writing to a terminal).
    :param compile_cache: a directory for JAX's persistent compilation cache (None: off).
    :param programs: compiled programs to share with other runs in this process (a sweep's):
        its traced hyperparameters are inputs, and runs of one static group compile once.
    :param make_loop: ``make_loop(built)`` -> the loop that trains and evaluates (default: one
        for the run alone; a sweep's vectorized group passes its member's).
    :returns: a :class:`RunResult`.
    """
    started = time.perf_counter()
    run = config.run
    config_toml = config.to_toml()
    name = "-".join(getattr(run, kind).replace(":", "_") for kind in ("model", "optimizer", "loader"))
    agree_config(config)  # a job's processes were given the same configuration: checked before anything is written
    run_dir = processes.from_primary(lambda: rd.RunDir.new(out_dir, base=run.runs_dir, name=name), share=_same_run_dir)
    if compile_cache:
        enable_compile_cache(compile_cache)

    def prepare():
        loggers, storage = make_loggers(config, run_dir.path), make_checkpointer(config, run_dir)
        run_dir.write_config(config_toml)
        binding.write_bound(run_dir.path, config)  # bound from the start: a resume before the first checkpoint compares with it
        run_dir.write_components(config)
        return loggers, storage

    try:
        built = processes.together(lambda: build(config, programs))  # built and checked before anything is written
        loggers, storage = processes.from_primary(prepare) or ({}, None)  # only process 0 writes
    except BaseException:
        if processes.is_primary():
            run_dir.discard()
        raise
    return Fit(built, run_dir, storage, loggers, echo, warn or echo, progress, started=started, make=make_loop)(resume=False)


def resume(
    run_dir: str | os.PathLike,
    *,
    registry=None,
    echo: Echo = silent,
    warn: Echo | None = None,
    progress: Progress | None = None,
    compile_cache=None,
    devices: int | str | None = None,
    shard_params: bool | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    sets: Iterable[str] = (),
) -> RunResult:
    """Continue an interrupted run from its newest intact checkpoint, with its saved config.

    config.toml must match the configuration that checkpoint was trained with (its meta carries
    it; with no checkpoint, the run's config.bound.json): any other difference is refused in one
    line (:class:`~jaxyard.core.store.binding.ConfigMismatch`), before anything is built or
    written. A checkpoint saved before configurations were bound is not compared.

    :param registry: the registry the run was trained with (its plugins and components);
        default: one built from the installed plugins and the environment.
    :param devices, shard_params: a new layout to continue in (checkpoints hold host arrays:
        any layout restores them); default: the run's own. For this resume only.
    :param epochs, steps, sets: deliberate changes: ``run.epochs``, ``run.steps`` and ``--set``'s
        ``KIND.KEY=VALUE`` strings, applied over config.toml (the user's explicit word, like
        ``run``'s). Each key changed is printed ("Changed on resume: run.epochs 4 -> 20"),
        appended to the run's changes.jsonl, written to its config.toml and carried by the
        checkpoints saved after. A longer run continues from the checkpoint with its schedule
        spanning the new length; a shorter one than the checkpoint's, or another
        ``run.checkpointer``, is refused (a UsageError).
    """
    started = time.perf_counter()
    warn = warn or echo
    sets, options = tuple(sets), {"epochs": epochs, "steps": steps}

    def resolve() -> tuple[RunConfig, RunConfig]:
        config = load_run_config(run_dir, registry, sets=sets, options=options)
        resuming.keep_checkpointer(config, Path(run_dir), sets, options, registry)  # before a checkpointer is made to read its checkpoints
        layout = _in_layout(config, devices, shard_params)
        run = layout.run  # its devices checked before anything is read or written, the error naming resume's options
        make_layout(run.devices, run.shard_params, run.batch_size, unshard="--no-shard-params (this resume only)")
        return config, layout

    config, layout = processes.together(resolve)  # config: as config.toml will hold it; layout: as this session trains
    agree_config(layout)
    if compile_cache:
        enable_compile_cache(compile_cache)
    directory = rd.RunDir(run_dir)
    processes.from_primary(directory.lock)  # before anything is written: a second writer is refused, naming this one
    storage = None
    try:
        storage = processes.from_primary(lambda: make_checkpointer(layout, directory))
        notes: list[str] = []  # "no checkpoint to resume from": said once config.toml is known to be the run's
        restored = layout.checkpointer.call("loading a checkpoint", lambda: read_latest(storage, directory, layout.checkpointer.name,
                                                                                         notes.append))
        # the deliberate changes, or a mismatch (on every process)
        changes = processes.from_primary(lambda: resuming.bind_changes(config, restored, directory.path, sets, options, registry))
        for note in notes:
            warn(note)
        built = processes.together(lambda: build(layout))
        if restored is not None:  # its structure checked before anything is written
            resuming.refuse_shorter(built, restored, options, sets)
            processes.from_primary(lambda: resuming.refuse_moved(built, restored, changes))  # the changes are process 0's
            processes.together(lambda: place_restored(built, restored))
        loggers = processes.from_primary(lambda: make_loggers(layout, directory.path)) or {}
        given = bool(sets) or any(v is not None for v in options.values())
        processes.from_primary(lambda: resuming.commit_changes(directory, config, restored, changes, given=given, echo=echo, registry=registry))
    except BaseException:
        with suppress(Exception):  # the error on its way out is the one to report
            if storage is not None:
                storage.close()
        directory.unlock()
        raise
    return Fit(built, directory, storage, loggers, echo, warn, progress, started=started)(resume=True, restored=restored)


def agree_config(config: RunConfig) -> None:
    """A job's processes hold the same resolved configuration (its digest compared); else one line
    on every process naming the keys that differ (nothing built, nothing written). One process: nothing."""
    if processes.count() == 1:
        return
    processes.agree("configuration", binding.flatten(binding.canonical(config.to_dict())),
                    fix="give every process the same options, --set values and files")


def evaluate(
    run_dir: str | os.PathLike, *, checkpoint: str = "latest", weights: str = "model", registry=None, echo: Echo = silent
) -> Evaluation:
    """Evaluate a saved checkpoint on the test split, without training or writing anything.

    :param checkpoint: ``latest`` (the newest intact step), ``best`` (the intact step whose epoch
        is best by the run's ``monitor``) or a step number.
    :param weights: ``model`` (the trained weights) or ``ema`` (their moving average, for a run
        with ``run.ema_decay``).
    """
    built, restored = read_checkpoint(run_dir, checkpoint=checkpoint, weights=weights, registry=registry, echo=echo)
    metrics = summarize(built, make_loop(built).evaluate("test", ema=weights == "ema"))
    epoch = restored.meta.get("epoch")
    what = " (averaged weights)" if weights == "ema" else ""
    echo(f"Evaluating {run_dir} at checkpoint step {restored.step} (epoch {epoch}, {checkpoint}){what} on the test split:")
    for name, value in metrics.items():
        echo(f"  Test {metric_label(name)}: {value:.4f}")
    return Evaluation(restored.step, epoch, metrics, restored.skipped)


def read_checkpoint(
    run_dir: str | os.PathLike, *, checkpoint: str = "latest", weights: str = "model", registry=None, echo: Echo = silent
) -> tuple[Built, Restored]:
    """A run's components rebuilt on one device (whatever trained it; no logger) with a checkpoint's
    state placed in them, writing nothing: what ``evaluate``, ``export`` and ``predict`` read.
    config.toml is refused where it differs from the checkpoint's configuration; a damaged step
    passed over is said through ``echo``. ``checkpoint`` and ``weights``: as :func:`evaluate`'s."""
    which = _parse_which(checkpoint)
    if weights not in ("model", "ema"):
        raise UsageError(f"--weights {weights!r}: expected model or ema")
    config = _in_layout(load_run_config(run_dir, registry, unbuilt=("logger",)), 1, False)
    if not (Path(run_dir) / rd.CHECKPOINTS).is_dir():  # opening a checkpointer could create it: a reader writes nothing
        raise CheckpointError("no checkpoints saved yet", directory=Path(run_dir) / rd.CHECKPOINTS)
    if weights == "ema" and not config.run.ema_decay:
        raise UsageError(f"--weights ema: {run_dir} kept no average of its weights (run.ema_decay = 0)")
    built = build(config)
    storage = make_checkpointer(config, rd.RunDir(run_dir))
    policy = CheckpointPolicy(storage, monitor=monitor_of(config, built.task))
    try:
        restored = config.checkpointer.call("loading a checkpoint", lambda: policy.restore(which))  # host arrays: any layout restores them
    finally:
        with suppress(Exception):  # only reads were made: nothing pending to lose
            storage.close()
    resuming.check_binding(config, restored, Path(run_dir))
    place_restored(built, restored)
    for step, cause in restored.skipped:
        echo(f"Skipped damaged checkpoint step {step}: {cause}")
    return built, restored


def _in_layout(config: RunConfig, devices, shard_params) -> RunConfig:
    """``config`` on other devices (None: as it was)."""
    from jaxyard.core.registry import params as P
    from jaxyard.core.registry.run_settings import RunSettings

    values = {k: v for k, v in (("devices", devices), ("shard_params", shard_params)) if v is not None}
    if not values:
        return config
    run = P.build(RunSettings, {**P.to_plain(config.run), **values}, where="run")
    return attrs.evolve(config, run=run)


def make_checkpointer(config: RunConfig, run_dir: rd.RunDir):
    """The run's checkpointer, checked against the storage contract before anything trains."""
    storage = config.checkpointer.create(directory=inside(run_dir.path, rd.CHECKPOINTS))  # not a link leading out of the run
    missing = missing_methods(storage)
    if missing:
        raise PluginError(
            f"checkpointer {config.checkpointer.name!r} (plugin {config.checkpointer.entry.plugin}) returned "
            f"{type(storage).__name__}, which lacks {', '.join(missing)} (see jaxyard.Checkpointer)"
        )
    return storage


def make_loggers(config: RunConfig, directory: Path) -> dict[str, Any]:
    """The run's loggers by name, each checked against the Logger contract."""
    out = {}
    for choice in config.loggers:
        logger = choice.create(directory=Path(directory))
        missing = [m for m in LOGGER_METHODS if not callable(getattr(logger, m, None))]
        if missing:
            raise PluginError(
                f"logger {choice.name!r} (plugin {choice.entry.plugin}) returned {type(logger).__name__}, "
                f"which lacks {', '.join(missing)} (see jaxyard.Logger)"
            )
        out[choice.name] = logger
    return out


def _parse_which(which: str | int) -> str | int:
    if isinstance(which, int) and not isinstance(which, bool):
        return which
    text = str(which).strip()
    if text in ("latest", "best"):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise UsageError(f"--checkpoint {which!r}: expected latest, best or a step number")


def _same_run_dir(run_dir: rd.RunDir | None) -> rd.RunDir:
    """Process 0's run directory, on every process (the others only read and name it)."""
    path = processes.broadcast_json(str(run_dir.path) if run_dir is not None else None)
    return run_dir if run_dir is not None else rd.RunDir(path)
