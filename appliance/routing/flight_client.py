"""Open Arrow Flight streams from a query node to its executors: the search hop's data plane.

Per executor the pool keeps one FlightClient (one gRPC channel, which multiplexes its calls over one
connection) and idle DoExchange streams on it, last used first; a task batch takes a stream, writes one
message (the batch) and reads one (its answer), and gives the stream back (appliance/planner/plan.py has
the messages, appliance/executor/flight.py the server). An answer the executor decided, an error included,
leaves the stream usable.

Every way the transport can fail (refused, reset, cancelled, timed out, refused our token, a stream that
ends) becomes one exception, `StreamBroken` (an OSError, as the HTTP transport's failures are), in one
place, `transport_errors`; the stream that failed is dropped, and with it the executor's channel and idle
streams, since they are likely on the same dead connection (an executor killed and restarted). A stream
taken from the pool that fails is retried once on a fresh one, as appliance/routing/connections.py retries
a reused keep-alive connection, since it may have been broken while idle; searches are read-only, so
sending a batch again is safe.

A batch can be abandoned from another thread (`InFlight.abort`, a deadline or a hedge): its stream is
cancelled, which unblocks the thread reading it at once and tells the executor, which stops the batch at
its next task.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.flight as flight

from appliance.planner.plan import QUERY_SCHEMA, split_metadata
from appliance.routing.connections import InFlight

INTERNAL_TOKEN_HEADER = b"x-appliance-token"
_DESCRIPTOR = flight.FlightDescriptor.for_command(b"search")


class StreamBroken(ConnectionError):
    """The executor could not be reached over Flight, or its stream broke before the answer came."""


@contextlib.contextmanager
def transport_errors() -> Iterator[None]:
    """Turn every transport failure of a Flight call into StreamBroken (the one mapping of them)."""
    try:
        yield
    except StopIteration as exc:
        raise StreamBroken("the executor ended the stream") from exc
    except flight.FlightError as exc:  # unavailable, cancelled, timed out, unauthenticated, internal, server
        raise StreamBroken(f"{type(exc).__name__}: {_first_line(exc)}") from exc
    except (pa.ArrowException, OSError) as exc:  # ArrowIOError and friends: the connection itself
        raise StreamBroken(f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).split(". gRPC client debug context", 1)[0][:200]


@dataclass(eq=False)
class _Stream:
    client: flight.FlightClient
    writer: flight.FlightStreamWriter
    reader: flight.FlightStreamReader
    generation: int

    def close(self) -> None:
        """Cancel the call and close its writer (which then has nothing to say on its way out)."""
        for step in (self.reader.cancel, self.writer.close):
            try:
                step()
            except Exception:  # noqa: BLE001, S110 - closing a cancelled stream: nothing left to tell anyone
                pass


@dataclass
class _Executor:
    client: flight.FlightClient | None = None
    generation: int = 0
    idle: list[_Stream] = field(default_factory=list)


class FlightStreams:
    """Idle DoExchange streams per executor location (`grpc+tcp://host:port`), shared by the threads using it."""

    def __init__(self, token: str, max_idle: int = 32) -> None:
        self._options = flight.FlightCallOptions(headers=[(INTERNAL_TOKEN_HEADER, token.encode())])
        self._max_idle = max_idle
        self._executors: dict[str, _Executor] = {}
        self._lock = threading.Lock()

    def exchange(self, location: str, header: dict[str, Any], batch: pa.RecordBatch, call: InFlight
                 ) -> tuple[dict[str, Any], pa.RecordBatch, bytes | None]:
        """(app_metadata's JSON document, record batch, the payload bytes after the document or None)
        answering one message (answer_metadata). Raises StreamBroken when the executor cannot be
        reached or the stream breaks (or `call` is aborted)."""
        meta = orjson.dumps(header)
        stream, reused = self._checkout(location)
        try:
            answer = self._round_trip(stream, meta, batch, call)
        except StreamBroken:
            if call.aborted:  # cancelled by us: the executor and its other streams are fine
                stream.close()
                raise
            self._discard(location, stream)
            if not reused:
                raise
            stream, _ = self._checkout(location)  # a fresh channel and stream: the pooled one was stale
            try:
                answer = self._round_trip(stream, meta, batch, call)
            except StreamBroken:
                self._discard(location, stream)
                raise
        if call.detach():
            self._checkin(location, stream)
        else:
            stream.close()  # abandoned after all: it may be cancelled under us, so never reuse it
        return answer

    def close(self) -> None:
        with self._lock:
            executors, self._executors = self._executors, {}
        for executor in executors.values():
            for stream in executor.idle:
                stream.close()
            if executor.client is not None:
                executor.client.close()

    def _round_trip(self, stream: _Stream, meta: bytes, batch: pa.RecordBatch, call: InFlight
                    ) -> tuple[dict[str, Any], pa.RecordBatch, bytes | None]:
        with transport_errors():
            try:
                call.on_abort(stream.reader.cancel)
            except ConnectionAbortedError as exc:
                raise StreamBroken("the batch was abandoned") from exc
            stream.writer.write_with_metadata(batch, meta)
            chunk = stream.reader.read_chunk()
        try:
            doc, payload = split_metadata(chunk.app_metadata.to_pybytes()) if chunk.app_metadata is not None else (
                {}, None)
        except orjson.JSONDecodeError as exc:
            raise StreamBroken(f"the executor answered metadata that is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or chunk.data is None:
            raise StreamBroken("the executor answered a message that is not an answer")
        return doc, chunk.data, payload

    def _checkout(self, location: str) -> tuple[_Stream, bool]:
        with self._lock:
            executor = self._executors.setdefault(location, _Executor())
            if executor.idle:
                return executor.idle.pop(), True
            if executor.client is None:
                executor.client = flight.FlightClient(location)
            client, generation = executor.client, executor.generation
        with transport_errors():
            writer, reader = client.do_exchange(_DESCRIPTOR, options=self._options)
            writer.begin(QUERY_SCHEMA)
        return _Stream(client, writer, reader, generation), False

    def _checkin(self, location: str, stream: _Stream) -> None:
        with self._lock:
            executor = self._executors.get(location)
            current = executor is not None and executor.generation == stream.generation
            if current and executor is not None and len(executor.idle) < self._max_idle:
                executor.idle.append(stream)
                return
        stream.close()

    def _discard(self, location: str, stream: _Stream) -> None:
        """Drop a broken stream and, when it was on the current channel, the channel and its idle streams:
        the next batch connects afresh (to a restarted executor, or finds it gone)."""
        stream.close()
        with self._lock:
            executor = self._executors.get(location)
            if executor is None or executor.generation != stream.generation:
                return
            stale, executor.idle = executor.idle, []
            executor.client = None  # closed once the streams still running on it are done
            executor.generation += 1
        for old in stale:
            old.close()
