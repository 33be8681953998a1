"""Reading and writing .safetensors files, with errors a user can act on.

safetensors is the only checkpoint format mvd_jax reads: it is a JSON header plus raw little-endian
arrays, so loading never executes code (pickle-based .bin/.ckpt/.pt files are refused). We parse it
ourselves (it is 8 bytes of header length, the header, then the data) so that
  * a truncated or corrupt file is reported as such, naming the file and what is wrong;
  * bf16 tensors load (NumPy has no bf16; `ml_dtypes.bfloat16` does);
  * tensors are memory-mapped and only copied when used.
Writing goes through the `safetensors` package.
"""
from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from mvd_jax.errors import UserError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 1024 * 1024


def read_header(path) -> tuple[dict, dict, int]:
    """Returns (tensor entries, __metadata__, byte offset of the data section). Validates every entry."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"checkpoint file not found: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise UserError(f"{path} is not a safetensors file: only {size} bytes (truncated or empty)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise UserError(f"{path} is not a valid safetensors file (header of {n} bytes in a {size}-byte file): "
                            "truncated, or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path} has a corrupt safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: corrupt header entry for tensor {name!r}") from None
        if dtype not in _DTYPES:
            raise UserError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
        if end - begin != expected or begin < 0:
            raise UserError(f"{path}: tensor {name!r} spans {end - begin} bytes but {dtype}{list(shape)} needs {expected}")
        if data_start + end > size:
            raise UserError(f"{path} is truncated: tensor {name!r} ends at byte {data_start + end}, "
                            f"the file has {size} bytes")
    return header, metadata, data_start


def read_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as read-only memory-mapped NumPy arrays."""
    header, _, data_start = read_header(path)
    if not header:
        return {}
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        raw = mm[data_start + begin:data_start + end]
        out[name] = raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return out


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes NumPy arrays (contiguous copies are made as needed) to `path`."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.fspath(path), metadata=metadata)
