"""The safetensors format, written (and read) without the ``safetensors`` package.

A file is: 8 bytes, the little-endian length N of a JSON header; N bytes of that header (padded
with spaces to a multiple of 8), ``{"NAME": {"dtype": "F32", "shape": [...], "data_offsets":
[begin, end]}, ..., "__metadata__": {str: str}}``; then every tensor's raw little-endian bytes,
C order, at its offsets from the end of the header. (https://github.com/huggingface/safetensors)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxyard.core.errors import UsageError

# numpy dtype name -> safetensors dtype (bfloat16 and the float8 types are ml_dtypes', as jax has them)
DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16", "bfloat16": "BF16",
    "int32": "I32", "uint32": "U32", "float32": "F32", "float64": "F64", "int64": "I64", "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


def encode(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors`` (NAME -> array) in name order, with
    ``metadata`` (strings only, the format's rule) under ``__metadata__``."""
    header: dict[str, Any] = {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype.name not in DTYPES:
            raise UsageError(f"tensor {name!r} is {array.dtype}, which safetensors cannot hold (it holds {', '.join(DTYPES)})")
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": DTYPES[array.dtype.name], "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def decode(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file's bytes (the inverse of :func:`encode`)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    metadata = header.pop("__metadata__", {}) or {}
    by_code = {code: name for name, code in DTYPES.items()}
    body, tensors = memoryview(data)[8 + length:], {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = _numpy_dtype(by_code[entry["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(entry["shape"]).astype(dtype.newbyteorder("="))
    return tensors, metadata


def _numpy_dtype(name: str) -> np.dtype:
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes  # jax's dependency

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def tensor_names(state) -> dict[str, np.ndarray]:
    """A flax NNX state's arrays by pytree path joined with dots (``layers.0.kernel``), as host arrays."""
    from flax import nnx

    out = {}
    for path, value in nnx.to_flat_state(state):
        array = value.get_value() if hasattr(value, "get_value") else getattr(value, "value", value)
        out[".".join(str(p) for p in path)] = np.asarray(array)
    return out
