"""The web console of a query node (`/` and `/console`) and Swagger UI for `/openapi.json` (`/docs`).

Everything the browser loads ships in the package (appliance/query/static/, and Swagger UI's files from the
`flask-swagger-ui` package), so the console works on a machine with no Internet access. The pages are
public (they hold no data); the console signs in with an API key, which it keeps in the browser's
sessionStorage and sends as `x-api-key` on every call of the ordinary API, so it can do nothing the key
could not do with curl. Admin panels call `/admin/*` and say "needs the admin key" when refused.

Every answer of this blueprint carries a strict Content-Security-Policy: scripts, styles, images and
connections only from the node itself, no inline script or style (the HTML holds none), no framing.
Swagger UI draws its icons as data: images, so /docs also allows `img-src data:`.

`GET /admin/stats` is what the console polls for its charts: this worker's cumulative count, sum and
histogram of search latencies (the console turns the differences between polls into QPS and latency
quantiles), the event queue's counts, and each executor's share of the routing ring.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, request, send_from_directory

from appliance.metrics import LATENCY_BUCKETS, metrics_of
from appliance.query.openapi import _op
from appliance.routing.ring import HashRing, _hash64
from appliance.web import json_response

STATIC = Path(str(resources.files("appliance.query") / "static"))
CONSOLE_PATHS = ("/", "/console", "/docs", "/favicon.ico")
CONSOLE_PREFIXES = ("/console/", "/docs/")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_CSP = CSP.replace("img-src 'self'", "img-src 'self' data:")
SEARCH_ENDPOINTS = ("/search", "/query/", "/query")
LATENCY_METRIC = "appliance_http_request_seconds"


def is_console_path(path: str) -> bool:
    """Whether `path` is a page or asset of the console or of /docs (public: they carry no data)."""
    return path in CONSOLE_PATHS or path.startswith(CONSOLE_PREFIXES)


def swagger_ui_dir() -> Path | None:
    """Swagger UI's own files (dist/, Swagger UI 5, which reads OpenAPI 3.1) as shipped in the
    `flask-swagger-ui` package, or None where it is not installed. Only its files are used: its page
    template has an inline script, which the CSP forbids, so /docs serves static/docs.html instead."""
    try:
        spec = importlib.util.find_spec("flask_swagger_ui")
    except ImportError:
        return None
    if spec is None or spec.origin is None:
        return None
    dist = Path(spec.origin).parent / "dist"
    return dist if (dist / "swagger-ui-bundle.js").is_file() else None


def console_api(app: Flask, ring: Callable[[], HashRing], queue_stats: Callable[[], Any]) -> Blueprint:
    bp = Blueprint("console", __name__)
    swagger = swagger_ui_dir()

    @bp.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = DOCS_CSP if request.path.startswith("/docs") else CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @bp.get("/")
    @bp.get("/console")
    def index() -> Response:
        return send_from_directory(STATIC, "console.html", max_age=0)

    @bp.get("/console/<path:name>")
    def asset(name: str) -> Response:
        return send_from_directory(STATIC, name, max_age=0)

    @bp.get("/favicon.ico")
    def favicon() -> Response:
        return send_from_directory(STATIC, "favicon.svg", mimetype="image/svg+xml", max_age=3600)

    @bp.get("/docs")
    def docs() -> Response:
        if swagger is None:
            return json_response({"error": "Swagger UI is not installed (pip install flask-swagger-ui); "
                                           "the API's description is at /openapi.json", "code": "not_found"}, 404)
        return send_from_directory(STATIC, "docs.html", max_age=0)

    @bp.get("/docs/<path:name>")
    def docs_asset(name: str) -> Response:
        if swagger is None:
            return json_response({"error": "Swagger UI is not installed", "code": "not_found"}, 404)
        return send_from_directory(swagger, name, max_age=3600)

    @bp.get("/admin/stats")
    def stats() -> Response:
        queue = queue_stats()
        return json_response({
            "pid": os.getpid(),  # each gunicorn worker counts its own requests: the console keeps one baseline per pid
            "time": time.time(),
            "search": search_latency(metrics_of(app).registry),
            "queue": None if queue is None else {"ready": queue.ready, "in_flight": queue.in_flight,
                                                 "dead": queue.dead},
            "ring": ring_shares(ring()),
        })

    return bp


def search_latency(registry: Any) -> dict[str, Any]:
    """The cumulative latency histogram of every search endpoint of this worker, summed over tables and
    fronts: count, sum of seconds, and [upper bound, cumulative count] per bucket."""
    count, total = 0.0, 0.0
    buckets = dict.fromkeys([*LATENCY_BUCKETS, float("inf")], 0.0)
    for family in registry.collect():
        if family.name != LATENCY_METRIC:
            continue
        for sample in family.samples:
            if not sample.labels.get("endpoint", "").endswith(SEARCH_ENDPOINTS):
                continue
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
    return {"count": count, "sum": total,
            "buckets": [[None if le == float("inf") else le, n] for le, n in sorted(buckets.items())]}


def ring_shares(ring: HashRing) -> dict[str, float]:
    """Each node's share of the hash space (the fraction of keys, tables' fragments and partitions, whose
    first choice it is), measured on the ring's points."""
    nodes = ring.nodes
    if not nodes:
        return {}
    span = 2 ** 64
    points = sorted((_point(node, i), node) for node in nodes for i in range(_vnodes(ring)))
    hashes = [h for h, _ in points]
    shares = dict.fromkeys(nodes, 0.0)
    for i, (h, node) in enumerate(points):
        previous = hashes[i - 1] if i else hashes[-1] - span  # the arc up to a point belongs to it
        shares[node] += (h - previous) / span
    return {node: round(share, 4) for node, share in shares.items()}


def _vnodes(ring: HashRing) -> int:
    return getattr(ring, "_vnodes", 128)


def _point(node: str, i: int) -> int:
    return _hash64(f"{node}#{i}")


def with_console_paths(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with this blueprint's pages and `/admin/stats` added."""
    html = {"media": "text/html", "tag": "console", "public": True}
    return {**doc, "paths": {**doc["paths"], **{
        "/": {"get": _op("The web console (sign in with the API key)", **html)},
        "/console": {"get": _op("The web console", **html)},
        "/docs": {"get": _op("Swagger UI for /openapi.json", **html)},
        "/favicon.ico": {"get": _op("The console's icon", tag="console", public=True, media="image/svg+xml")},
        "/admin/stats": {"get": _op("What the console charts: this worker's cumulative search latency "
                                    "histogram, the event queue's counts, each executor's ring share",
                                    tag="admin", admin=True)},
    }}}
