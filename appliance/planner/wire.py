"""The query node <-> executor wire format, on both transports.

A task batch's header holds its tasks, k, the metric, the filter, `timeout_ms` (the time the query node
still waits for it, appliance/deadline.py, from which the executor makes its own deadline) and the
request id. Over HTTP (`POST /internal/v1/search`) the header and the float32 query matrix travel as one
frame (appliance/storage/frames.py), and so do the answer's ids and distances.

Over Arrow Flight (appliance/executor/flight.py, appliance/routing/flight_client.py) one batch is one
message of a DoExchange stream: the header, as JSON, is the message's app_metadata, and the query matrix is
a record batch of one `vector: list<float32>` column (a variable list, so one stream schema serves every
dimension), built and read without copying the floats. The answer is a record batch of `ids: uint64` and
`distances: float32`, nq x k flattened row by row, whose app_metadata holds the batch's stats; or, when the
executor refused or failed the batch, an empty batch whose app_metadata is `{"status", "code", "error",
"detail"}` (an HTTP status and the JSON error the HTTP path would have answered), so the stream stays
usable for the next batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from appliance.storage.frames import FrameError as WireError
from appliance.storage.frames import decode, encode

CONTENT_TYPE = "application/x-appliance-tasks"
TIMEOUT_FIELD = "timeout_ms"
REQUEST_ID_FIELD = "request_id"

QUERY_SCHEMA = pa.schema([pa.field("vector", pa.list_(pa.float32()), nullable=False)])
RESULT_SCHEMA = pa.schema([pa.field("ids", pa.uint64(), nullable=False),
                           pa.field("distances", pa.float32(), nullable=False)])
EMPTY_RESULT = pa.record_batch([pa.array([], pa.uint64()), pa.array([], pa.float32())], schema=RESULT_SCHEMA)


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


__all__ = ["CONTENT_TYPE", "EMPTY_RESULT", "QUERY_SCHEMA", "REQUEST_ID_FIELD", "RESULT_SCHEMA", "TIMEOUT_FIELD",
           "WireError", "decode", "encode", "queries_batch", "queries_of", "result_batch", "result_of"]
