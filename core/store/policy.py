"""Which step is best, which steps to keep, which to restore: decided here, for every checkpointer.

A checkpointer is storage (:class:`jaxyard.Checkpointer`: save, load, steps, delete). The run's
``monitor`` metric, through :class:`Monitor`, is the one definition of "better" used by early
stopping, checkpoint retention and ``eval --checkpoint best``. :class:`CheckpointPolicy` wraps a
checkpointer with retention (the newest ``keep_latest`` plus the best ``keep_best``) and restores
the newest or best *intact* step, passing over damaged ones.

Pure Python: no jax, numpy or orbax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from jaxyard.core.metrics import MONITORS, direction  # noqa: F401 - MONITORS: its old home (0.2's monitors)
from jaxyard.core.store.checkpoint import Checkpointer, CheckpointError, Restored


@attrs.frozen
class Monitor:
    """A metric and its direction: ``mode`` ("min" or "max") when given (the engine gives the
    task's direction for the metric: :func:`run_monitor`), else the one 0.2 declared
    (:data:`jaxyard.core.metrics.DIRECTIONS`: loss and acc); any other metric with no ``mode``
    is an error, never a guess from its name."""

    metric: str = "val_loss"
    min_delta: float = 0.0
    given_mode: str | None = attrs.field(default=None, alias="mode", validator=attrs.validators.optional(attrs.validators.in_(("min", "max"))))

    def __attrs_post_init__(self) -> None:
        if self.given_mode is None:
            direction(self.metric)  # refuse an undeclared metric now, not at the first comparison

    @property
    def mode(self) -> str:
        return self.given_mode or direction(self.metric)

    def value(self, record: Mapping[str, Any] | None) -> float | None:
        """The metric in ``record`` when it is a finite number, else None (never best)."""
        try:
            value = float(record[self.metric])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def improves(self, value: float | None, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` by more than ``min_delta`` (anything beats None)."""
        if value is None:
            return False
        if best is None:
            return True
        gain = best - value if self.mode == "min" else value - best
        return gain > self.min_delta

    def rank(self, records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Records with a finite metric, best first; on a tie the later epoch first."""
        scored = [(r, self.value(r)) for r in records]
        sign = 1.0 if self.mode == "min" else -1.0
        usable = [(sign * v, -int(r.get("step", 0)), i, r) for i, (r, v) in enumerate(scored) if v is not None]
        return [r for *_, r in sorted(usable, key=lambda t: t[:3])]

    def best(self, records: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        ranked = self.rank(records)
        return ranked[0] if ranked else None


def run_monitor(run: Any) -> Monitor:
    """A run's ``run.monitor`` and ``run.min_delta``, in the direction its task gives the metric
    (``run.metrics``; a run object without them: 0.2's directions)."""
    settings = run.config.run
    return Monitor(settings.monitor, settings.min_delta, mode=direction(settings.monitor, getattr(run, "metrics", None)))


def steps_to_keep(steps: Iterable[int], records: Mapping[int, Mapping[str, Any]], monitor: Monitor, *, keep_latest: int, keep_best: int) -> set[int]:
    """The newest ``keep_latest`` steps plus the ``keep_best`` best by ``monitor`` among the steps
    with a record; a step without one (left by an earlier session, damaged perhaps) is kept: it
    is not this run's to judge, and it must never push a good step out of the newest."""
    steps = sorted(set(steps))
    unknown = {s for s in steps if s not in records}
    known_steps = [s for s in steps if s in records]
    keep = set(known_steps[-keep_latest:]) if keep_latest > 0 else set()
    keep |= unknown
    known = [records[s] for s in known_steps]
    keep.update(int(r["step"]) for r in monitor.rank(known)[:keep_best])
    return keep


class CheckpointPolicy:
    """A checkpointer with jaxyard's retention, best-ranking and damage skipping.

    ``records`` maps each saved step to its epoch record (the metrics it is ranked by); the
    engine fills it from the run's history, so a resumed run ranks the steps it saved before.
    Retention deletes only committed steps: before each save the previous save is waited for,
    so a failed save never costs a step that was kept.
    """

    def __init__(
        self,
        storage: Checkpointer,
        *,
        monitor: Monitor,
        keep_latest: int = 3,
        keep_best: int = 1,
        on_skip: Callable[[int, str], None] | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        # keep_latest >= 1: retention must never delete the newest step (finish() prunes after it is committed)
        if isinstance(keep_latest, bool) or not isinstance(keep_latest, int) or keep_latest < 1:
            raise ValueError(f"keep_latest must be an integer >= 1, got {keep_latest!r}")
        if isinstance(keep_best, bool) or not isinstance(keep_best, int) or keep_best < 0:
            raise ValueError(f"keep_best must be an integer >= 0, got {keep_best!r}")
        self.storage = storage
        self.monitor = monitor
        self.keep_latest = keep_latest
        self.keep_best = keep_best
        self.records: dict[int, Mapping[str, Any]] = {}
        self.on_skip = on_skip
        self.warn = warn or (lambda _: None)

    # --- writing -----------------------------------------------------------------------------

    def save(self, step: int, arrays: dict, meta: dict) -> None:
        """Wait for the previous save, apply retention to what is committed, then save ``step``."""
        self.storage.wait()
        self.prune()
        self.storage.save(step, arrays, meta)
        metrics = meta.get("metrics")
        if isinstance(metrics, Mapping):
            self.records[step] = {**metrics, "step": step}

    def prune(self) -> list[int]:
        """Delete the committed steps retention does not keep; returns them."""
        steps = self.storage.steps()
        keep = steps_to_keep(steps, self.records, self.monitor, keep_latest=self.keep_latest, keep_best=self.keep_best)
        dropped = []
        for step in (s for s in steps if s not in keep):
            try:
                self.storage.delete(step)
            except CheckpointError as err:  # an old step left behind must not cost the next save
                self.warn(f"Warning: retention could not delete {err}")
                continue
            dropped.append(step)
        return dropped

    def finish(self) -> None:
        """Make every save durable, apply retention once more and close the storage."""
        try:
            self.storage.wait()
            self.prune()
        finally:
            self.storage.close()

    def close(self) -> None:
        self.storage.close()

    # --- reading -----------------------------------------------------------------------------

    def restore(self, which: str | int = "latest") -> Restored:
        """``"latest"``: the newest intact step; ``"best"``: the intact step whose epoch is best by
        the monitor (ranked from the history the newest intact step carries); an int: exactly
        that step. Damaged steps passed over are listed in ``Restored.skipped``."""
        if isinstance(which, int) and not isinstance(which, bool):
            return self._load(which)
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest', 'best' or a step number, got {which!r}")
        steps = self.storage.steps()
        if not steps:
            raise CheckpointError("no checkpoints saved yet", directory=_directory(self.storage))
        latest = self._first_intact(sorted(steps, reverse=True), ())
        if which == "latest":
            return latest
        history = latest.meta.get("history") or []
        records = {int(r["step"]): r for r in history if isinstance(r, Mapping) and "step" in r}
        ranked = [int(r["step"]) for r in self.monitor.rank(records[s] for s in steps if s in records)]
        if not ranked:
            raise CheckpointError(
                f"no checkpoint has a finite {self.monitor.metric!r} to pick the best by (steps: {_steps_text(steps)})",
                directory=_directory(self.storage),
            )
        if ranked[0] == latest.step:
            return latest
        return self._first_intact(ranked, latest.skipped)

    def _load(self, step: int) -> Restored:
        """The storage's ``load(step)``, which must return a :class:`Restored` (a TypeError saying
        so otherwise: one line naming the checkpointer where the engine calls it)."""
        restored = self.storage.load(step)
        if not isinstance(restored, Restored):
            raise TypeError(f"load({step}) returned {type(restored).__name__}, not a jaxyard.Restored (see jaxyard.Checkpointer)")
        return restored

    def _first_intact(self, order: list[int], skipped: tuple[tuple[int, str], ...]) -> Restored:
        passed = list(skipped)
        for step in order:
            try:
                restored = self._load(step)
            except CheckpointError as err:
                passed.append((step, err.cause))
                if self.on_skip:
                    self.on_skip(step, err.cause)
                continue
            return attrs.evolve(restored, skipped=tuple(passed))
        details = "; ".join(f"step {s}: {c}" for s, c in passed)
        raise CheckpointError(f"no intact checkpoint ({details})", directory=_directory(self.storage))


def _directory(storage: Any) -> Any:
    return getattr(storage, "directory", None)


def _steps_text(steps: list[int]) -> str:
    if len(steps) > 8:
        return ", ".join(map(str, steps[:3])) + ", ..., " + ", ".join(map(str, steps[-3:]))
    return ", ".join(map(str, steps)) or "none"
