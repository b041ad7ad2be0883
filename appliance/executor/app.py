"""The executor's HTTP surface: health, and one endpoint that runs a batch of tasks.

Run it with gunicorn: `gunicorn 'appliance.executor.app:create_app()'`; settings come from the
environment (`appliance up` sets them).
"""

from __future__ import annotations

import numpy as np
from flask import Flask, Response, request

import kernels
from appliance import __version__
from appliance.config import Settings
from appliance.errors import Forbidden, InvalidInput
from appliance.executor.runner import TaskRunner
from appliance.planner import wire
from appliance.planner.plan import Task
from appliance.storage import StorageRoot, TableStore
from appliance.web import configure_logging, install_common, json_response, require_secret

INTERNAL_TOKEN_HEADER = "x-appliance-token"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.load()
    configure_logging(settings.log_level)
    kernels.set_thread_budget(settings.kernel_threads)
    if not settings.internal_token:
        raise RuntimeError("APPLIANCE_INTERNAL_TOKEN must be set for an executor")
    runner = TaskRunner(TableStore(StorageRoot.parse(settings.data)))
    app = Flask("appliance.executor")
    install_common(app, "executor", settings.max_body_bytes)

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok", "role": "executor", "version": __version__})

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
        ids, dists, stats = runner.run(tasks, arrays[0], k, metric, predicate)
        body = wire.encode(
            {"tasks": stats.tasks, "rows_scanned": stats.rows_scanned, "seconds": stats.seconds},
            [ids, dists],
        )
        return Response(body, mimetype=wire.CONTENT_TYPE)

    return app
