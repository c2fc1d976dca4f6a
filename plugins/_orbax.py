"""Orbax-backed checkpointer: checksummed, retention of latest K + best N, async saves.

Layout of ``directory``::

    jaxyard-checkpoints.json      marker: this directory belongs to this checkpointer
    <step>/                       one finished orbax checkpoint per step
        state/                    the arrays (orbax StandardSave of a flat dict of numpy arrays)
        meta/metadata             the engine's ``meta`` dict (JSON)
        checksums/metadata        shape, dtype and crc32 of every array (JSON)
        metrics/metrics           orbax's copy of the numeric metrics (ranks "best")
        _CHECKPOINT_METADATA      orbax bookkeeping
    <step>.orbax-checkpoint-tmp*  a save in progress (orbax renames it to <step> when done)
    <step>.damaged                a damaged checkpoint moved aside because the step was saved again

Orbax writes every step into a temporary directory and renames it when all
items are committed, so a kill mid-save never leaves a half-written ``<step>``;
the checksum record is one of the items of that same atomic step, so it exists
exactly when the arrays do.

Damage detection on restore: each item is restored separately (so the cause
names the item); any orbax/tensorstore/JSON error is a cause; then every array's
shape, dtype and crc32 are checked against the checksum record -- this catches
flipped bytes inside array data, which orbax itself reads back silently.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import os
import pathlib
import zlib
from typing import Any, Mapping

import attrs
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jaxyard.core.checkpoint import CheckpointError, Restored, describe_exception

log = logging.getLogger(__name__)

MARKER_NAME = "jaxyard-checkpoints.json"
MARKER_FORMAT = "jaxyard.orbax"
FORMAT_VERSION = 1
CHECKSUM_ALGORITHM = "crc32"

_STATE = "state"
_META = "meta"
_SUMS = "checksums"


class _Damaged(Exception):
    """A checkpoint failed verification; ``cause`` is one line."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


@attrs.frozen
class _Entry:
    shape: tuple[int, ...]
    dtype: str
    crc32: int
    stored: bool  # False for zero-size arrays, which orbax cannot save


class _TolerantCheckpointManager(ocp.CheckpointManager):
    """A CheckpointManager that survives one damaged metrics file.

    Orbax 0.12.8 reads every step's ``metrics/metrics`` JSON when it is created
    (and on ``reload()``) and only tolerates a *missing* file: a broken one
    raises ``JSONDecodeError`` from the constructor, making the whole directory
    unusable. Treat an unreadable metrics file as "no metrics" instead.
    """

    def _get_metrics(self, step: int):  # overrides a private orbax method
        try:
            return super()._get_metrics(step)
        except Exception as exc:  # noqa: BLE001 - any damage means "no metrics"
            log.warning(
                "checkpoint step %s in %s: metrics unreadable, ignored for ranking (%s)",
                step,
                self.directory,
                describe_exception(exc),
            )
            return None


def _as_step(step: Any) -> int:
    if isinstance(step, bool):
        raise CheckpointError(f"step must be an integer, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise CheckpointError(f"step must be an integer, got {step!r}") from None
    if value < 0:
        raise CheckpointError(f"step must be >= 0, got {value}")
    return value


def _is_step_name(name: str) -> bool:
    return name.isdigit() and name.isascii() and str(int(name)) == name


def _crc32(a: np.ndarray) -> int:
    flat = np.ascontiguousarray(a).reshape(-1)
    return zlib.crc32(flat.view(np.uint8)) & 0xFFFFFFFF


def _dtype_from_name(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # bfloat16, float8_*: installed with jax

        return np.dtype(getattr(ml_dtypes, name))


def _json_default(obj: Any) -> Any:
    # numpy / jax scalars and small arrays sneaking into meta
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: pathlib.Path) -> None:
    """fsync every file and directory under ``root`` (orbax's JSON items are not
    fsynced by orbax itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(pathlib.Path(dirpath))


class OrbaxCheckpointer:
    """Checkpointer on orbax's CheckpointManager; see the module docstring.

    Implements :class:`jaxyard.core.checkpoint.Checkpointer`.

    Retention: after each save, orbax keeps the ``keep_latest`` newest steps
    plus the ``keep_best`` best by ``best_metric`` (read from
    ``meta["metrics"]``; steps without a finite value for it are never kept as
    "best"). Deletion of old steps happens only after the new step is fully
    committed, so a failed save deletes nothing.
    """

    def __init__(
        self,
        directory: os.PathLike | str,
        *,
        keep_latest: int = 3,
        keep_best: int = 1,
        best_metric: str = "val_loss",
        best_mode: str = "min",
        async_save: bool = True,
    ):
        if isinstance(keep_latest, bool) or int(keep_latest) < 1:
            raise ValueError(f"keep_latest must be >= 1, got {keep_latest!r}")
        if isinstance(keep_best, bool) or int(keep_best) < 0:
            raise ValueError(f"keep_best must be >= 0, got {keep_best!r}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self._dir = pathlib.Path(os.path.abspath(os.fspath(directory)))
        self.keep_latest = int(keep_latest)
        self.keep_best = int(keep_best)
        self.best_metric = str(best_metric)
        self.best_mode = best_mode
        self.async_save = bool(async_save)
        self._pending: int | None = None  # step of a save not yet settled
        self._synced: set[int] = set()  # steps whose files were fsynced before publication
        self._deferred: CheckpointError | None = None  # failure seen by restore()
        self._closed = False

        self._claim_directory()

        policies: list[Any] = [ocm.LatestN(n=self.keep_latest)]
        if self.keep_best > 0:
            policies.append(
                ocm.BestN(
                    get_metric_fn=self._metric_value,
                    # BestN sorts ascending (descending if reverse) and keeps the last n.
                    reverse=(self.best_mode == "min"),
                    n=self.keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocm.AnyPreservationPolicy(policies),
            # best_fn is not used for deletion (preservation_policy decides), but
            # without it orbax does not write the metrics file, and BestN would
            # forget every step's metric after a restart.
            best_fn=self._metric_value,
            best_mode=self.best_mode,
            enable_async_checkpointing=self.async_save,
            # Create the step's temporary directory inside save(), not in the
            # background: if that fails (unwritable directory) in the background,
            # orbax 0.12.8 leaves its writer threads waiting for a "directory
            # created" signal that never comes, and the process hangs for 5
            # minutes at exit. Synchronously, save() simply raises.
            async_options=ocp.options.AsyncOptions(
                create_directories_asynchronously=False,
                # runs in orbax's background thread after all items are written
                # and before the temporary directory is renamed into place
                post_finalization_callback=self._sync_before_publish if self.async_save else None,
            ),
            cleanup_tmp_directories=True,  # leftovers of killed/failed saves
            create=True,
        )
        try:
            self._mgr = _TolerantCheckpointManager(
                self._dir, options=options, item_names=(_STATE, _META, _SUMS)
            )
        except Exception as exc:
            raise CheckpointError(
                f"cannot open checkpoints: {describe_exception(exc)}", directory=self._dir
            ) from exc

    # ------------------------------------------------------------------ public

    @property
    def directory(self) -> pathlib.Path:
        return self._dir

    def __repr__(self) -> str:
        return (
            f"OrbaxCheckpointer({str(self._dir)!r}, keep_latest={self.keep_latest}, "
            f"keep_best={self.keep_best}, best_metric={self.best_metric!r}, "
            f"best_mode={self.best_mode!r}, async_save={self.async_save})"
        )

    def save(self, step: int, arrays: Mapping[str, Any], meta: dict) -> None:
        """Save ``arrays`` and ``meta`` as checkpoint ``step``.

        Copies the arrays to host memory and computes their checksums before
        returning; with ``async_save`` the disk writes happen in the
        background. See :meth:`jaxyard.core.checkpoint.Checkpointer.save`.
        """
        self._check_open()
        step = _as_step(step)
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise CheckpointError(
                f"{err.cause} (reported when saving step {step}, which was not saved)",
                directory=self._dir,
                step=err.step,
            )
        try:
            self._settle()
        except CheckpointError as err:
            raise CheckpointError(
                f"{err.cause} (reported when saving step {step}, which was not saved)",
                directory=self._dir,
                step=err.step,
            ) from err.__cause__
        meta_doc = self._normalize_meta(step, meta)
        host = self._to_host(step, arrays)

        entries = {}
        for key, a in host.items():
            entries[key] = {
                "shape": list(a.shape),
                "dtype": a.dtype.name,
                CHECKSUM_ALGORITHM: _crc32(a),
                "stored": bool(a.size > 0),
            }
        sums_doc = {
            "format": MARKER_FORMAT,
            "version": FORMAT_VERSION,
            "algorithm": CHECKSUM_ALGORITHM,
            "arrays": entries,
        }
        stored = {k: a for k, a in host.items() if a.size > 0}

        self._make_room(step)
        items: dict[str, Any] = {
            _META: ocp.args.JsonSave(meta_doc),
            _SUMS: ocp.args.JsonSave(sums_doc),
        }
        if stored:
            items[_STATE] = ocp.args.StandardSave(stored)
        try:
            # force=True: without it orbax silently skips (returns False) when a
            # save is still in progress or step <= latest step.
            self._pending = step
            self._mgr.save(
                step,
                args=ocp.args.Composite(**items),
                metrics=self._metrics_for(meta_doc),
                force=True,
            )
        except Exception as exc:
            raise self._save_failed(step, exc) from exc
        if not self.async_save:
            self._settle()

    def steps(self) -> list[int]:
        """Finished checkpoints on disk, ascending (damaged ones included)."""
        try:
            names = os.listdir(self._dir)
        except OSError as exc:
            raise CheckpointError(
                f"cannot list checkpoints: {describe_exception(exc)}", directory=self._dir
            ) from exc
        return sorted(
            int(n) for n in names if _is_step_name(n) and (self._dir / n).is_dir()
        )

    def restore(self, step: int | None = None, *, which: str = "latest") -> Restored:
        """See :meth:`jaxyard.core.checkpoint.Checkpointer.restore`."""
        self._check_open()
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
        try:
            self._settle()
        except CheckpointError as err:  # report it from the next save/wait/close
            self._deferred = err
        on_disk = self.steps()
        if sorted(self._mgr.all_steps()) != on_disk:
            self._resync()  # steps removed or added behind orbax's back

        if step is not None:
            step = _as_step(step)
            if step not in on_disk:
                raise CheckpointError(
                    f"no such checkpoint (steps on disk: {_steps_text(on_disk)})",
                    directory=self._dir,
                    step=step,
                )
            try:
                return self._load(step)
            except _Damaged as d:
                raise CheckpointError(f"damaged: {d.cause}", directory=self._dir, step=step) from None

        if not on_disk:
            raise CheckpointError("no checkpoints saved yet", directory=self._dir)
        if which == "latest":
            order = sorted(on_disk, reverse=True)
        else:
            order = self._ranked(on_disk)
            if not order:
                raise CheckpointError(
                    f"no checkpoint has a finite {self.best_metric!r} metric to pick the best by "
                    f"(steps on disk: {_steps_text(on_disk)})",
                    directory=self._dir,
                )
        skipped: list[tuple[int, str]] = []
        for candidate in order:
            try:
                restored = self._load(candidate)
            except _Damaged as d:
                log.info(  # the caller reports Restored.skipped itself
                    "checkpoint step %s in %s is damaged, passing over it: %s",
                    candidate,
                    self._dir,
                    d.cause,
                )
                skipped.append((candidate, d.cause))
                continue
            return attrs.evolve(restored, skipped=tuple(skipped))
        details = "; ".join(f"step {s}: {c}" for s, c in skipped)
        raise CheckpointError(f"no intact checkpoint ({details})", directory=self._dir)

    def wait(self) -> None:
        """Block until pending saves are committed and fsynced."""
        if self._closed:
            return
        if self._deferred is not None:
            err, self._deferred = self._deferred, None
            raise err
        self._settle()

    def close(self) -> None:
        """Finish pending saves and release orbax's threads. Idempotent."""
        if self._closed:
            return
        error: CheckpointError | None = None
        try:
            self.wait()
        except CheckpointError as err:
            error = err
        finally:
            self._closed = True
            try:
                self._mgr.close()
            except Exception as exc:  # noqa: BLE001
                if error is None:
                    error = CheckpointError(
                        f"closing failed: {describe_exception(exc)}", directory=self._dir
                    )
        if error is not None:
            raise error

    def __enter__(self) -> "OrbaxCheckpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ---------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise CheckpointError("checkpointer is closed", directory=self._dir)

    def _claim_directory(self) -> None:
        """Use ``directory`` only if it is new, empty, or marked as ours."""
        d = self._dir
        marker = d / MARKER_NAME
        try:
            if d.exists() and not d.is_dir():
                raise CheckpointError("path exists and is not a directory", directory=d)
            if d.is_dir():
                if marker.is_file():
                    self._check_marker(marker)
                    return
                entries = sorted(os.listdir(d))
                if entries:
                    shown = ", ".join(repr(e) for e in entries[:3])
                    more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
                    raise CheckpointError(
                        f"directory is not empty and was not created by jaxyard's orbax "
                        f"checkpointer (found {shown}{more}, no {MARKER_NAME}); refusing to "
                        f"use it so that nothing in it is overwritten or deleted; "
                        f"use a new or empty directory",
                        directory=d,
                    )
            else:
                d.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(
                marker,
                {
                    "format": MARKER_FORMAT,
                    "version": FORMAT_VERSION,
                    "note": "checkpoints written by jaxyard (orbax checkpointer); "
                    "the directory is managed: old steps are deleted by retention",
                },
            )
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(
                f"cannot use the directory: {describe_exception(exc)}", directory=d
            ) from exc

    def _check_marker(self, marker: pathlib.Path) -> None:
        try:
            doc = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); using the directory anyway", marker, exc)
            return
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if fmt != MARKER_FORMAT:
            raise CheckpointError(
                f"directory holds checkpoints of another format ({MARKER_NAME} says "
                f"{fmt!r}, expected {MARKER_FORMAT!r}); refusing to use it",
                directory=self._dir,
            )

    def _save_failed(self, step: int, exc: Exception) -> CheckpointError:
        """Forget the failed save, resynchronise with the disk, and describe the failure."""
        self._pending = None
        self._resync()
        return CheckpointError(
            f"saving failed: {describe_exception(exc)}; earlier checkpoints were left in place",
            directory=self._dir,
            step=step,
        )

    def _settle(self) -> None:
        """Wait for the pending save; make it durable; raise CheckpointError if it failed."""
        if self._pending is None:
            return
        step = self._pending
        try:
            self._mgr.wait_until_finished()
        except Exception as exc:
            raise self._save_failed(step, exc) from exc
        self._pending = None  # only now: the background callback reads it
        final = self._dir / str(step)
        if not final.is_dir():
            self._resync()
            raise CheckpointError(
                "saving failed: orbax reported no error but the checkpoint was not "
                "finalized (see the log); earlier checkpoints were left in place",
                directory=self._dir,
                step=step,
            )
        try:
            if step in self._synced:
                self._synced.discard(step)
            else:
                _fsync_tree(final)
            _fsync_dir(self._dir)  # the rename
        except OSError as exc:
            raise CheckpointError(
                f"could not flush the checkpoint to disk: {describe_exception(exc)}",
                directory=self._dir,
                step=step,
            ) from exc

    def _sync_before_publish(self) -> None:
        """fsync the pending step's files before orbax renames its directory into
        place (async saves only), so a finished step is a durable one."""
        step = self._pending
        if step is None:
            return
        tmp_dirs = [p for p in self._dir.glob(f"{step}.orbax-checkpoint-tmp*") if p.is_dir()]
        for tmp in tmp_dirs:
            _fsync_tree(tmp)
        if tmp_dirs:
            self._synced.add(step)

    def _resync(self) -> None:
        """Re-read the step list from disk (orbax drops steps from its in-memory
        list when a save fails and would then never delete them)."""
        try:
            self._mgr.reload()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not re-read checkpoint list in %s: %s", self._dir, describe_exception(exc))

    def _make_room(self, step: int) -> None:
        """Saving a step that exists: refuse if intact, move it aside if damaged."""
        path = self._dir / str(step)
        if not path.exists():
            return
        try:
            self._load(step)
        except _Damaged as d:
            aside = self._dir / f"{step}.damaged"
            n = 1
            while aside.exists():
                n += 1
                aside = self._dir / f"{step}.damaged-{n}"
            try:
                os.rename(path, aside)
            except OSError as exc:
                raise CheckpointError(
                    f"a damaged checkpoint for this step is in the way and could not be "
                    f"moved aside: {describe_exception(exc)}",
                    directory=self._dir,
                    step=step,
                ) from exc
            log.warning(
                "checkpoint step %s in %s was damaged (%s); moved it to %s and saving again",
                step,
                self._dir,
                d.cause,
                aside.name,
            )
            self._resync()
            return
        raise CheckpointError(
            "a checkpoint for this step already exists and is intact; not overwriting it",
            directory=self._dir,
            step=step,
        )

    def _normalize_meta(self, step: int, meta: Any) -> dict:
        if not isinstance(meta, Mapping):
            raise CheckpointError(
                f"meta must be a dict, got {type(meta).__name__}", directory=self._dir, step=step
            )
        try:
            return json.loads(json.dumps(dict(meta), default=_json_default, allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"meta is not JSON-serializable: {describe_exception(exc)}",
                directory=self._dir,
                step=step,
            ) from exc

    def _to_host(self, step: int, arrays: Any) -> dict[str, np.ndarray]:
        """C-contiguous host arrays (device->host transfers started all at once)."""
        if not isinstance(arrays, Mapping):
            raise CheckpointError(
                f"arrays must be a flat dict of path -> array, got {type(arrays).__name__}",
                directory=self._dir,
                step=step,
            )
        for key in arrays:
            if not isinstance(key, str) or not key:
                raise CheckpointError(
                    f"array keys must be non-empty strings, got {key!r}", directory=self._dir, step=step
                )
        for value in arrays.values():  # start all device->host transfers at once
            start = getattr(value, "copy_to_host_async", None)
            if start is not None:
                try:
                    start()
                except Exception:  # noqa: BLE001 - only an optimization
                    pass
        out: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            dtype = getattr(value, "dtype", None)
            if dtype is not None and "key<" in str(dtype):
                raise CheckpointError(
                    f"array {key!r} is a typed PRNG key array; pass jax.random.key_data(...) instead",
                    directory=self._dir,
                    step=step,
                )
            try:
                host = np.asarray(value)
            except Exception as exc:
                raise CheckpointError(
                    f"array {key!r} cannot be copied to host memory: {describe_exception(exc)}",
                    directory=self._dir,
                    step=step,
                ) from exc
            if host.dtype.kind in "OSUV" and host.dtype.name not in _ML_DTYPE_NAMES:
                raise CheckpointError(
                    f"array {key!r} has unsupported dtype {host.dtype}", directory=self._dir, step=step
                )
            # No copy here: orbax's NumpyHandler deep-copies host arrays before
            # save() returns (deepcopy_host_arrays=True), which also detaches a
            # jax CPU array's zero-copy view from its device buffer. The
            # checksum below is taken from these same bytes before that.
            out[key] = host if host.flags.c_contiguous else np.array(host, order="C")
        return out

    def _metric_value(self, metrics: Any) -> float:
        """Ranking value of a step's metrics (worst possible if unusable)."""
        worst = math.inf if self.best_mode == "min" else -math.inf
        try:
            value = float(metrics[self.best_metric])
        except Exception:  # noqa: BLE001
            return worst
        return value if math.isfinite(value) else worst

    def _metrics_for(self, meta_doc: dict) -> dict[str, float] | None:
        metrics = meta_doc.get("metrics")
        if not isinstance(metrics, dict):
            return None
        numeric = {
            str(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        return numeric if self.best_metric in numeric else None

    def _ranked(self, steps: list[int]) -> list[int]:
        """Steps with a usable metric, best first (newer first on ties)."""
        scored = []
        for s in steps:
            try:
                metrics = self._mgr.metrics(s)
            except Exception:  # noqa: BLE001 - unreadable metrics: unranked
                metrics = None
            if metrics is None:
                continue
            value = self._metric_value(metrics)
            if math.isfinite(value):
                scored.append((value if self.best_mode == "min" else -value, -s))
        return [-neg_step for _, neg_step in sorted(scored)]

    def _restore_item(self, step: int, name: str, args: Any, what: str) -> Any:
        try:
            return self._mgr.restore(step, args=ocp.args.Composite(**{name: args}))[name]
        except Exception as exc:  # noqa: BLE001 - every failure is damage
            raise _Damaged(f"{what} unreadable ({name}/): {describe_exception(exc)}") from None

    def _load(self, step: int) -> Restored:
        """Restore ``step`` and verify it against its checksum record (raises _Damaged)."""
        if not (self._dir / str(step)).is_dir():
            raise _Damaged("checkpoint directory is missing")
        sums = self._restore_item(step, _SUMS, ocp.args.JsonRestore(), "checksum record")
        entries = _parse_checksums(sums)
        meta = self._restore_item(step, _META, ocp.args.JsonRestore(), "meta")
        if not isinstance(meta, dict):
            raise _Damaged(f"meta ({_META}/) is not a JSON object")
        expected = {k for k, e in entries.items() if e.stored}
        state: Any = {}
        if expected:
            state = self._restore_item(step, _STATE, ocp.args.StandardRestore(), "array data")
            if not isinstance(state, Mapping):
                raise _Damaged(f"array data ({_STATE}/) is not a dict of arrays")
        got = set(state)
        if got != expected:
            missing = sorted(expected - got)
            extra = sorted(got - expected)
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
            if extra:
                parts.append(f"unrecorded {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
            raise _Damaged(f"array data does not match the checksum record: {'; '.join(parts)}")
        arrays: dict[str, np.ndarray] = {}
        bad: list[str] = []
        for key, entry in entries.items():
            if entry.stored:
                a = np.asarray(state[key])
            else:
                a = np.zeros(entry.shape, _dtype_from_name(entry.dtype))
            if tuple(a.shape) != entry.shape:
                raise _Damaged(
                    f"array {key!r} has shape {tuple(a.shape)}, checksum record says {entry.shape}"
                )
            if a.dtype.name != entry.dtype:
                raise _Damaged(f"array {key!r} has dtype {a.dtype.name}, checksum record says {entry.dtype}")
            if _crc32(a) != entry.crc32:
                bad.append(key)
            arrays[key] = a
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise _Damaged(f"checksum mismatch for array {bad[0]!r}{more}: data corrupted on disk")
        return Restored(step=step, arrays=arrays, meta=meta)


_ML_DTYPE_NAMES = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3b11fnuz",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e3m4",
        "float8_e4m3",
        "float8_e8m0fnu",
        "float4_e2m1fn",
        "int2",
        "int4",
        "uint2",
        "uint4",
    }
)


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "none"
    if len(steps) > 8:
        return ", ".join(map(str, steps[:3])) + ", ..., " + ", ".join(map(str, steps[-3:]))
    return ", ".join(map(str, steps))


def _parse_checksums(doc: Any) -> dict[str, _Entry]:
    if not isinstance(doc, dict) or not isinstance(doc.get("arrays"), dict):
        raise _Damaged(f"checksum record ({_SUMS}/) is malformed")
    if doc.get("algorithm", CHECKSUM_ALGORITHM) != CHECKSUM_ALGORITHM:
        raise _Damaged(f"checksum record uses unknown algorithm {doc.get('algorithm')!r}")
    out = {}
    try:
        for key, e in doc["arrays"].items():
            shape = tuple(int(d) for d in e["shape"])
            crc = e[CHECKSUM_ALGORITHM]
            if isinstance(crc, bool) or not isinstance(crc, int):
                raise TypeError("crc32 is not an integer")
            out[key] = _Entry(shape=shape, dtype=str(e["dtype"]), crc32=crc, stored=bool(e.get("stored", True)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _Damaged(f"checksum record ({_SUMS}/) is malformed: {describe_exception(exc)}") from None
    return out
