"""The executor's HTTP surface: health, one endpoint that runs a batch of tasks, and its cache's stats.

Run it with gunicorn: `gunicorn 'appliance.executor.app:create_app()'`; settings come from the
environment (`appliance up` sets them).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from flask import Flask, Response, request

import kernels
from appliance import __version__
from appliance.cache import TieredCache, cache_folder, disk_budget, ram_budget
from appliance.config import Settings
from appliance.drain import drain_api
from appliance.errors import Forbidden, InvalidInput
from appliance.executor.runner import TaskRunner
from appliance.index import IndexStore
from appliance.metrics import cache_metrics, metrics_of
from appliance.planner import wire
from appliance.planner.plan import Task
from appliance.storage import TableStore
from appliance.storage.tables import raise_if_rejected
from appliance.web import configure_logging, install_common, json_response, require_secret

INTERNAL_TOKEN_HEADER = "x-appliance-token"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.load()
    configure_logging(settings.log_level)
    kernels.set_thread_budget(settings.kernel_threads)
    if not settings.internal_token:
        raise RuntimeError("APPLIANCE_INTERNAL_TOKEN must be set for an executor")
    root = settings.storage_root()
    runner = TaskRunner(TableStore(root), IndexStore(root), open_cache(settings, bound_port(sys.argv, settings.port)))
    app = Flask("appliance.executor")
    install_common(app, "executor", settings.max_body_bytes)
    metrics = metrics_of(app)
    metrics.add_gauges(cache_metrics(runner.cache.stats))

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok", "role": "executor", "version": __version__})

    @app.get("/readyz")
    def readyz() -> Response:
        # 503 while drained (appliance/drain.py answers it): query nodes probe this to route around a drained executor
        return json_response({"ready": True, "role": "executor", "version": __version__})

    app.register_blueprint(drain_api(app, lambda: require_secret(INTERNAL_TOKEN_HEADER, settings.internal_token,
                                                                  Forbidden)))

    @app.post("/internal/v1/search")
    def search() -> Response:
        require_secret(INTERNAL_TOKEN_HEADER, settings.internal_token, Forbidden)
        try:
            header, arrays = wire.decode(request.get_data())
        except wire.WireError as exc:
            raise InvalidInput(f"malformed task batch: {exc}") from exc
        if len(arrays) != 1 or arrays[0].ndim != 2 or arrays[0].dtype != np.float32:
            raise InvalidInput("a task batch carries exactly one float32 [nq, dimension] query matrix")
        try:
            tasks = [Task.from_json(t) for t in header["tasks"]]
            k, metric, predicate = int(header["k"]), str(header["metric"]), header.get("filter")
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed task batch: {exc}") from exc
        try:
            ids, dists, stats = runner.run(tasks, arrays[0], k, metric, predicate)
        except (OSError, ValueError) as exc:
            # a filter that type-checked on the query node but fails on the data (bad regex, division by
            # zero) is the client's error: a 5xx here would make the dispatcher mark every executor down
            if predicate is not None:
                raise_if_rejected(exc)
            raise
        metrics.observe_batch(stats.seconds, (t.kind for t in tasks))
        body = wire.encode(
            {"tasks": stats.tasks, "rows_scanned": stats.rows_scanned, "seconds": stats.seconds},
            [ids, dists],
        )
        return Response(body, mimetype=wire.CONTENT_TYPE)

    @app.get("/cache/stats")
    def cache_stats() -> Response:
        require_secret(INTERNAL_TOKEN_HEADER, settings.internal_token, Forbidden)
        return json_response(runner.cache.stats())

    return app


def open_cache(settings: Settings, port: int) -> TieredCache:
    folder = cache_folder(settings.cache_dir, port)
    return TieredCache(ram_budget(settings.cache_ram_bytes, settings.executors), folder,
                       disk_budget(settings.cache_disk_bytes, folder, settings.executors))


def bound_port(argv: Sequence[str], default: int) -> int:
    """The port gunicorn serves this executor on (`--bind host:port`, as `appliance up` and `appliance serve`
    start it): the one thing that tells the executors of one machine apart, and stays the same across a
    restart, so it names the executor's cache folder. `default` when not started that way."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("--bind", "-b") and value.rpartition(":")[2].isdigit():
            return int(value.rpartition(":")[2])
    return default
