"""The run as plugins see it, what a run returns, and how events reach the plugins.

Events are the ``jaxyard_on_*`` hooks of :mod:`jaxyard.core.registry.hookspecs`. They are called through
pluggy on the host, between compiled epochs. An exception from a plugin becomes one
:class:`PluginError` naming the plugin and the event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pluggy

from jaxyard.core.errors import JaxyardError, PluginError

Echo = Callable[[str], None]


def silent(_: str) -> None:
    """The default echo and warn of the library: it prints nothing unless asked."""
    pass


@attrs.frozen
class RunResult:
    """What a finished run returns (and ``jaxyard_on_run_end`` receives)."""

    run_dir: Path
    history: list[dict]
    test: dict[str, float]
    stopped_early: bool
    timings: dict[str, float | None]
    stop_reason: str | None = None
    best: dict | None = None  # the best epoch's record by run.monitor


@attrs.define(eq=False)
class Run:
    """One training run, as the event hooks receive it.

    Read-only for plugins except :meth:`stop`. ``history`` holds every epoch's record so far
    (restored ones first when resuming); ``start_epoch`` is the number of epochs already done.
    """

    config: Any  # RunConfig
    directory: Path
    components: dict[str, str]
    sizes: Mapping[str, int | None]
    num_params: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    history: list[dict] = attrs.field(factory=list)
    start_epoch: int = 0
    restored_step: int | None = None
    skipped_checkpoints: tuple[tuple[int, str], ...] = ()
    echo: Echo = silent
    warn: Echo = silent
    started: float = 0.0  # time.perf_counter() when train()/resume() was called
    process_index: int = 0
    devices: str = "1 device"  # where it trains: the layout (core/scale/layout.py) in words
    interactive: bool = False  # the report goes to a terminal (progress bars welcome)
    streamed: bool = False  # batches come from Python (the loop shows a bar per batch itself)
    stop_reason: str | None = None
    last_checkpoint: int | None = None
    compile_seconds: float | None = None
    #: the task's metrics in report order, each with its direction ("min"/"max"): a record holds
    #: ``train_NAME`` and ``val_NAME`` (``val_NAME_ema`` with run.ema_decay) for each NAME
    metrics: dict[str, str] = attrs.field(factory=lambda: {"loss": "min", "acc": "max"})
    task_name: str = "classification"
    #: rounds of training, each ending in validation and an ``on_epoch_end`` event: ``run.epochs``, or
    #: with ``run.steps`` / ``run.eval_every`` the evaluations (None: ``run.epochs``)
    rounds: int | None = None
    _saver: Callable[[], int] | None = attrs.field(default=None, alias="saver", repr=False)

    @property
    def epochs(self) -> int:
        """The rounds the run trains (each an ``on_epoch_end``): its epochs, or with ``run.steps`` or
        ``run.eval_every`` its evaluations; a record's ``epoch`` counts them, its ``step`` the batches."""
        return self.rounds if self.rounds is not None else self.config.run.epochs

    @property
    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def is_main_process(self) -> bool:
        """True in process 0 of a job of several processes (and in a run of one). Every process
        receives every event; a plugin that writes files or calls an outside service does it here
        only. ``echo`` and ``warn`` are silent in the other processes."""
        return self.process_index == 0

    def stop(self, reason: str) -> None:
        """Ask the run to end after the current epoch (its checkpoint is saved, the test split evaluated).

        In a job of several processes, ask on every process (decide from the record, which is the
        same everywhere); the job follows process 0's request."""
        if self.stop_reason is None:
            self.stop_reason = str(reason)

    def save_checkpoint(self) -> int:
        """Checkpoint the state as it is now (the end of the last epoch); returns the step.

        Retention and ``jaxyard_on_checkpoint_saved`` follow. The checkpoint plugin calls this
        every ``run.save_every`` epochs, at the last epoch and when the run is stopping.

        In a job of several processes every process must call it at the same point (decide from
        the record, which is the same everywhere, not from ``is_main_process``): the state is
        gathered from all of them.
        """
        if self._saver is None:
            raise RuntimeError("this run cannot save checkpoints")
        return self._saver()


def emit(pm: pluggy.PluginManager, event: str, **kwargs: Any) -> list[Any]:
    """Call ``event`` on every plugin; a plugin's exception becomes a PluginError naming it.

    JaxyardErrors (a diverged loss, a failed checkpoint save) pass through unchanged: their
    message already says what happened.
    """
    hook = getattr(pm.hook, event)
    try:
        return hook(**kwargs)
    except JaxyardError:
        raise
    except Exception as err:
        plugin = culprit(hook, err) or "a plugin"
        text = " ".join(str(err).split()) or "(no message)"
        raise PluginError(f"plugin {plugin} failed in {event}: {type(err).__name__}: {text}") from err


def emit_failed(pm: pluggy.PluginManager, run: Run, error: BaseException) -> None:
    """``jaxyard_on_run_failed`` on each plugin in turn; one that raises is reported and skipped."""
    name = "jaxyard_on_run_failed"
    hook = getattr(pm.hook, name)
    for impl in reversed(hook.get_hookimpls()):  # pluggy's own calling order
        others = [i.plugin for i in hook.get_hookimpls() if i is not impl]
        try:
            pm.subset_hook_caller(name, remove_plugins=others)(run=run, error=error)
        except Exception as err:
            text = " ".join(str(err).split()) or "(no message)"
            run.warn(f"Warning: plugin {impl.plugin_name} failed in {name}: {type(err).__name__}: {text}")


def culprit(hook, err: BaseException) -> str | None:
    """The plugin whose implementation of ``hook`` raised ``err``: the innermost one on the
    traceback (a wrapper that the error passed through on its way out sits further out)."""
    codes = {}
    for impl in hook.get_hookimpls():
        code = getattr(getattr(impl.function, "__func__", impl.function), "__code__", None)
        if code is not None:
            codes[code] = impl.plugin_name
    found, tb = None, err.__traceback__
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found


def describe_params(params: Any) -> str:
    """``b1=0.9, b2=0.999`` for an attrs parameter instance."""
    values = attrs.asdict(params, recurse=False)
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "no parameters"


__all__ = ["Run", "RunResult", "emit", "emit_failed", "culprit", "describe_params"]
