"""Frames: a small JSON header plus raw little-endian numpy arrays, as one byte string.

A frame is `MAGIC | u32 header length | JSON header | raw arrays`. It is the format of the query node <->
executor messages (a 1,000 x 384 query batch costs 1.5 MB and one memcpy, not a JSON float parser) and of
the IVF index's objects in storage (decoding is a zero-copy view, no pickle, nothing executable).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

MAGIC = b"VAP1"
_LEN = struct.Struct("<I")
ALIGNMENT = 16
"""Array data starts at a multiple of this within a frame (Python's byte strings are 16-byte aligned)."""


class FrameError(ValueError):
    """Bytes that are not a frame (truncated, wrong magic, shapes that do not add up)."""


def encode(header: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """Frame a header and arrays; the arrays' dtypes and shapes are recorded in the header."""
    specs = [{"dtype": a.dtype.newbyteorder("<").str, "shape": list(a.shape)} for a in arrays]
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":")).encode()
    head += b" " * (-(8 + len(head)) % ALIGNMENT)  # JSON whitespace, so the first array starts aligned
    parts = [MAGIC, _LEN.pack(len(head)), head]
    parts += [np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in arrays]
    return b"".join(parts)


def decode(body: bytes) -> tuple[dict[str, Any], list[np.ndarray]]:
    if len(body) < 8 or body[:4] != MAGIC:
        raise FrameError("not an appliance task message")
    (head_len,) = _LEN.unpack_from(body, 4)
    start = 8 + head_len
    if start > len(body):
        raise FrameError("truncated header")
    try:
        header = json.loads(body[8:start])
    except ValueError as exc:
        raise FrameError("header is not JSON") from exc
    arrays = []
    offset = start
    for spec in header.pop("arrays", []):
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(n) for n in spec["shape"])
        size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        if offset + size > len(body):
            raise FrameError("truncated array data")
        array = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
        # numpy hands only aligned arrays to BLAS; a misaligned view makes a matrix product ~10x slower.
        arrays.append(array if array.flags.aligned else array.copy())
        offset += size
    if offset != len(body):
        raise FrameError("trailing bytes after the last array")
    return header, arrays
