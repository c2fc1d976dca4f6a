"""One run's training, from its built state to its summary: :class:`Fit`, one method per phase.

:func:`jaxyard.core.train.engine.train` and ``resume`` build a run and hand it to :class:`Fit`,
which restores a checkpoint (resuming), trains and validates epoch by epoch, saves checkpoints
when a plugin asks, evaluates the test split and writes summary.json, telling the plugins at each
step (:mod:`jaxyard.core.train.events`).

In a job of several processes (:mod:`jaxyard.core.scale.processes`) every process runs the same
phases in the same order: the compiled epochs and evaluations are programs over the job's devices,
which every process runs alike. Process 0 alone reports, writes and saves; what it decides reaches
the others at the *collective points*, each a method of its own below, that every process calls at
the same moment of the run (one that skips one leaves the others waiting):

- :func:`read_latest` (called by ``resume`` before the run is built): process 0 reads the newest
  intact checkpoint; every process receives it, and :meth:`Fit.restore` puts it into the run.
- :meth:`Fit.save_checkpoint` (``Run.save_checkpoint``): every process gathers the state; process 0 saves.
- :meth:`Fit.agree_stop`: process 0's stop request, at the end of each epoch, is the job's.
- :meth:`Fit.finish_saving`: process 0 waits for its saves to be durable.
- :meth:`Fit.write_summary`: process 0 writes summary.json.

Each is an agreement as well: an error on process 0 is raised on every process, with the same line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import jax
import optax

from jaxyard.core.errors import JaxyardError, PluginError, TrainingError, UsageError, one_line
from jaxyard.core.registry.config import RunConfig
from jaxyard.core.scale import processes
from jaxyard.core.store import rundir as rd
from jaxyard.core.store import state as st
from jaxyard.core.store.binding import binding_meta
from jaxyard.core.store.checkpoint import CheckpointError, Restored
from jaxyard.core.store.policy import CheckpointPolicy, Monitor
from jaxyard.core.train.build import Built
from jaxyard.core.train.data import Dataset
from jaxyard.core.train.events import Echo, Run, RunResult, describe_params, emit, emit_failed, silent
from jaxyard.core.train.loggers import LoggerHub
from jaxyard.core.train.loop import Progress, make_loop, summarize

__all__ = ["Fit", "describe_components", "monitor_of", "place_restored", "read_latest"]


class Fit:
    """The phases of one run's training, in the order :meth:`__call__` runs them.

    :param built: the run's components, built and checked (:func:`jaxyard.core.train.build.build`).
    :param run_dir: its directory, locked by this process (unlocked when the run ends).
    :param storage: its checkpointer; None on the other processes of a job (process 0 saves).
    :param loggers: its loggers by name ({} on the other processes of a job).
    :param echo, warn: the report and the warnings (silent on the other processes of a job).
    :param progress: a progress-bar factory for streamed epochs (None: no bar).
    :param started: ``time.perf_counter()`` when the run was asked for (its total time).
    :param make: ``make(built)`` -> the loop that trains and evaluates (default: one for the run alone).
    """

    def __init__(
        self,
        built: Built,
        run_dir: rd.RunDir,
        storage,
        loggers: dict[str, Any],
        echo: Echo,
        warn: Echo,
        progress: Progress | None,
        *,
        started: float,
        make: Callable[[Built], Any] | None = None,
    ):
        config, settings = built.config, built.config.run
        self.built, self.run_dir, self.config, self.settings, self.started = built, run_dir, config, settings, started
        self.pm = _plugins(config)
        self.binding = binding_meta(config)  # every checkpoint carries the configuration it was trained with
        if not processes.is_primary():  # process 0 reports for the job
            echo = warn = silent
            progress = None
        self.progress = progress
        self.policy = None if storage is None else CheckpointPolicy(  # None on the other processes of a job: process 0 saves
            storage, monitor=monitor_of(config, built.task), keep_latest=settings.keep_latest, keep_best=settings.keep_best, warn=warn
        )
        self.run = Run(
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
            saver=self.save_checkpoint,
            metrics=dict(built.task.metrics),
            task_name=config.task.name,
            rounds=built.rounds,
        )
        self.loop = (make or make_loop)(built)
        self.hub = LoggerHub(loggers, warn, self.run)

    def __call__(self, *, resume: bool, restored: Restored | None = None) -> RunResult:
        """Run every phase: restore (``resume``: ``restored``, from :func:`read_latest`, already
        placed in the built state; None: start again), the epochs, the test split, the summary.
        The run's loggers are plugins while it lasts; its directory is unlocked when it ends."""
        pm, run = self.pm, self.run
        pm.register(self.hub, name=f"jaxyard.loggers.{id(self.hub)}")
        try:
            if resume and restored is not None:
                self.restore(restored)
            emit(pm, "jaxyard_on_run_start", run=run)
            train_seconds = self.train()
            self.finish_saving()
            result = self.summarise(train_seconds)
            emit(pm, "jaxyard_on_run_end", run=run, result=result)
        except BaseException as err:
            reported = self.fail(err)
            if reported is not err:
                raise reported from err
            raise
        finally:
            pm.unregister(self.hub)
            close = getattr(self.loop, "close", None)  # a streamed run's training stream (a grain iterator's workers)
            if callable(close):
                with suppress(Exception):
                    close()
            self.run_dir.unlock()
        return result

    # -- restoring ---------------------------------------------------------------------------

    def restore(self, restored: Restored) -> None:
        """Put a checkpoint's history into the run, which continues after it (its state is in
        ``built`` already: :func:`place_restored`)."""
        run = self.run
        run.history = list(restored.meta["history"])
        run.start_epoch = restored.meta["epoch"]
        run.restored_step = run.last_checkpoint = restored.step
        run.skipped_checkpoints = restored.skipped
        if self.policy is not None:
            self.policy.records = {int(r["step"]): r for r in run.history}
        if "stream" in restored.meta:  # a stepped streamed run, checkpointed mid-epoch: its stream goes on from the next batch
            self.loop.restore_position(restored.meta["stream"])  # type: ignore[union-attr]  # a StreamingLoop's
        elif self.built.stepped and not isinstance(self.built.data, Dataset):
            raise UsageError(f"checkpoint step {restored.step} holds no position in loader {self.config.loader.name!r}'s stream "
                             f"(saved by a run in whole epochs); resume it with run.epochs, without run.steps / run.eval_every")

    # -- the epochs ----------------------------------------------------------------------------

    def train(self) -> float:
        """The epochs left to train, each told to the plugins, until the last or a stop the job
        agrees on; returns the seconds they took."""
        run = self.run
        t_train = time.perf_counter()
        rounds = self.built.rounds  # epochs, or rounds of run.eval_every steps
        first = rounds + 1 if run.stop_reason else run.start_epoch + 1  # a resumed run that had already stopped
        for epoch in range(first, rounds + 1):
            record = self.epoch(epoch)
            run.history.append(record)
            emit(self.pm, "jaxyard_on_epoch_end", run=run, record=record)
            if self.agree_stop():
                break
        return time.perf_counter() - t_train

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch and validate (the averaged weights too, with ``run.ema_decay``); returns its record."""
        loop, settings, built = self.loop, self.settings, self.built
        t0 = time.perf_counter()
        train_sums = loop.train_epoch(epoch, self.progress)
        ta = time.perf_counter()
        val_sums = loop.evaluate("val")  # queued behind the epoch: its dispatch (the first: its compile) while the epoch computes
        dispatch = time.perf_counter() - ta
        train = summarize(built, train_sums)
        t1 = time.perf_counter() - dispatch  # the validation's dispatch is its own time, not training's
        val = summarize(built, val_sums)
        t2 = time.perf_counter()
        self.run.compile_seconds = loop.compile_seconds
        updates = built.round_ends[epoch] // settings.accumulate_steps  # optimizer updates, not accumulated batches
        record: dict[str, Any] = {"epoch": epoch, "step": updates, "lr": float(built.epoch_lr[epoch])}
        record.update({f"train_{name}": value for name, value in train.items()})
        record.update({f"val_{name}": value for name, value in val.items()})
        record.update(train_time=round(t1 - t0, 6), val_time=round(t2 - t1, 6))
        if settings.ema_decay:
            record.update({f"val_{name}_ema": value for name, value in summarize(built, loop.evaluate("val", ema=True)).items()})
        return record

    def agree_stop(self) -> bool:
        """Whether the run stops after this epoch.

        Collective point: process 0's stop reason (None: go on) becomes every process's."""
        self.run.stop_reason = processes.broadcast_json(self.run.stop_reason)
        return bool(self.run.stop_reason)

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> int:
        """Save the state as it is at the end of the last epoch (``Run.save_checkpoint``, which a
        plugin calls; once a step); returns the step.

        Collective point: every process gathers the state (it may be sharded over the job), then
        process 0 saves it; its failure is every process's."""
        run, config = self.run, self.config
        record = run.history[-1]
        step = record["step"]
        if run.last_checkpoint != step:
            meta = {"epoch": record["epoch"], "step": step, "metrics": record, "history": run.history, **self.binding}
            position = getattr(self.loop, "position", lambda: None)()  # a stepped streamed run's place in its stream
            if position is not None:
                meta["stream"] = position
            checkpointer = config.checkpointer

            def failed(err: Exception) -> PluginError:  # the checkpointer's own bug, not the plugin that asked for the save
                return PluginError(
                    f"checkpointer {checkpointer.name!r} ({checkpointer.entry.origin()}) failed saving step {step}: {one_line(err)}"
                )

            try:
                arrays = st.flatten(self.built.state, keep=processes.is_primary())  # every process gathers; process 0 saves
            except Exception as err:
                raise failed(err) from err

            def save():
                try:
                    _primary(self.policy).save(step, arrays, meta)
                except (JaxyardError, KeyboardInterrupt):
                    raise
                except Exception as err:
                    raise failed(err) from err

            processes.from_primary(save)
            run.last_checkpoint = step
            emit(self.pm, "jaxyard_on_checkpoint_saved", run=run, step=step, path=self.run_dir / rd.CHECKPOINTS, record=record)
        return step

    def finish_saving(self) -> None:
        """Wait for the checkpoints being written to be durable.

        Collective point: process 0 waits; its failure is every process's."""
        processes.from_primary(lambda: _primary(self.policy).finish())

    # -- the end -------------------------------------------------------------------------------

    def summarise(self, train_seconds: float) -> RunResult:
        """Evaluate the test split (the averaged weights too), pick the best epoch and write
        summary.json; returns the run's result."""
        run, settings, loop = self.run, self.settings, self.loop
        test = {f"test_{name}": value for name, value in summarize(self.built, loop.evaluate("test")).items()}
        timings = {"total_s": time.perf_counter() - self.started, "train_s": train_seconds, "compile_s": loop.compile_seconds}
        if settings.ema_decay:
            test.update({f"test_{name}_ema": value for name, value in summarize(self.built, loop.evaluate("test", ema=True)).items()})
        best = monitor_of(self.config, self.built.task).best(run.history)
        stopped = run.stop_reason is not None and len(run.history) < self.built.rounds
        result = RunResult(self.run_dir.path, run.history, test, stopped, timings, run.stop_reason, dict(best) if best else None)
        self.write_summary({
            "task": self.config.task.name,
            "metrics": dict(self.built.task.metrics),
            "test": test,
            "epochs_run": len(run.history),
            "stopped_early": stopped,
            "stop_reason": run.stop_reason,
            "best": {"monitor": settings.monitor, **result.best} if result.best else None,
            "timings": timings,
            "versions": _versions(),
        })
        return result

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json.

        Collective point: process 0 writes; its failure is every process's."""
        processes.from_primary(lambda: self.run_dir.write_summary(summary))

    def fail(self, err: BaseException) -> BaseException:
        """The run failed with ``err``: close the checkpointer, tell the plugins; returns the
        error to raise (an out-of-memory or a lost process as one line, else ``err``)."""
        with suppress(Exception):  # the error on its way out is the one to report
            if self.policy is not None:
                self.policy.close()
        reported = _out_of_memory(err, self.built) or processes.lost_contact(err) or err
        emit_failed(self.pm, self.run, reported)
        return reported


def describe_components(config: RunConfig) -> dict[str, str]:
    """Each chosen component with its parameters, and the loggers, as the report prints them (``Run.components``)."""
    out = {kind: f"{c.name} ({describe_params(c.params)})" for kind, c in config.choices.items()}
    out["loggers"] = ", ".join(c.name for c in config.loggers) or "none"
    return out


def monitor_of(config: RunConfig, task) -> Monitor:
    """The run's monitored metric (``run.monitor``, ``run.min_delta``): what makes an epoch best,
    in the direction its task gives it."""
    name = config.run.monitor.removesuffix("_ema").partition("_")[2]
    return Monitor(config.run.monitor, config.run.min_delta, mode=task.metrics[name])


def read_latest(storage, run_dir: rd.RunDir, checkpointer: str, warn: Echo) -> Restored | None:
    """The newest intact checkpoint of a run being resumed, on every process (None: there is none,
    and the run starts again from epoch 1; a finished run without one is refused).

    Collective point: process 0 reads it (``storage`` is None on the others) and every process
    receives it (or process 0's error)."""

    def find() -> Restored | None:
        try:
            return CheckpointPolicy(storage, monitor=Monitor()).restore("latest")  # "latest" ranks nothing
        except CheckpointError as err:
            if storage.steps():
                raise
            if (run_dir / rd.SUMMARY).exists():
                raise UsageError(
                    f"{run_dir.path} finished and has no checkpoint to resume from (checkpointer {checkpointer!r}); nothing to do"
                ) from None
            warn(f"  No checkpoint to resume from ({err}); starting again from epoch 1")
            return None

    return processes.from_primary(find, share=_share_restored)


def place_restored(built: Built, restored: Restored) -> None:
    """Put a restored checkpoint's host arrays into ``built``'s state, laid out on its devices."""
    built.state = built.layout.place_state(st.unflatten(built.state, restored.arrays, step=restored.step))


def _plugins(config: RunConfig):
    """The plugin manager that receives the run's events: its registry's (default: one built
    from the installed plugins and the environment)."""
    registry = config.registry
    if registry is None:
        from jaxyard.core.registry.loading import build_registry

        registry = build_registry()
    return registry.plugin_manager


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


def _primary(policy: CheckpointPolicy | None) -> CheckpointPolicy:
    """The run's checkpoint policy, which process 0 of a job (or a process alone) has."""
    assert policy is not None, "only process 0 of a job saves and restores checkpoints"
    return policy


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


def _versions() -> dict[str, str]:
    """What produced the numbers: bit-identical results need the same libraries and backend."""
    import flax
    import jaxlib

    return {
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__, "backend": jax.default_backend()
    }
