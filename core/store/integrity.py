"""The checksum record: what a checkpointer writes beside a step so that loading it can prove it intact.

Storage does not say when it hands back other bytes than it was given (a flipped bit, a truncated
file read back as zeros, a step directory renamed or copied under another step's number, a
``meta`` value edited by hand). A checkpointer that writes :func:`checksum_record` beside each
step and calls :func:`verify_checksums` when loading it turns each of those into a
:class:`~jaxyard.core.store.checkpoint.CheckpointError` naming the damage, which jaxyard's
:class:`~jaxyard.core.store.policy.CheckpointPolicy` then passes over::

    # save(step, arrays, meta)
    write_json(step_dir / "checksums.json", jaxyard.checksum_record(step, arrays, meta))
    # load(step)
    jaxyard.verify_checksums(read_json(step_dir / "checksums.json"), step, arrays, meta,
                             directory=self.directory)

The record is a small JSON object (version 2)::

    {"format": "jaxyard.orbax", "version": 2, "algorithm": "crc32", "step": 300,
     "meta_crc32": 123, "arrays": {"model.w": {"shape": [2, 3], "dtype": "float32",
     "crc32": 456, "stored": true}, ...}, "record_crc32": 789}

- each array's crc32 covers its bytes in C order, so it is the same for any memory layout;
- ``meta_crc32`` covers ``meta`` as canonical JSON (sorted keys, no spaces), so re-indenting or
  re-ordering the JSON file changes nothing, while changing a value is damage;
- ``step`` is the step it was written for, so a directory moved to another step's name is damage;
- ``record_crc32`` covers the record itself (without this key), so editing a recorded checksum
  to match edited data is damage too;
- ``stored`` is False for zero-size arrays, whose bytes a checkpointer need not store
  (:meth:`Checksums.unstored` rebuilds them from their shape and dtype);
- ``format`` keeps the name the record had when only the orbax checkpointer wrote it, so that
  records stay byte-identical across versions.

Version 1 records (no ``step``, ``meta_crc32`` or ``record_crc32``) still verify their arrays.

Storage-agnostic: numpy only, imported when a function is called, so ``import jaxyard`` stays cheap.
"""

from __future__ import annotations

import json
import typing
import zlib
from collections.abc import Mapping
from typing import Any

import attrs

from jaxyard.core.store.checkpoint import CheckpointError, describe_exception

if typing.TYPE_CHECKING:  # pragma: no cover - for annotations only
    import numpy

__all__ = [
    "ALGORITHM",
    "RECORD_FORMAT",
    "RECORD_VERSION",
    "ArrayChecksum",
    "Checksums",
    "array_crc32",
    "checksum_record",
    "dtype_from_name",
    "read_checksums",
    "verify_checksums",
]

RECORD_FORMAT = "jaxyard.orbax"  # the record's name since it was the orbax checkpointer's alone
RECORD_VERSION = 2  # 2 added step, meta_crc32 and record_crc32 to version 1
ALGORITHM = "crc32"
_SHOWN = 3  # names listed before "..."


def array_crc32(array: Any) -> int:
    """The crc32 of an array's bytes in C order (the same for any memory layout of the same values)."""
    import numpy as np

    flat = np.ascontiguousarray(array).reshape(-1)
    return zlib.crc32(flat.view(np.uint8).data) & 0xFFFFFFFF


def _canonical_json(obj: Any) -> bytes:
    """The one byte string a JSON value stands for (key order and spacing fixed)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def _json_crc32(obj: Any) -> int:
    return zlib.crc32(_canonical_json(obj)) & 0xFFFFFFFF


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def checksum_record(step: int, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The checksum record of checkpoint ``step``: a JSON-serializable dict to store beside it.

    :param step: the step the checkpoint is saved as.
    :param arrays: the flat ``{path: array}`` dict being saved (numpy arrays, or anything
        ``numpy.asarray`` takes); checksummed as given, so call this on the bytes you write.
    :param meta: the JSON ``meta`` dict being saved; checksummed as it will read back from JSON
        (a tuple as a list, an integer key as a string).
    :returns: the record (see the module docstring); write it with ``json.dumps``.
    :raises CheckpointError: ``meta`` is not JSON-serializable.
    """
    import numpy as np

    try:
        meta_as_read = json.loads(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"meta is not JSON-serializable: {describe_exception(exc)}", step=step) from exc
    entries = {}
    for key, value in arrays.items():
        a = np.asarray(value)
        entries[key] = {"shape": list(a.shape), "dtype": a.dtype.name, ALGORITHM: array_crc32(a), "stored": bool(a.size > 0)}
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "algorithm": ALGORITHM,
        "step": int(step),
        "meta_crc32": _json_crc32(meta_as_read),
        "arrays": entries,
    }
    record["record_crc32"] = _json_crc32(record)
    return record


def dtype_from_name(name: str) -> numpy.dtype:
    """The numpy dtype a record names, ``bfloat16`` and the other ml_dtypes types included."""
    import numpy as np

    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # bfloat16, float8_*: installed with jax

        return np.dtype(getattr(ml_dtypes, name))


@attrs.frozen
class ArrayChecksum:
    """What the record says of one array."""

    shape: tuple[int, ...]
    dtype: str
    crc32: int
    stored: bool  # False for a zero-size array, whose bytes need not be stored


@attrs.frozen
class Checksums:
    """A checksum record read for ``step`` (its own checksum and step already checked), for
    checkpointers that load in parts: check ``meta`` before reading the arrays, learn which
    arrays to read. :func:`verify_checksums` is the one-call form."""

    step: int
    arrays: Mapping[str, ArrayChecksum]
    meta_crc32: int | None  # None in a version 1 record
    directory: str | None = None

    def _damaged(self, cause: str) -> CheckpointError:
        return CheckpointError(cause, directory=self.directory, step=self.step)

    def stored(self) -> list[str]:
        """The paths of the arrays whose bytes the checkpoint stores (all but the zero-size ones)."""
        return [key for key, entry in self.arrays.items() if entry.stored]

    def unstored(self) -> dict[str, numpy.ndarray]:
        """The zero-size arrays the record describes, rebuilt from their shape and dtype."""
        import numpy as np

        return {k: np.zeros(e.shape, dtype_from_name(e.dtype)) for k, e in self.arrays.items() if not e.stored}

    def check_meta(self, meta: Any) -> None:
        """Raise CheckpointError unless ``meta`` (as read back from JSON) is the one recorded."""
        if self.meta_crc32 is None:
            return
        try:
            crc = _json_crc32(meta)
        except (TypeError, ValueError) as exc:
            raise self._damaged(f"meta is not JSON: {describe_exception(exc)}") from None
        if crc != self.meta_crc32:
            raise self._damaged("checksum mismatch for meta: edited or corrupted on disk")

    def check_arrays(self, arrays: Mapping[str, Any]) -> None:
        """Raise CheckpointError unless ``arrays`` are exactly the recorded paths, each with its
        recorded shape, dtype and crc32; the message names the first damaged array."""
        import numpy as np

        expected, got = set(self.arrays), set(arrays)
        if got != expected:
            parts = [f"{word} {_names(keys)}" for word, keys in (("missing", expected - got), ("unrecorded", got - expected)) if keys]
            raise self._damaged(f"the arrays do not match the checksum record: {'; '.join(parts)}")
        bad = []
        for key, entry in self.arrays.items():
            a = np.asarray(arrays[key])
            if tuple(a.shape) != entry.shape:
                raise self._damaged(f"array {key!r} has shape {tuple(a.shape)}, checksum record says {entry.shape}")
            if a.dtype.name != entry.dtype:
                raise self._damaged(f"array {key!r} has dtype {a.dtype.name}, checksum record says {entry.dtype}")
            if array_crc32(a) != entry.crc32:
                bad.append(key)
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise self._damaged(f"checksum mismatch for array {bad[0]!r}{more}: data corrupted on disk")


def _names(keys: set[str]) -> str:
    shown = sorted(keys)
    return ", ".join(shown[:_SHOWN]) + (" ..." if len(shown) > _SHOWN else "")


def read_checksums(record: Any, step: int, *, directory: Any = None) -> Checksums:
    """Read a checksum record (as loaded from its JSON) found with checkpoint ``step``.

    Checks the record's own checksum and that it was written for ``step``; what it says of
    ``meta`` and the arrays is checked by :meth:`Checksums.check_meta` and
    :meth:`Checksums.check_arrays`.

    :raises CheckpointError: the record is malformed, of an unknown version, edited, or written
        for another step; the message names the directory (when given) and the step.
    """
    step = int(step)

    def damaged(cause: str) -> CheckpointError:
        return CheckpointError(cause, directory=directory, step=step)

    if not isinstance(record, dict) or not isinstance(record.get("arrays"), dict):
        raise damaged("checksum record is malformed: not a JSON object with an 'arrays' object")
    if record.get("algorithm", ALGORITHM) != ALGORITHM:
        raise damaged(f"checksum record uses unknown algorithm {record.get('algorithm')!r}")
    version = record.get("version", 1)
    meta_crc32 = None
    if version != 1:
        if version != RECORD_VERSION:
            raise damaged(f"checksum record has version {version!r}; this jaxyard reads 1 and {RECORD_VERSION}")
        recorded = record.get("record_crc32")
        if not _is_int(recorded) or _json_crc32({k: v for k, v in record.items() if k != "record_crc32"}) != recorded:
            raise damaged("checksum mismatch for the checksum record: edited or corrupted on disk")
        saved_step, meta_crc32 = record.get("step"), record.get("meta_crc32")
        if not _is_int(saved_step) or not _is_int(meta_crc32):
            raise damaged("checksum record is malformed: no step or meta_crc32")
        if saved_step != step:
            raise damaged(f"the checkpoint holds step {saved_step}, not {step}: its directory was renamed or copied from step {saved_step}")
    entries = {}
    try:
        for key, e in record["arrays"].items():
            crc = e[ALGORITHM]
            if not _is_int(crc):
                raise TypeError(f"the crc32 of {key!r} is not an integer")
            shape = tuple(int(d) for d in e["shape"])
            entries[key] = ArrayChecksum(shape=shape, dtype=str(e["dtype"]), crc32=crc, stored=bool(e.get("stored", True)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise damaged(f"checksum record is malformed: {describe_exception(exc)}") from None
    return Checksums(step=step, arrays=entries, meta_crc32=meta_crc32, directory=None if directory is None else str(directory))


def verify_checksums(record: Any, step: int, arrays: Mapping[str, Any], meta: Any, *, directory: Any = None) -> None:
    """Check a loaded checkpoint against the record :func:`checksum_record` wrote for it.

    :param record: the record, as read back from its JSON file.
    :param step: the step being loaded (a record written for another step is damage).
    :param arrays: the ``{path: array}`` dict read back, zero-size arrays included.
    :param meta: the ``meta`` dict read back from JSON.
    :param directory: the checkpointer's directory, named in the error.
    :raises CheckpointError: one line naming the step and the damage: the record itself edited or
        malformed, another step's record, ``meta`` edited, an array missing or unrecorded, or the
        first array whose shape, dtype or checksum differs.
    """
    checksums = read_checksums(record, step, directory=directory)
    checksums.check_meta(meta)
    checksums.check_arrays(arrays)
