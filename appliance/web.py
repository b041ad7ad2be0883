"""What every Flask app of the appliance shares: JSON errors, request ids, secret checks, one log line
per request.

Both fleets answer errors the same way, `{"error": ..., "code": ..., "detail": ...}` with a 4xx/5xx
status, whatever raised them (our own errors, Flask's routing errors, a body over the size limit), so no
client ever has to parse an HTML error page.
"""

from __future__ import annotations

import atexit
import functools
import hmac
import itertools
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from appliance.drain import install_gate
from appliance.errors import ApplianceError, Unauthorized
from appliance.metrics import install_metrics

REQUEST_ID_HEADER = "x-request-id"
log = logging.getLogger("appliance.http")


JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_APPEND_NEWLINE


def json_bytes(body: object) -> bytes:
    """`body` as the bytes of a JSON answer, ending with a newline: orjson (a 10-result search answer in
    1.5 us, where the stdlib's json takes 41 us), with the stdlib's meaning kept: values JSON cannot hold
    (bytes, numpy scalars, datetimes, decimals) are written as their str(), keys that are not strings
    become strings, and NaN or infinity, which JSON has no literal for, are written as null (never as the
    invalid `NaN` the stdlib writes by default). An integer beyond 64 bits, which orjson refuses, falls
    back to the stdlib (which refuses NaN there rather than write invalid JSON)."""
    try:
        return orjson.dumps(body, default=str, option=JSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(body, default=str, allow_nan=False).encode() + b"\n"


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(body), status=status, mimetype="application/json", headers=headers)


def install_common(app: Flask, role: str, max_body_bytes: int) -> None:
    """Error handlers, request ids and access logs for an app of the given role."""
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    # Flask asks inspect.iscoroutinefunction of every hook, view and error handler on every request it runs
    # (2 us each, 8 per request here); the answer per function never changes, so it is kept (bounded: a
    # function made per request, as after_this_request's, must not pile up).
    app.ensure_sync = functools.lru_cache(maxsize=512)(app.ensure_sync)  # type: ignore[method-assign]
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get(REQUEST_ID_HEADER) or _new_request_id()
        g.started = time.perf_counter()

    install_gate(app, role)  # drain: refuse new work while drained, count what is in flight (appliance/drain.py)
    install_metrics(app, role)  # request counts and latencies, GET /metrics (appliance/metrics.py)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        if request.path not in ("/healthz", "/readyz") and log.isEnabledFor(logging.INFO):
            # Only the fields are queued here; the access log thread makes and writes the line.
            _access_log.put({
                "role": role,
                "request_id": g.get("request_id"),
                "method": request.method,
                "path": request.path,
                "endpoint": request.url_rule.rule if request.url_rule is not None else None,
                "status": response.status_code,
                "ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
            })
        return response

    @app.errorhandler(ApplianceError)
    def _ours(exc: ApplianceError) -> Response:
        if exc.status >= 500 and exc.status not in (503, 504):
            # a fault of ours (a corrupt index object, executors failing): never silent, unlike a refusal
            log.error("%s on %s %s: %s %s", exc.code, request.method, request.path, exc.message, exc.detail or "",
                      exc_info=exc)
        return json_response(exc.to_json(), exc.status, exc.headers() or None)

    @app.errorhandler(HTTPException)
    def _werkzeug(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        return json_response({"error": exc.description or exc.name, "code": code}, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if isinstance(exc, OSError):
            # Lance and pyarrow raise OSError for an unreachable store, a missing bucket or refused
            # credentials: the request was fine, the storage is not, and the caller may retry.
            return json_response({"error": "storage unavailable", "code": "storage_unavailable",
                                  "detail": str(exc)[:500]}, 503)
        return json_response({"error": "internal error", "code": "internal", "detail": str(exc)[:500]}, 500)


class _RequestIds:
    """Ids of requests that bring no x-request-id: 32 hex digits, a random prefix drawn once per process (again
    in a forked child) and a counter: unique like uuid4's, for 2-3 us where uuid4 took 9-16 us (a system
    call for os.urandom and a UUID object per request; 90 us under cProfile on a loaded machine)."""

    def __init__(self) -> None:
        self._draw()
        os.register_at_fork(after_in_child=self._draw)

    def _draw(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_new_request_id = _RequestIds()


def require_secret(header: str, expected: str, error: type[ApplianceError] = Unauthorized) -> None:
    """Constant-time check of a shared secret header; `error` (401 or 403) when absent or wrong."""
    supplied = request.headers.get(header, "")
    if not supplied:
        raise error(f"missing {header} header")
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise error(f"invalid {header}")


class _JsonLine:
    """A log line's fields, written as JSON only when (and where) the line is formatted."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, object]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return orjson.dumps(self.fields, default=str).decode()


class _AccessLog:
    """The per-request log lines, made and written off the request thread: a request queues its fields
    (a fraction of a microsecond), and one thread per process turns them into `appliance.http` records.
    Measured per line in the calling thread: 16 us written there (logging's record, the JSON, the
    handler's lock and the write), 9 us through logging's queue handler (the record still made there),
    under 1 us queued this way. Lines still queued at exit are written then."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[dict[str, object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0  # the process whose thread runs (a forked child starts its own)
        self._thread: threading.Thread | None = None

    def put(self, fields: dict[str, object]) -> None:
        if self._pid != os.getpid():
            self._start()
        self._queue.put(fields)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, args=(self._queue,), name="access-log", daemon=True)
            self._thread.start()
            atexit.register(self.flush)
            self._pid = os.getpid()

    @staticmethod
    def _run(lines: queue.SimpleQueue[dict[str, object] | None]) -> None:
        while (fields := lines.get()) is not None:
            log.info("%s", _JsonLine(fields))

    def flush(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the thread (at exit; a later line starts it again)."""
        with self._lock:
            if self._pid != os.getpid():
                return
            self._queue.put(None)
            self._thread.join(timeout)
            self._pid = 0


_access_log = _AccessLog()


def access_log(fields: dict[str, object]) -> None:
    """One access-log line for work that did not come over HTTP (an executor's Arrow Flight batches), in
    the same JSON shape as the per-request lines and written off the calling thread like them."""
    if log.isEnabledFor(logging.INFO):
        _access_log.put(fields)


class _HandOff(logging.handlers.QueueHandler):
    """Queues records as they are: the listener's thread formats and writes them. (The stdlib's
    QueueHandler formats in the caller's thread, for queues that cross processes; this one does not.)"""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str) -> None:
    """Log lines to stderr, written by one background thread: a request thread only queues its record.

    Measured on the query node under 8 clients, the per-request line written in the request thread (the
    handler's lock, formatting, the write to stderr) was 21% of the node's CPU samples and held requests
    behind one lock; queued, a request pays for building the record only. Lines still queued when the
    process exits are written then (atexit); a process killed with SIGKILL loses at most those."""
    global _listener
    root = logging.getLogger()
    if root.handlers:  # configured already (a second app in this process, or a test's capture)
        return
    root.setLevel(level.upper())
    # faiss's loader logs at INFO each CPU variant it tries ("Could not load library with AVX2 support due to:
    # ModuleNotFoundError..."): harmless (the wheel ships one build and falls back to it), yet it reads as an
    # error in every node's and indexer's log. Its warnings and errors still show.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.addHandler(_HandOff(records))
    _listener = logging.handlers.QueueListener(records, stream, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
