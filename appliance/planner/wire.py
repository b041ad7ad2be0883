"""The query node <-> executor wire format, on both transports.

A task batch's header holds its tasks, k (candidates per query), the metric, the filter, `timeout_ms` (the
time the query node still waits for it, appliance/deadline.py, from which the executor makes its own
deadline), the request id, and how the executor finishes its candidates (`finish`: results kept per
query, and whether to drop deleted rows, post-filter, refine with exact vectors) and which payload
columns it returns for the results it keeps (`columns`). Over HTTP (`POST /internal/v1/search`) the
header and the float32 query matrix travel as one frame (appliance/storage/frames.py), and so do the
answer's ids, distances and payload (the Arrow IPC stream's bytes as a third, uint8, array).

Over Arrow Flight (appliance/executor/flight.py, appliance/routing/flight_client.py) one batch is one
message of a DoExchange stream: the header, as JSON, is the message's app_metadata, and the query matrix is
a record batch of one `vector: list<float32>` column (a variable list, so one stream schema serves every
dimension), built and read without copying the floats. The answer is a record batch of `ids: uint64` and
`distances: float32`, nq x kept flattened row by row, whose app_metadata holds the batch's stats (JSON),
followed, when payload columns were asked for, by a newline and an Arrow IPC stream of one record batch:
the columns of the found results (ids not NO_ID) in that order (`answer_metadata`, `split_metadata`;
one stream has one schema, and the columns change from batch to batch); or, when the
executor refused or failed the batch, an empty batch whose app_metadata is `{"status", "code", "error",
"detail"}` (an HTTP status and the JSON error the HTTP path would have answered), so the stream stays
usable for the next batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from appliance.cache.codec import ARROW
from appliance.storage.frames import FrameError as WireError
from appliance.storage.frames import decode, encode

CONTENT_TYPE = "application/x-appliance-tasks"
TIMEOUT_FIELD = "timeout_ms"
REQUEST_ID_FIELD = "request_id"

QUERY_SCHEMA = pa.schema([pa.field("vector", pa.list_(pa.float32()), nullable=False)])
RESULT_SCHEMA = pa.schema([pa.field("ids", pa.uint64(), nullable=False),
                           pa.field("distances", pa.float32(), nullable=False)])
EMPTY_RESULT = pa.record_batch([pa.array([], pa.uint64()), pa.array([], pa.float32())], schema=RESULT_SCHEMA)


@dataclass(frozen=True)
class Finish:
    """How an executor finishes a batch's candidates before answering (the header's `finish` and
    `columns`): keep the best `keep` per query of those that survive dropping rows deleted at the pinned
    version (`verify`) and rows failing the batch's filter (`postfilter`), ranked by exact distance when
    `refine`; and return the payload `columns` of the rows kept. A header without `finish` (a query node of
    an older version) asks for the candidates as they are: keep = k, nothing dropped, no columns."""

    keep: int
    refine: bool = False
    verify: bool = False
    postfilter: bool = False
    columns: tuple[str, ...] = ()

    @property
    def drops(self) -> bool:
        """Whether finishing looks up the candidates' rows (refine, verify or post-filter)."""
        return self.refine or self.verify or self.postfilter

    def to_header(self) -> dict[str, Any]:
        return {"finish": {"keep": self.keep, "refine": self.refine, "verify": self.verify,
                           "postfilter": self.postfilter}, "columns": list(self.columns)}

    @classmethod
    def from_header(cls, header: dict[str, Any], k: int) -> Finish:
        """ValueError when the fields are malformed or keep exceeds k."""
        doc = header.get("finish")
        columns = header.get("columns") or []
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ValueError("columns must be a list of column names")
        if doc is None:
            return cls(k, columns=tuple(columns))
        if not isinstance(doc, dict):
            raise ValueError("finish must be an object")
        keep = doc.get("keep")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= k:
            raise ValueError(f"finish.keep must be an integer from 1 to k ({k}), got {keep!r}")
        flags = [doc.get(name, False) for name in ("refine", "verify", "postfilter")]
        if not all(isinstance(flag, bool) for flag in flags):
            raise ValueError("finish.refine, .verify and .postfilter are booleans")
        return cls(keep, *flags, columns=tuple(columns))


def queries_batch(queries: np.ndarray) -> pa.RecordBatch:
    """A float32 [nq, dimension] matrix as a record batch of one list<float32> column, sharing its memory."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq, dimension = queries.shape
    offsets = pa.array(np.arange(0, (nq + 1) * dimension, dimension, dtype=np.int32))
    return pa.record_batch([pa.ListArray.from_arrays(offsets, pa.array(queries.reshape(-1)))], schema=QUERY_SCHEMA)


def queries_of(batch: pa.RecordBatch) -> np.ndarray:
    """The query matrix of a record batch made by `queries_batch`, without copying. WireError when the
    batch is not one list<float32> column of vectors of one dimension."""
    if batch.schema != QUERY_SCHEMA:
        raise WireError(f"a task batch carries one column vector: list<float32>, not {batch.schema}")
    column = batch.column(0)
    nq = len(column)
    if nq == 0 or column.null_count:
        raise WireError("a task batch carries at least one query vector, and no null ones")
    offsets = column.offsets.to_numpy()
    dimension = int(offsets[1] - offsets[0])
    if dimension < 1 or np.any(np.diff(offsets) != dimension):
        raise WireError("the query vectors of a task batch all have the same dimension, at least 1")
    values = column.values.slice(int(offsets[0]), nq * dimension)
    if values.null_count:
        raise WireError("a query vector holds a null")
    return values.to_numpy(zero_copy_only=True).reshape(nq, dimension)


def result_batch(ids: np.ndarray, distances: np.ndarray) -> pa.RecordBatch:
    """An nq x k answer as a record batch of two flat columns, sharing the arrays' memory."""
    return pa.record_batch([pa.array(np.ascontiguousarray(ids, np.uint64).reshape(-1)),
                            pa.array(np.ascontiguousarray(distances, np.float32).reshape(-1))],
                           schema=RESULT_SCHEMA)


def result_of(batch: pa.RecordBatch, nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, distances), each [nq, k], of an answer made by `result_batch`. WireError when its shape is not."""
    if batch.schema != RESULT_SCHEMA or batch.num_rows != nq * k:
        raise WireError(f"an answer of {nq} x {k} candidates expected, got {batch.num_rows} rows of {batch.schema}")
    ids = batch.column(0).to_numpy(zero_copy_only=True).reshape(nq, k)
    distances = batch.column(1).to_numpy(zero_copy_only=True).reshape(nq, k)
    return ids, distances


def payload_bytes(payload: pa.Table) -> bytes:
    """An answer's payload columns as an Arrow IPC stream (one record batch)."""
    return ARROW.encode(payload.combine_chunks())


def payload_of(data: bytes | memoryview | np.ndarray, rows: int) -> pa.Table:
    """The payload columns of an answer (`payload_bytes`), `rows` of them. WireError when they are not."""
    try:
        table = ARROW.decode(data)  # type: ignore[arg-type]
    except ValueError as exc:
        raise WireError(f"the answer's payload is not an Arrow IPC stream: {exc}") from exc
    if table.num_rows != rows:
        raise WireError(f"the answer's payload holds {table.num_rows} rows for {rows} results")
    return table


def answer_metadata(doc: dict[str, object], payload: pa.Table | None) -> bytes:
    """A Flight answer's app_metadata: the JSON document, then a newline and the payload's IPC bytes."""
    head = orjson.dumps(doc)
    return head if payload is None else head + b"\n" + payload_bytes(payload)


def split_metadata(meta: bytes) -> tuple[dict[str, object], bytes | None]:
    """(JSON document, payload IPC bytes or None) of `answer_metadata`'s bytes (JSON holds no raw newline).
    orjson.JSONDecodeError when the document is not JSON."""
    head, newline, tail = meta.partition(b"\n")
    return orjson.loads(head), tail if newline else None


__all__ = ["CONTENT_TYPE", "EMPTY_RESULT", "QUERY_SCHEMA", "REQUEST_ID_FIELD", "RESULT_SCHEMA", "TIMEOUT_FIELD",
           "Finish", "WireError", "answer_metadata", "decode", "encode", "payload_bytes", "payload_of", "queries_batch",
           "queries_of", "result_batch", "result_of", "split_metadata"]
