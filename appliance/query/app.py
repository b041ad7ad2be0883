"""The query node's Flask app.

Run it with gunicorn: `gunicorn 'appliance.query.app:create_app()'`; settings come from the environment
(`appliance up` sets them). The node keeps no state of its own: tables are in storage, executor health is
re-learned by probing.
"""

from __future__ import annotations

from flask import Flask, Response, request

from appliance import __version__
from appliance.config import Settings
from appliance.drain import drain_api
from appliance.errors import ApplianceError
from appliance.index import IndexStore
from appliance.metrics import batching_metrics, index_metrics, metrics_of, queue_metrics
from appliance.planner.plan import Routing
from appliance.query.admin import admin_api
from appliance.query.api import native_api
from appliance.query.auth import ApiKeys, read_key_hashes, require_admin, resolve_api_key
from appliance.query.catalog import IndexCatalog
from appliance.query.console import console_api, is_console_path, with_console_paths
from appliance.query.dispatch import Dispatcher
from appliance.query.indexing import attach_indexer_events
from appliance.query.lancedb import Limits, lancedb_api
from appliance.query.openapi import openapi_document
from appliance.query.recall import RecallMonitor
from appliance.query.service import QueryService
from appliance.routing.membership import Membership
from appliance.routing.sources import source_of
from appliance.storage import BlobStore, TableStore
from appliance.web import configure_logging, install_common, json_response

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")
ADMIN_PREFIX = "/admin/"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.load()
    configure_logging(settings.log_level)
    if not settings.internal_token:
        raise RuntimeError("APPLIANCE_INTERNAL_TOKEN must be set for a query node")
    root = settings.storage_root()
    api_key = resolve_api_key(settings, BlobStore(root))
    admin_key = settings.admin_key or api_key
    api_keys = ApiKeys(api_key, read_key_hashes(settings.api_keys_file) if settings.api_keys_file else [])
    membership = Membership(source_of(settings), interval=settings.health_interval,
                            poll=settings.membership_poll_seconds, prewarm_seconds=settings.membership_prewarm_seconds)
    dispatcher = Dispatcher(membership, settings.internal_token, settings.request_timeout, settings.routing_eps,
                            search_timeout=settings.search_timeout)
    membership.prewarm = dispatcher.prewarm  # a joining executor loads its groups before the ring takes it
    membership.start()
    service = QueryService(TableStore(root, settings.version_check_seconds), dispatcher, IndexCatalog(IndexStore(root)),
                           batch_rows=settings.search_batch_rows, batches_inflight=settings.search_batches_inflight)
    service.routing = Routing.from_settings(settings)
    service.build_threads = settings.build_threads
    service.recall_monitor = RecallMonitor(lambda name, request: service.table(name).exact_ids(request),
                                           settings.recall_sample_rate, settings.recall_sample_per_second,
                                           settings.recall_window, settings.recall_budget)
    attach_indexer_events(service, settings, root)

    app = Flask("appliance.query")
    install_common(app, "query", settings.max_body_bytes)
    metrics = metrics_of(app)
    dispatcher.on_batch = metrics.observe_dispatch
    if service.coalescer is not None:
        coalescer = service.coalescer
        metrics.add_gauges(batching_metrics(lambda: (coalescer.batches, coalescer.items)))
    metrics.add_gauges(queue_metrics(lambda: service.events.stats() if service.events is not None else None))
    metrics.add_gauges(index_metrics(service.list_tables, service.catalog.indexes.current))
    metrics.add_gauges(service.recall_monitor.gauges)

    @app.before_request
    def _authenticate() -> None:
        if request.path.startswith(ADMIN_PREFIX):
            require_admin(admin_key)
        elif request.path not in PUBLIC_PATHS and not is_console_path(request.path):  # pages without data
            api_keys.require()

    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok", "role": "query", "version": __version__})

    @app.get("/openapi.json")
    def openapi() -> Response:
        return json_response(with_console_paths(openapi_document(__version__)))

    @app.get("/readyz")
    def readyz() -> Response:
        problems = []
        try:
            root.check_reachable()
        except ApplianceError as exc:
            problems.append(f"{exc.message}: {exc.detail}")
        live = membership.live()
        if not live:
            problems.append("no executor is healthy")
        body = {"ready": not problems, "problems": problems, "executors_live": len(live),
                "executors": len(membership.ring.nodes), "version": __version__}
        return json_response(body, 200 if not problems else 503)

    @app.get("/admin/ring")
    def ring() -> Response:
        return json_response(membership.describe())

    app.register_blueprint(console_api(app, lambda: membership.ring,
                                       lambda: service.events.stats() if service.events is not None else None))
    app.register_blueprint(admin_api(membership, settings.internal_token))
    app.register_blueprint(drain_api(app, lambda: require_admin(admin_key)))
    app.register_blueprint(native_api(service, settings.max_k, settings.max_query_vectors,
                                      settings.max_batch_rows))
    app.register_blueprint(lancedb_api(service, Limits(settings.max_k, settings.max_query_vectors,
                                                       settings.max_batch_rows)))
    return app
