"""What the checkpointer's methods accept: a step number, a flat dict of arrays copied to host memory,
a JSON ``meta``; anything else is refused as one :class:`CheckpointError` line naming it."""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxyard.core.store.checkpoint import CheckpointError, describe_exception

__all__ = ["as_step", "host_arrays", "json_meta"]

# the ml_dtypes types (installed with jax) orbax saves; numpy gives them kind "V", which is refused otherwise
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


def as_step(step: Any) -> int:
    """``step`` as a non-negative int (a bool, a float or a string is refused)."""
    if isinstance(step, bool):
        raise CheckpointError(f"step must be an integer, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise CheckpointError(f"step must be an integer, got {step!r}") from None
    if value < 0:
        raise CheckpointError(f"step must be >= 0, got {value}")
    return value


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


def json_meta(meta: Any, *, step: int, directory: Any) -> dict:
    """``meta`` as it will read back from JSON (numpy scalars as numbers, tuples as lists)."""
    if not isinstance(meta, Mapping):
        raise CheckpointError(
            f"meta must be a dict, got {type(meta).__name__}", directory=directory, step=step
        )
    try:
        return json.loads(json.dumps(dict(meta), default=_json_default, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"meta is not JSON-serializable: {describe_exception(exc)}",
            directory=directory,
            step=step,
        ) from exc


def host_arrays(arrays: Any, *, step: int, directory: Any) -> dict[str, np.ndarray]:
    """``arrays`` as C-contiguous host arrays, every device->host transfer started at once.

    Refuses anything but a flat dict with non-empty string keys, typed PRNG key arrays (their
    ``key_data`` is what to save) and object, string or void dtypes other than ml_dtypes' types.
    """
    if not isinstance(arrays, Mapping):
        raise CheckpointError(
            f"arrays must be a flat dict of path -> array, got {type(arrays).__name__}",
            directory=directory,
            step=step,
        )
    for key in arrays:
        if not isinstance(key, str) or not key:
            raise CheckpointError(
                f"array keys must be non-empty strings, got {key!r}", directory=directory, step=step
            )
    for value in arrays.values():  # start all device->host transfers at once
        start = getattr(value, "copy_to_host_async", None)
        if start is not None:
            try:
                start()
            except Exception:  # only an optimization
                pass
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        dtype = getattr(value, "dtype", None)
        if dtype is not None and "key<" in str(dtype):
            raise CheckpointError(
                f"array {key!r} is a typed PRNG key array; pass jax.random.key_data(...) instead",
                directory=directory,
                step=step,
            )
        try:
            host = np.asarray(value)
        except Exception as exc:
            raise CheckpointError(
                f"array {key!r} cannot be copied to host memory: {describe_exception(exc)}",
                directory=directory,
                step=step,
            ) from exc
        if host.dtype.kind in "OSUV" and host.dtype.name not in _ML_DTYPE_NAMES:
            raise CheckpointError(
                f"array {key!r} has unsupported dtype {host.dtype}", directory=directory, step=step
            )
        # No copy here: orbax's NumpyHandler deep-copies host arrays before
        # save() returns (deepcopy_host_arrays=True), which also detaches a
        # jax CPU array's zero-copy view from its device buffer. save() takes
        # the checksum record from these same bytes before that.
        out[key] = host if host.flags.c_contiguous else np.array(host, order="C")
    return out
