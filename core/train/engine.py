"""Orchestration: ``train(config)``, ``resume(run_dir)`` and ``evaluate(run_dir)``.

A run is: build the components (:mod:`jaxyard.core.train.build`), run epochs (:mod:`jaxyard.core.train.loop`),
and tell the plugins (:mod:`jaxyard.core.train.events`). Everything around the step is a plugin on
those events: the printed report, the loggers (metrics.jsonl is one), the NaN guard, early
stopping, checkpoint cadence and the curves PNG. The library prints nothing unless given ``echo``.

In a job of several processes (:mod:`jaxyard.core.scale.processes`) every process trains and receives
every event; process 0 alone writes the run directory, prints, logs and saves checkpoints, and
tells the others what it decided (the directory, the checkpoint restored, an error).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import attrs
import jax
import optax

from jaxyard.core.errors import JaxyardError, PluginError, TrainingError, UsageError, one_line
from jaxyard.core.registry.config import RunConfig
from jaxyard.core.scale import processes
from jaxyard.core.store import rundir as rd
from jaxyard.core.store import state as st
from jaxyard.core.store.checkpoint import CheckpointError, Restored, missing_methods
from jaxyard.core.store.policy import CheckpointPolicy, Monitor
from jaxyard.core.train.build import Built, build, enable_compile_cache
from jaxyard.core.train.data import Dataset
from jaxyard.core.train.events import Echo, Run, RunResult, describe_params, emit, emit_failed, silent
from jaxyard.core.train.loggers import LOGGER_METHODS, LoggerHub
from jaxyard.core.train.loop import Progress, make_loop, means
from jaxyard.core.train.traced import Programs

__all__ = ["Evaluation", "RunResult", "evaluate", "resume", "train"]


@attrs.frozen
class Evaluation:
    """What :func:`evaluate` returns: the checkpoint evaluated and its test metrics."""

    step: int
    epoch: int | None
    test_loss: float
    test_acc: float
    skipped: tuple[tuple[int, str], ...] = ()


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
    run_dir = processes.from_primary(lambda: rd.RunDir.new(out_dir, base=run.runs_dir, name=name), share=_same_run_dir)
    if compile_cache:
        enable_compile_cache(compile_cache)

    def prepare():
        loggers, storage = make_loggers(config, run_dir.path), make_checkpointer(config, run_dir)
        run_dir.write_config(config_toml)
        rd.write_atomic(run_dir / rd.COMPONENTS, _json(component_sources(config)))
        return loggers, storage

    try:
        built = processes.together(lambda: build(config, programs))  # built and checked before anything is written
        loggers, storage = processes.from_primary(prepare) or ({}, None)  # only process 0 writes
    except BaseException:
        if processes.is_primary():
            run_dir.discard()
        raise
    return _fit(built, run_dir, storage, loggers, echo, warn or echo, progress, resume=False, started=started, make=make_loop)


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
) -> RunResult:
    """Continue an interrupted run from its newest intact checkpoint, with its saved config.

    :param registry: the registry the run was trained with (its plugins and components);
        default: one built from the installed plugins and the environment.
    :param devices, shard_params: a new layout to continue in (checkpoints hold host arrays:
        any layout restores them); default: the run's own.
    """
    started = time.perf_counter()
    config = processes.together(lambda: _in_layout(load_run_config(run_dir, registry), devices, shard_params))
    if compile_cache:
        enable_compile_cache(compile_cache)
    directory = rd.RunDir(run_dir)
    processes.from_primary(directory.lock)  # before anything is written: a second writer is refused, naming this one
    try:
        built = processes.together(lambda: build(config))
        loggers, storage = processes.from_primary(lambda: (make_loggers(config, directory.path), make_checkpointer(config, directory))) or ({}, None)
    except BaseException:
        directory.unlock()
        raise
    return _fit(built, directory, storage, loggers, echo, warn or echo, progress, resume=True, started=started)


def evaluate(
    run_dir: str | os.PathLike, *, checkpoint: str = "latest", weights: str = "model", registry=None, echo: Echo = silent
) -> Evaluation:
    """Evaluate a saved checkpoint on the test split, without training or writing anything.

    :param checkpoint: ``latest`` (the newest intact step), ``best`` (the intact step whose epoch
        is best by the run's ``monitor``) or a step number.
    :param weights: ``model`` (the trained weights) or ``ema`` (their moving average, for a run
        with ``run.ema_decay``).
    """
    which = _parse_which(checkpoint)
    if weights not in ("model", "ema"):
        raise UsageError(f"--weights {weights!r}: expected model or ema")
    config = _in_layout(load_run_config(run_dir, registry), 1, False)  # one device, whatever trained it
    if not (Path(run_dir) / rd.CHECKPOINTS).is_dir():  # opening a checkpointer could create it: a reader writes nothing
        raise CheckpointError("no checkpoints saved yet", directory=Path(run_dir) / rd.CHECKPOINTS)
    built = build(config)
    storage = make_checkpointer(config, rd.RunDir(run_dir))
    policy = CheckpointPolicy(storage, monitor=_monitor(config))
    try:
        restored = _restore(policy, built, which)
    finally:
        with suppress(Exception):  # only reads were made: nothing pending to lose
            storage.close()
    for step, cause in restored.skipped:
        echo(f"Skipped damaged checkpoint step {step}: {cause}")
    if weights == "ema" and not config.run.ema_decay:
        raise UsageError(f"--weights ema: {run_dir} kept no average of its weights (run.ema_decay = 0)")
    loss, acc = means(jax.device_get(make_loop(built).evaluate("test", ema=weights == "ema")))
    epoch = restored.meta.get("epoch")
    what = " (averaged weights)" if weights == "ema" else ""
    echo(f"Evaluating {run_dir} at checkpoint step {restored.step} (epoch {epoch}, {checkpoint}){what} on the test split:")
    echo(f"  Test Loss: {loss:.4f}")
    echo(f"  Test Accuracy: {acc:.4f}")
    return Evaluation(restored.step, epoch, loss, acc, restored.skipped)


def _in_layout(config: RunConfig, devices, shard_params) -> RunConfig:
    """``config`` on other devices (None: as it was)."""
    from jaxyard.core.registry import params as P
    from jaxyard.core.registry.run_settings import RunSettings

    values = {k: v for k, v in (("devices", devices), ("shard_params", shard_params)) if v is not None}
    if not values:
        return config
    run = P.build(RunSettings, {**P.to_plain(config.run), **values}, where="run")
    return attrs.evolve(config, run=run)


def load_run_config(run_dir: str | os.PathLike, registry=None) -> RunConfig:
    """The resolved configuration a run directory was trained with."""
    from jaxyard.core.registry.config import resolve_config
    from jaxyard.core.registry.loading import build_registry
    from jaxyard.core.registry.settings import Settings

    path = Path(run_dir) / rd.CONFIG
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a jaxyard run directory (no {rd.CONFIG})")
    registry = registry or build_registry()
    _check_sources(Path(run_dir), registry)
    return resolve_config(registry, Settings(), config_file=str(path))


def component_sources(config: RunConfig) -> dict[str, Any]:
    """Where each component of a run comes from (components.json)."""

    def source(choice) -> dict[str, Any]:
        e = choice.entry
        module = str(Path(e.module).resolve()) if e.source == "local" and e.module.endswith(".py") else e.module
        return {"name": e.name, "qualified": e.qualified, "plugin": e.plugin, "source": e.source, "module": module,
                "distribution": e.distribution, "version": e.version}

    out: dict[str, Any] = {kind: source(choice) for kind, choice in config.choices.items()}
    out["loggers"] = [source(choice) for choice in config.loggers]
    return out


def _check_sources(run_dir: Path, registry) -> None:
    """A component the run was trained with that is not loaded now: say exactly what to load."""
    try:
        recorded = json.loads((run_dir / rd.COMPONENTS).read_text())
    except (OSError, ValueError):
        return  # a run from an earlier version: resolving names what is unknown
    items = [(kind, recorded[kind]) for kind in recorded if kind != "loggers"]
    items += [("logger", item) for item in recorded.get("loggers", [])]
    for kind, item in items:
        if not isinstance(item, dict):
            continue
        try:
            registry.get(kind, item.get("qualified") or item.get("name"))
            continue
        except UsageError:
            pass
        if item.get("source") == "local":
            fix = f"add --plugin {item.get('module')}"
        elif item.get("distribution"):
            fix = f"install it (pip install {item['distribution']}=={item.get('version')}) or enable its plugin {item.get('plugin')!r}"
        else:
            fix = f"enable its plugin {item.get('plugin')!r}"
        raise UsageError(f"{run_dir} was trained with {kind} {item.get('name')!r} from plugin {item.get('plugin')}, which is not loaded: {fix}")


def make_checkpointer(config: RunConfig, run_dir: rd.RunDir):
    """The run's checkpointer, checked against the storage contract before anything trains."""
    storage = config.checkpointer.create(directory=run_dir / rd.CHECKPOINTS)
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


def describe_components(config: RunConfig) -> dict[str, str]:
    out = {kind: f"{c.name} ({describe_params(c.params)})" for kind, c in config.choices.items()}
    out["loggers"] = ", ".join(c.name for c in config.loggers) or "none"
    return out


def _monitor(config: RunConfig) -> Monitor:
    return Monitor(config.run.monitor, config.run.min_delta)


def _plugins(config: RunConfig):
    registry = config.registry
    if registry is None:
        from jaxyard.core.registry.loading import build_registry

        registry = build_registry()
    return registry.plugin_manager


def _parse_which(which: str | int) -> str | int:
    if isinstance(which, int) and not isinstance(which, bool):
        return which
    text = str(which).strip()
    if text in ("latest", "best"):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    raise UsageError(f"--checkpoint {which!r}: expected latest, best or a step number")


def _restore(policy: CheckpointPolicy, built: Built, which: str | int):
    restored = policy.restore(which)  # host arrays: any layout restores them
    _place(built, restored)
    return restored


def _place(built: Built, restored) -> None:
    built.state = built.layout.place_state(st.unflatten(built.state, restored.arrays, step=restored.step))


def _same_run_dir(run_dir: rd.RunDir | None) -> rd.RunDir:
    """Process 0's run directory, on every process (the others only read and name it)."""
    path = processes.broadcast_json(str(run_dir.path) if run_dir is not None else None)
    return run_dir if run_dir is not None else rd.RunDir(path)


def _share_restored(restored: Restored | None) -> Restored | None:
    """What process 0 restored (None: nothing to restore), on every process."""
    head = processes.broadcast_json(None if restored is None else {
        "step": restored.step, "meta": restored.meta, "skipped": [list(s) for s in restored.skipped],
        "structure": {k: [list(a.shape), a.dtype.name] for k, a in restored.arrays.items()},
    })
    if head is None:
        return None
    arrays = processes.broadcast_arrays(restored.arrays if restored is not None else None, head["structure"])
    return Restored(head["step"], arrays, head["meta"], tuple((int(s), str(c)) for s, c in head["skipped"]))


def _fit(
    built: Built,
    run_dir: rd.RunDir,
    storage,
    loggers: dict[str, Any],
    echo: Echo,
    warn: Echo,
    progress: Progress | None,
    *,
    resume: bool,
    started: float,
    make: Callable[[Built], Any] | None = None,
) -> RunResult:
    config, settings = built.config, built.config.run
    pm = _plugins(config)
    if not processes.is_primary():  # process 0 reports for the job
        echo = warn = silent
        progress = None
    policy = None if storage is None else CheckpointPolicy(  # None on the other processes of a job: process 0 saves
        storage, monitor=_monitor(config), keep_latest=settings.keep_latest, keep_best=settings.keep_best, warn=warn
    )
    run = Run(
        config,
        run_dir.path,
        components=describe_components(config),
        sizes=built.sizes,
        num_params=built.num_params,
        steps_per_epoch=built.steps_per_epoch,
        total_steps=built.total_steps,
        warmup_steps=built.warmup_steps,
        echo=echo,
        warn=warn,
        started=started,
        interactive=progress is not None,
        streamed=not isinstance(built.data, Dataset),
        devices=built.layout.describe(),
        process_index=processes.index(),
    )
    loop = (make or make_loop)(built)

    def save_checkpoint() -> int:
        record = run.history[-1]
        step = record["step"]
        if run.last_checkpoint != step:
            meta = {"epoch": record["epoch"], "step": step, "metrics": record, "history": run.history}
            checkpointer = config.checkpointer

            def failed(err: Exception) -> PluginError:  # the checkpointer's own bug, not the plugin that asked for the save
                return PluginError(
                    f"checkpointer {checkpointer.name!r} ({checkpointer.entry.origin()}) failed saving step {step}: {one_line(err)}"
                )

            try:
                arrays = st.flatten(built.state, keep=processes.is_primary())  # every process gathers; process 0 saves
            except Exception as err:
                raise failed(err) from err

            def save():
                try:
                    _primary(policy).save(step, arrays, meta)
                except (JaxyardError, KeyboardInterrupt):
                    raise
                except Exception as err:
                    raise failed(err) from err

            processes.from_primary(save)
            run.last_checkpoint = step
            emit(pm, "jaxyard_on_checkpoint_saved", run=run, step=step, path=run_dir / rd.CHECKPOINTS, record=record)
        return step

    run._saver = save_checkpoint
    hub = LoggerHub(loggers, warn, run)
    pm.register(hub, name=f"jaxyard.loggers.{id(hub)}")
    try:
        if resume:
            _resume_state(run, policy, built)
        emit(pm, "jaxyard_on_run_start", run=run)
        t_train = time.perf_counter()
        first = settings.epochs + 1 if run.stop_reason else run.start_epoch + 1  # a resumed run that had already stopped
        for epoch in range(first, settings.epochs + 1):
            t0 = time.perf_counter()
            train_sums = jax.device_get(loop.train_epoch(epoch, progress))
            t1 = time.perf_counter()
            val_sums = jax.device_get(loop.evaluate("val"))
            t2 = time.perf_counter()
            (train_loss, train_acc), (val_loss, val_acc) = means(train_sums), means(val_sums)
            if settings.ema_decay:
                ema_loss, ema_acc = means(jax.device_get(loop.evaluate("val", ema=True)))
            run.compile_seconds = loop.compile_seconds
            record = {
                "epoch": epoch,
                "step": epoch * built.steps_per_epoch,
                "lr": float(built.epoch_lr[epoch]),
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "train_time": round(t1 - t0, 6),
                "val_time": round(t2 - t1, 6),
            }
            if settings.ema_decay:
                record.update(val_loss_ema=ema_loss, val_acc_ema=ema_acc)
            run.history.append(record)
            emit(pm, "jaxyard_on_epoch_end", run=run, record=record)
            run.stop_reason = processes.broadcast_json(run.stop_reason)  # process 0's decision is the job's
            if run.stop_reason:
                break
        train_seconds = time.perf_counter() - t_train
        processes.from_primary(lambda: _primary(policy).finish())

        test_loss, test_acc = means(jax.device_get(loop.evaluate("test")))
        timings = {"total_s": time.perf_counter() - started, "train_s": train_seconds, "compile_s": loop.compile_seconds}
        test = {"test_loss": test_loss, "test_acc": test_acc}
        if settings.ema_decay:
            test["test_loss_ema"], test["test_acc_ema"] = means(jax.device_get(loop.evaluate("test", ema=True)))
        best = _monitor(config).best(run.history)
        stopped = run.stop_reason is not None and len(run.history) < settings.epochs
        result = RunResult(run_dir.path, run.history, test, stopped, timings, run.stop_reason, dict(best) if best else None)
        summary = {
            "test": test,
            "epochs_run": len(run.history),
            "stopped_early": stopped,
            "stop_reason": run.stop_reason,
            "best": {"monitor": settings.monitor, **result.best} if result.best else None,
            "timings": timings,
            "versions": _versions(),
        }
        processes.from_primary(lambda: rd.write_atomic(run_dir / rd.SUMMARY, _json(summary)))
        emit(pm, "jaxyard_on_run_end", run=run, result=result)
    except BaseException as err:
        with suppress(Exception):  # the error on its way out is the one to report
            if policy is not None:
                policy.close()
        reported = _out_of_memory(err, built) or processes.lost_contact(err) or err
        emit_failed(pm, run, reported)
        if reported is not err:
            raise reported from err
        raise
    finally:
        pm.unregister(hub)
        run_dir.unlock()
    return result


def _out_of_memory(err: BaseException, built: Built) -> TrainingError | None:
    """XLA's RESOURCE_EXHAUSTED (a 60-line traceback) as one line naming what did not fit."""
    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text:
        return None
    run = built.config.run
    first = next((line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), text)[:300]
    return TrainingError(
        f"out of memory on {jax.devices()[0].platform} training model {built.config.model.name!r} "
        f"({built.num_params:,} parameters) with run.batch_size = {run.batch_size}: {first}; "
        f"lower run.batch_size or the model's sizes"
    )


def _primary(policy: CheckpointPolicy | None) -> CheckpointPolicy:
    """The run's checkpoint policy, which process 0 of a job (or a process alone) has."""
    assert policy is not None, "only process 0 of a job saves and restores checkpoints"
    return policy


def _resume_state(run: Run, policy: CheckpointPolicy | None, built: Built) -> None:
    """Put the newest intact checkpoint's state and history into ``run`` (or start over if none).
    Process 0 reads the checkpoint; the others receive it."""

    def find() -> Restored | None:
        try:
            return _primary(policy).restore("latest")
        except CheckpointError as err:
            if _primary(policy).storage.steps():
                raise
            if (run.directory / rd.SUMMARY).exists():
                raise UsageError(
                    f"{run.directory} finished and has no checkpoint to resume from "
                    f"(checkpointer {built.config.checkpointer.name!r}); nothing to do"
                ) from None
            run.warn(f"  No checkpoint to resume from ({err}); starting again from epoch 1")
            return None

    restored = processes.from_primary(find, share=_share_restored)
    if restored is None:
        return
    _place(built, restored)
    run.history = list(restored.meta["history"])
    run.start_epoch = restored.meta["epoch"]
    run.restored_step = run.last_checkpoint = restored.step
    run.skipped_checkpoints = restored.skipped
    if policy is not None:
        policy.records = {int(r["step"]): r for r in run.history}


def _versions() -> dict[str, str]:
    """What produced the numbers: bit-identical results need the same libraries and backend."""
    import flax
    import jaxlib

    return {
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__, "backend": jax.default_backend()
    }


def _json(data) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"
