"""Prometheus metrics of every node, served at `GET /metrics`.

Each Flask app gets its own registry (so several apps in one test process never collide) holding:
request counts and latency histograms per endpoint (labelled by the route's rule, `/v1/table/<name>/query/`,
never the raw path, so table names cannot blow up the label space), and whatever the role adds: executor
task-batch latency, the query node's wait per executor batch, live gauges read from the cache. `/metrics`
needs no key: it carries counts and timings, no data, and scrapers rarely send custom headers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

EXTENSION = "appliance.metrics"
METRICS_PATH = "/metrics"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The metrics of one node (one app)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        self.requests = Counter("appliance_http_requests", "HTTP requests answered, per endpoint and status.",
                                ["role", "method", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("appliance_http_request_seconds", "Seconds to answer an HTTP request, per endpoint.",
                                 ["role", "method", "endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.task_batches = Histogram("appliance_executor_batch_seconds",
                                      "Seconds an executor spent running one batch of search tasks.",
                                      buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tasks = Counter("appliance_executor_tasks", "Search tasks an executor ran, per kind.", ["kind"],
                             registry=self.registry)
        self.flight_batches = Counter("appliance_flight_batches", "Task batches an executor answered over Arrow "
                                      "Flight, per status (200, or the HTTP status its error stands for).",
                                      ["status"], registry=self.registry)
        self.dispatch = Histogram("appliance_dispatch_seconds",
                                  "Seconds a query node waited for one executor's batch, per outcome.",
                                  ["outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)

        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """One answered request. The labelled children are kept per (method, endpoint, status), a bounded set
        (endpoints are route rules): prometheus_client's `labels()` checks and locks on every call."""
        key = (method, endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(self.role, method, endpoint, str(status)),
                self.latency.labels(self.role, method, endpoint))
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, seconds: float, kinds: Iterable[str]) -> None:
        """One executor batch: its latency, and a count per task kind."""
        self.task_batches.observe(seconds)
        for kind in kinds:
            self.tasks.labels(kind).inc()

    def observe_dispatch(self, seconds: float, ok: bool) -> None:
        self.dispatch.labels("ok" if ok else "failed").observe(seconds)

    def add_gauges(self, read: Callable[[], Iterable[GaugeMetricFamily | CounterMetricFamily]]) -> None:
        """Metrics computed at scrape time (e.g. from the cache's own counters)."""
        self.registry.register(_Live(read))


class _Live(Collector):
    def __init__(self, read: Callable[[], Iterable[Any]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Any]:
        return list(self._read())


def install_metrics(app: Flask, role: str) -> Metrics:
    """Count and time every request of the app (from `g.started`, set by web.install_common's first hook)
    and serve `/metrics`; returns the app's Metrics."""
    metrics = Metrics(role)
    app.extensions[EXTENSION] = metrics

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unrouted"
        now = time.perf_counter()
        metrics.observe_request(request.method, endpoint, response.status_code, now - g.get("started", now))
        return response

    @app.get(METRICS_PATH)
    def _metrics() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"content-type": CONTENT_TYPE_LATEST})

    return metrics


def metrics_of(app: Flask) -> Metrics:
    return app.extensions[EXTENSION]


def cache_metrics(stats: Callable[[], dict[str, Any]]) -> Callable[[], list[Any]]:
    """Scrape-time metrics of an executor's tiered cache (appliance/cache/ stats): hits and misses per tier
    as counters, bytes, budget and entries per tier as gauges, object-storage fetches as a counter."""

    def read() -> list[Any]:
        doc = stats()
        hits = CounterMetricFamily("appliance_cache_hits", "Cache hits per tier.", labels=["tier"])
        misses = CounterMetricFamily("appliance_cache_misses", "Cache misses per tier.", labels=["tier"])
        size = GaugeMetricFamily("appliance_cache_bytes", "Bytes held per cache tier.", labels=["tier"])
        budget = GaugeMetricFamily("appliance_cache_budget_bytes", "Byte budget per cache tier.", labels=["tier"])
        entries = GaugeMetricFamily("appliance_cache_entries", "Entries per cache tier.", labels=["tier"])
        for tier in ("ram", "nvme"):
            t = doc.get(tier) or {}
            hits.add_metric([tier], float(t.get("hits", 0)))
            misses.add_metric([tier], float(t.get("misses", 0)))
            size.add_metric([tier], float(t.get("bytes", 0)))
            budget.add_metric([tier], float(t.get("budget", 0)))
            entries.add_metric([tier], float(t.get("entries", 0)))
        fetches = CounterMetricFamily("appliance_storage_fetches", "Objects fetched from storage on cache misses.")
        fetches.add_metric([], float((doc.get("storage") or {}).get("fetches", 0)))
        recreated = CounterMetricFamily("appliance_cache_dir_recreated",
                                        "Times the NVMe tier's folder had vanished and was made again.")
        recreated.add_metric([], float((doc.get("nvme") or {}).get("recreated", 0)))
        return [hits, misses, size, budget, entries, fetches, recreated]

    return read


def batching_metrics(counts: Callable[[], tuple[int, int]]) -> Callable[[], list[Any]]:
    """Scrape-time counters of the query node's cross-request batching (`counts()` gives (batches, searches)
    run so far): their ratio over an interval is the mean batch size under the load of that interval."""

    def read() -> list[Any]:
        batches, searches = counts()
        return [CounterMetricFamily("appliance_search_batches", "Search batches run (coalesced searches).",
                                    value=float(batches)),
                CounterMetricFamily("appliance_search_batched", "Searches run in those batches.",
                                    value=float(searches))]

    return read


def queue_metrics(stats: Callable[[], Any]) -> Callable[[], list[Any]]:
    """Scrape-time depth of the indexer event queue (`stats()` gives a QueueStats, or None when the node has
    no queue or it cannot be read): events ready, handed out to an indexer, and dead-lettered."""

    def read() -> list[Any]:
        depth = GaugeMetricFamily("appliance_indexer_queue_events", "Events in the indexer queue, per state.",
                                  labels=["state"])
        current = stats()
        if current is not None:
            for state, value in current.to_json().items():
                depth.add_metric([state], float(value))
        return [depth]

    return read


def index_metrics(tables: Callable[[], list[str]], manifest: Callable[[str], Any], ttl: float = 10.0,
                  max_tables: int = 1000) -> Callable[[], list[Any]]:
    """Scrape-time figures of each table's published IVF index: how long its build took (whoever built it:
    an indexer, `appliance index` or the API) and when it was published. Read from storage at most every
    `ttl` seconds (one small read per table), and skipped beyond `max_tables` tables."""
    cache: dict[str, Any] = {"at": -ttl, "rows": []}

    def refresh() -> list[tuple[str, str, float, float]]:
        names = tables()
        if len(names) > max_tables:
            return []
        rows = []
        for name in names:
            try:
                current = manifest(name)
            except Exception:  # a table dropped meanwhile, or an unreadable manifest: not a metric
                continue
            if current is not None:
                rows.append((name, current.kind, float(current.build_seconds), float(current.created_at)))
        return rows

    def read() -> list[Any]:
        now = time.monotonic()
        if now - cache["at"] >= ttl:
            cache["rows"], cache["at"] = refresh(), now
        seconds = GaugeMetricFamily("appliance_index_build_seconds",
                                    "Seconds the build of each table's published IVF index took.",
                                    labels=["table", "kind"])
        published = GaugeMetricFamily("appliance_index_published_timestamp_seconds",
                                      "When each table's published IVF index was built (Unix time).",
                                      labels=["table"])
        for name, kind, build, created in cache["rows"]:
            seconds.add_metric([name, kind], build)
            published.add_metric([name], created)
        return [seconds, published]

    return read
