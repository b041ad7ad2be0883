"""The executor's HTTP surface: health, one endpoint that runs a batch of tasks, and its cache's stats.

Run it with gunicorn: `appliance serve executor` (appliance/launch.py); settings come from the environment,
its own address (`host`, `port`) too: `appliance up` sets them per executor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
from flask import Flask, Response, request

import kernels
from appliance import __version__, limits
from appliance.cache import TieredCache, cache_folder, disk_budget, ram_budget
from appliance.config import Settings
from appliance.deadline import Deadline, client_gone
from appliance.drain import drain_api, drain_state
from appliance.errors import Forbidden, InvalidInput, LimitExceeded
from appliance.executor.runner import INTERNAL_TOKEN_HEADER, BatchStats, TaskRunner, start_flight_server
from appliance.index import IndexStore
from appliance.metrics import Metrics, cache_metrics, metrics_of
from appliance.planner.plan import (
    CONTENT_TYPE,
    TIMEOUT_FIELD,
    WIRE_FIELD,
    WIRE_LEVEL,
    Finish,
    Task,
    WireError,
    decode,
    encode,
    payload_bytes,
    probes_from_header,
)
from appliance.storage import TableStore
from appliance.storage.tables import raise_if_rejected
from appliance.web import access_log, configure_logging, install_common, json_response, require_secret

FLIGHT_SEARCH_PATH = "flight:search"  # how Flight batches appear in access logs (HTTP ones: /internal/v1/search)
log = logging.getLogger("appliance.executor")

# What one task batch may ask of an executor, checked before any work (appliance/limits.py has the bounds
# checked at the edge; these leave room for what the query node adds to them: a plan's fetch_k widens by 4
# up to 3 times when post-filtered candidates come up short).
MAX_TASKS = 1_000_000  # tasks in one batch (a table's fragments, or an index's probed partitions)
MAX_FETCH_K = 64 * limits.MAX_CANDIDATES  # candidates per query vector
MAX_RESULT_CELLS = 4 * limits.MAX_REQUEST_CANDIDATES  # query vectors x candidates: ids and distances kept
MAX_DIMENSION = 65_536  # the largest vector a table may hold (appliance/storage/schema.py)


class TooExpensive(LimitExceeded):
    """The batch needed more memory than the executor could allocate: the request is to blame (k, the
    refine factor, the filter), not the executor, so it is a 4xx and the query node marks nobody down."""

    code = "request_too_expensive"


def check_batch(tasks: list[Task], queries: np.ndarray, k: int) -> None:
    """The batch's bounds, so that no query node (a buggy or an older one) can make this executor allocate
    without limit: 400 `limit_exceeded` naming the bound; and a task naming a query the batch lacks is a 400
    `invalid_input`, not an IndexError (a 500) or a negative index's silent wrap to another query."""
    limits.check_bound("tasks per batch", len(tasks), MAX_TASKS)
    limits.check_bound("partitions per batch", sum(len(t.partitions) for t in tasks), MAX_TASKS)
    limits.check_bound("k (candidates per query vector)", k, MAX_FETCH_K, low=1)
    limits.check_bound("dimension", queries.shape[1], MAX_DIMENSION, low=1)
    limits.check_bound("query vectors x k", len(queries) * k, MAX_RESULT_CELLS)
    for task in tasks:  # an older query node's tasks name their queries: rows of this batch's matrix
        if task.queries and not 0 <= min(task.queries) <= max(task.queries) < len(queries):
            raise InvalidInput(f"malformed task batch: a task names queries {min(task.queries)} to "
                               f"{max(task.queries)} of a batch of {len(queries)} query vectors")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.load()
    configure_logging(settings.log_level)
    kernels.set_thread_budget(settings.kernel_threads)
    if not settings.internal_token:
        raise RuntimeError("APPLIANCE_INTERNAL_TOKEN must be set for an executor")
    root = settings.storage_root()
    runner = TaskRunner(TableStore(root), IndexStore(root), open_cache(settings))
    app = Flask("appliance.executor")
    install_common(app, "executor", settings.max_body_bytes)
    metrics = metrics_of(app)
    metrics.add_gauges(cache_metrics(runner.cache.stats))

    # the task batch form it reads, and the Flight port once its server runs: query nodes learn them here
    advertised: dict[str, object] = {WIRE_FIELD: WIRE_LEVEL}

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok", "role": "executor", "version": __version__, **advertised})

    @app.get("/readyz")
    def readyz() -> Response:
        # 503 while drained (appliance/drain.py answers it): query nodes probe this to route around a drained
        # executor, and learn from it where its Flight server listens (none: they send batches over HTTP)
        return json_response({"ready": True, "role": "executor", "version": __version__, **advertised})

    app.register_blueprint(drain_api(app, lambda: require_secret(INTERNAL_TOKEN_HEADER, settings.internal_token,
                                                                  Forbidden)))

    batches = BatchRunner(runner, metrics, settings.search_timeout)

    @app.post("/internal/v1/search")
    def search() -> Response:
        require_secret(INTERNAL_TOKEN_HEADER, settings.internal_token, Forbidden)
        try:
            header, arrays = decode(request.get_data())
        except WireError as exc:
            raise InvalidInput(f"malformed task batch: {exc}") from exc
        if len(arrays) != 1 or arrays[0].ndim != 2 or arrays[0].dtype != np.float32:
            raise InvalidInput("a task batch carries exactly one float32 [nq, dimension] query matrix")
        ids, dists, stats = batches.run(header, arrays[0], client_gone(request.environ))
        payload = [] if stats.payload is None else [np.frombuffer(payload_bytes(stats.payload), np.uint8)]
        body = encode(
            {"tasks": stats.tasks, "rows_scanned": stats.rows_scanned, "seconds": stats.seconds,
             "short": stats.short},
            [ids, dists, *payload],
        )
        return Response(body, mimetype=CONTENT_TYPE)

    @app.get("/cache/stats")
    def cache_stats() -> Response:
        require_secret(INTERNAL_TOKEN_HEADER, settings.internal_token, Forbidden)
        return json_response({**runner.cache.stats(), "load": batches.load()})

    if settings.flight_port_offset:
        # the data plane: task batches over Arrow Flight, beside this HTTP control plane (appliance/executor/runner.py)
        try:
            def answered(request_id: str, status: int, seconds: float) -> None:
                metrics.flight_batches.labels(str(status)).inc()
                access_log({"role": "executor", "request_id": request_id, "method": "DoExchange",
                            "path": FLIGHT_SEARCH_PATH, "endpoint": FLIGHT_SEARCH_PATH, "status": status,
                            "ms": round(seconds * 1000, 2)})

            flight = start_flight_server(settings.host, settings.port + settings.flight_port_offset,
                                         settings.internal_token, batches, drain_state(app), answered)
            advertised["flight_port"] = flight.port
        except (pa.ArrowException, OSError) as exc:  # FlightError is an ArrowException
            # a port taken by another process: this executor still serves, its batches coming over HTTP
            log.error("no Arrow Flight server on %s:%d (%s); query nodes will send task batches over HTTP",
                      settings.host, settings.port + settings.flight_port_offset, exc)
    return app


class BatchRunner:
    """One task batch, whichever transport brought it: its header checked, its bounds, its deadline, and
    what the runner raises turned into the error the request deserves."""

    def __init__(self, runner: TaskRunner, metrics: Metrics, default_timeout: float) -> None:
        self._runner = runner
        self._metrics = metrics
        self._default_timeout = default_timeout
        self._lock = threading.Lock()
        self.in_flight = 0  # batches running now (the console's load column, with the process's CPU time)

    def load(self) -> dict[str, float]:
        """This worker's load: batches running now, CPU seconds used so far, and when (the console turns
        two readings into a CPU share)."""
        cpu = os.times()
        return {"batches_in_flight": self.in_flight, "cpu_seconds": round(cpu.user + cpu.system, 3),
                "time": round(time.time(), 3)}

    def run(self, header: dict[str, Any], queries: np.ndarray, gone: Callable[[], bool]
            ) -> tuple[np.ndarray, np.ndarray, BatchStats]:
        """(ids, distances, stats) of the batch. Raises ApplianceError for what the request did wrong (4xx),
        DeadlineExceeded past its deadline, Cancelled once `gone` says the query node hung up."""
        try:
            tasks = [Task.from_json(t) for t in header["tasks"]]
            k, metric, predicate = int(header["k"]), str(header["metric"]), header.get("filter")
            finish = Finish.from_header(header, k)
            probes = probes_from_header(header, len(queries))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed task batch: {exc}") from exc
        check_batch(tasks, queries, k)
        deadline = Deadline.after(_timeout_of(header, self._default_timeout), gone)
        with self._lock:
            self.in_flight += 1
        try:
            ids, dists, stats = self._runner.run(tasks, queries, k, metric, predicate, deadline.check, finish,
                                                 probes)
        except MemoryError as exc:
            raise TooExpensive("the task batch needs more memory than this executor has",
                               f"{type(exc).__name__}: {exc}"[:500]) from exc
        except (OSError, ValueError) as exc:
            # a filter that type-checked on the query node but fails on the data (bad regex, division by
            # zero) is the client's error: a 5xx here would make the dispatcher retry it elsewhere
            if predicate is not None:
                raise_if_rejected(exc)
            if isinstance(exc, ValueError):  # ArrowInvalid, a kernel's argument check, a partition not there
                raise InvalidInput("the executor refused the task batch", str(exc)[:500]) from exc
            raise
        finally:
            with self._lock:
                self.in_flight -= 1
        self._metrics.observe_batch(stats.seconds, (t.kind for t in tasks))
        return ids, dists, stats


def _timeout_of(header: dict[str, object], default: float) -> float:
    """Seconds the query node still waits for this batch (`timeout_ms`; absent from an older query node)."""
    raw = header.get(TIMEOUT_FIELD)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise InvalidInput(f"malformed task batch: {TIMEOUT_FIELD} must be a number of milliseconds")
    return float(raw) / 1000


def open_cache(settings: Settings) -> TieredCache:
    """The executor's cache. Its NVMe folder is named by the executor's port (`port` in its settings, the one
    it serves on: appliance/launch.py), which tells the executors of one machine apart and stays the same
    across a restart, so a restarted executor finds its NVMe tier again."""
    folder = cache_folder(settings.cache_dir, settings.port)
    return TieredCache(ram_budget(settings.cache_ram_bytes, settings.executors), folder,
                       disk_budget(settings.cache_disk_bytes, folder, settings.executors))
