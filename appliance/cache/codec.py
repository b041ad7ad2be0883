"""How a cached value becomes bytes for the NVMe tier and back, and what it costs the RAM tier.

The cache itself is agnostic: each `get` names the codec of its value. What the executors cache today (a
fragment's row ids and vectors, an IVF index object) are dicts of numpy arrays, so `ARRAYS` covers them,
stored as a frame (`appliance.storage.frames`): decoding is a zero-copy view of the bytes read from disk,
with no pickle and nothing executable in a file. A fragment's payload columns (what search results return)
are an Arrow table, stored as an Arrow IPC stream (`ARROW`).
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import numpy as np
import pyarrow as pa

from appliance.storage import frames

V = TypeVar("V")


class Codec(Protocol[V]):
    def encode(self, value: V) -> bytes: ...

    def decode(self, data: bytes) -> V:
        """Raise ValueError on bytes it cannot decode (the entry is then dropped and refetched)."""
        ...

    def nbytes(self, value: V) -> int:
        """What the value costs the RAM tier."""
        ...


class ArraysCodec:
    """A dict of named numpy arrays, e.g. `{"ids": uint64[n], "vectors": float32[n, d]}`."""

    def encode(self, value: dict[str, np.ndarray]) -> bytes:
        return frames.encode({"names": list(value)}, list(value.values()))

    def decode(self, data: bytes) -> dict[str, np.ndarray]:
        header, arrays = frames.decode(data)
        names = header.get("names")
        if not isinstance(names, list) or len(names) != len(arrays):
            raise ValueError("not a cached dict of arrays")
        return dict(zip(names, arrays, strict=True))

    def nbytes(self, value: dict[str, np.ndarray]) -> int:
        return sum(int(a.nbytes) for a in value.values())


ARRAYS = ArraysCodec()


class ArrowCodec:
    """An Arrow table (e.g. a fragment's payload columns), stored as an Arrow IPC stream: decoding is a
    zero-copy view of the bytes read from disk."""

    def encode(self, value: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        return sink.getvalue().to_pybytes()

    def decode(self, data: bytes) -> pa.Table:
        try:
            return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        except pa.ArrowException as exc:
            raise ValueError(f"not a cached Arrow table: {exc}") from exc

    def nbytes(self, value: pa.Table) -> int:
        return int(value.nbytes)


ARROW = ArrowCodec()
