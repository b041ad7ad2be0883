"""The executor's data plane: task batches over Arrow Flight, beside its HTTP control plane.

The gunicorn + Flask app (appliance/executor/app.py) keeps health, readiness, drain, /metrics and the
cache's stats, so operators, Prometheus, Terraform and Ansible reach an executor as before; the search hop
itself, once per query per executor, runs here, where a round trip costs about half the CPU of a Flask
request under gunicorn (issue 15).

A query node keeps DoExchange streams open (appliance/query/dispatch.py) and sends one task batch per
message; each message is answered by one message on the same stream (appliance/planner/plan.py has the
format), an error included, so a refused batch leaves the stream usable. Per call, the server middleware
checks the internal token (`x-appliance-token`, in constant time); per message, the drain gate counts the
batch in (or refuses it while drained, answered 503 `draining` as the HTTP path does, which the dispatcher
treats as a failed executor and reroutes), and the batch stops between tasks once its deadline passes or
the query node cancels the stream (it abandons a batch that way: a deadline, a hedge, a client gone).

The server runs in the gunicorn worker, in its own threads (gRPC's), on the worker's HTTP port plus the
`flight_port_offset` setting, and stops when the worker exits: it refuses new batches, waits a moment for
those running, then shuts down. Streams the query nodes keep open would hold a gRPC shutdown (and the
process's exit) forever, so past that moment the worker exits at once; the query nodes see their streams
break and open fresh ones to whoever serves the port next.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.flight as flight

from appliance.drain import DrainState
from appliance.errors import ApplianceError
from appliance.launch import bind_address
from appliance.planner.plan import (
    EMPTY_RESULT,
    REQUEST_ID_FIELD,
    RESULT_SCHEMA,
    WireError,
    answer_metadata,
    queries_of,
    result_batch,
)

INTERNAL_TOKEN_HEADER = "x-appliance-token"
EXIT_GRACE_SECONDS = 5.0  # how long an exiting worker lets the batches it runs finish
log = logging.getLogger("appliance.executor.flight")


BatchObserver = Callable[[str, int, float], None]  # (request id, status, seconds) of every batch answered


class BatchHandler(Protocol):
    """What runs a batch: appliance.executor.app.BatchRunner."""

    def run(self, header: dict[str, Any], queries: np.ndarray, gone: Callable[[], bool]
            ) -> tuple[np.ndarray, np.ndarray, Any]: ...


class TokenCheck(flight.ServerMiddlewareFactory):
    """Every call carries the internal token; a call without it, or with another, is refused."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token.encode()

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
        supplied = (headers.get(INTERNAL_TOKEN_HEADER) or [""])[0]
        if isinstance(supplied, str):
            supplied = supplied.encode()
        if not supplied or not hmac.compare_digest(supplied, self._token):
            raise flight.FlightUnauthenticatedError(f"missing or invalid {INTERNAL_TOKEN_HEADER}")
        return None


class SearchServer(flight.FlightServerBase):
    """DoExchange streams of task batches; nothing else."""

    def __init__(self, location: str, token: str, handler: BatchHandler, drain: DrainState,
                 on_batch: BatchObserver | None = None) -> None:
        super().__init__(location, middleware={"token": TokenCheck(token)})
        self._handler = handler
        self._drain = drain
        self._on_batch = on_batch
        self._closing = False
        self._running = threading.Condition()  # batches being answered by this server
        self._busy = 0

    def do_exchange(self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor,
                    reader: flight.MetadataRecordBatchReader, writer: flight.MetadataRecordBatchWriter) -> None:
        writer.begin(RESULT_SCHEMA)
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                return  # the query node closed the stream
            except (flight.FlightError, pa.ArrowException):
                return  # or cancelled it, or its connection broke
            counted = self._begin()
            started = time.perf_counter()
            try:
                batch, meta, status, request_id = self._run(chunk, context.is_cancelled) if counted else (
                    *_error(503, "draining", "this executor is draining; send the batch to another one"), 503, "")
                writer.write_with_metadata(batch, meta)
            except (flight.FlightError, pa.ArrowException):
                return  # nobody waits for this answer any more
            finally:
                if counted:  # once the answer is out, so a drain waits for it
                    self._end()
            if self._on_batch is not None:
                self._on_batch(request_id, status, time.perf_counter() - started)
            if self._closing:
                return  # ends the stream: the query node opens a fresh one, elsewhere if need be

    def _begin(self) -> bool:
        """Count a batch in (drain gate and this server's own count); False: refused, not counted."""
        with self._running:  # a batch either starts before close() looks (and is waited for) or is refused
            if self._closing or not self._drain.enter():
                return False
            self._busy += 1
            return True

    def _end(self) -> None:
        self._drain.leave()
        with self._running:
            self._busy -= 1
            self._running.notify_all()

    def _run(self, chunk: flight.FlightStreamChunk, gone: Callable[[], bool]) -> tuple[pa.RecordBatch, bytes, int, str]:
        """(answer, its metadata, the status it stands for, the request id) of one batch."""
        request_id = ""
        try:
            try:
                header = orjson.loads(chunk.app_metadata.to_pybytes() if chunk.app_metadata is not None else b"")
                if not isinstance(header, dict):
                    raise WireError("its header is not a JSON object")
                request_id = str(header.get(REQUEST_ID_FIELD, ""))[:64]
                if chunk.data is None:
                    raise WireError("it carries no query matrix")
                queries = queries_of(chunk.data)
            except (orjson.JSONDecodeError, WireError, pa.ArrowException) as exc:
                return (*_error(400, "invalid_input", f"malformed task batch: {exc}"), 400, request_id)
            ids, dists, stats = self._handler.run(header, queries, gone)
        except ApplianceError as exc:
            if exc.status >= 500 and exc.status not in (503, 504):
                log.error("%s on a Flight batch (request %s): %s %s", exc.code, request_id, exc.message,
                          exc.detail or "", exc_info=exc)
            return (*_error(exc.status, exc.code, exc.message, exc.detail), exc.status, request_id)
        except OSError as exc:
            # Lance and pyarrow raise OSError for an unreachable store: the batch was fine, the storage is not
            log.exception("storage unavailable on a Flight batch (request %s)", request_id)
            return (*_error(503, "storage_unavailable", "storage unavailable", str(exc)[:500]), 503, request_id)
        except Exception as exc:
            log.exception("unhandled error on a Flight batch (request %s)", request_id)
            return (*_error(500, "internal", "internal error", str(exc)[:500]), 500, request_id)
        stats_doc = {"tasks": stats.tasks, "rows_scanned": stats.rows_scanned, "seconds": stats.seconds,
                     "short": stats.short}
        return result_batch(ids, dists), answer_metadata(stats_doc, stats.payload), 200, request_id

    def close(self, grace: float) -> bool:
        """Refuse new batches, let those running finish (up to `grace` seconds), then shut down. False when
        open streams hold the shutdown (the query nodes keep idle ones): the caller's process must exit."""
        with self._running:
            self._closing = True
            self._running.wait_for(lambda: self._busy == 0, timeout=grace)
        done = threading.Thread(target=self.shutdown, name="flight-shutdown", daemon=True)
        done.start()
        done.join(0.5)
        return not done.is_alive()


def _error(status: int, code: str, message: str, detail: str | None = None) -> tuple[pa.RecordBatch, bytes]:
    doc: dict[str, object] = {"status": status, "code": code, "error": message}
    if detail:
        doc["detail"] = detail
    return EMPTY_RESULT, orjson.dumps(doc)


def start_flight_server(host: str, port: int, token: str, handler: BatchHandler, drain: DrainState,
                        on_batch: BatchObserver | None = None) -> SearchServer:
    """Serve task batches on grpc+tcp://host:port in this process (a gunicorn worker) until it exits;
    `on_batch` hears of every batch answered (metrics, the access log)."""
    server = SearchServer(f"grpc+tcp://{bind_address(host, port)}", token, handler, drain, on_batch)
    threading.Thread(target=server.serve, name="flight-server", daemon=True).start()
    log.info("serving task batches over Arrow Flight on %s:%d", host, server.port)

    def stop() -> None:
        if not server.close(EXIT_GRACE_SECONDS):
            # gRPC waits for every open stream to end, and the query nodes keep theirs open: leave now
            # (atexit handlers run last-registered first, so only those registered before this one are
            # skipped; the logs are flushed here).
            logging.shutdown()
            os._exit(0)

    atexit.register(stop)
    return server
