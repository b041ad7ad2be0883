"""What every Flask app of the appliance shares: JSON errors, request ids, secret checks, one log line
per request.

Both fleets answer errors the same way, `{"error": ..., "code": ..., "detail": ...}` with a 4xx/5xx
status, whatever raised them (our own errors, Flask's routing errors, a body over the size limit), so no
client ever has to parse an HTML error page.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import time
import uuid

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from appliance.drain import install_gate
from appliance.errors import ApplianceError, Unauthorized
from appliance.metrics import install_metrics

REQUEST_ID_HEADER = "x-request-id"
log = logging.getLogger("appliance.http")


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, allow_nan=False, default=str), status=status, mimetype="application/json",
                    headers=headers)


def install_common(app: Flask, role: str, max_body_bytes: int) -> None:
    """Error handlers, request ids and access logs for an app of the given role."""
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        g.started = time.perf_counter()

    install_gate(app, role)  # drain: refuse new work while drained, count what is in flight (appliance/drain.py)
    install_metrics(app, role)  # request counts and latencies, GET /metrics (appliance/metrics.py)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        if request.path not in ("/healthz", "/readyz") and log.isEnabledFor(logging.INFO):
            log.info(json.dumps({
                "role": role,
                "request_id": g.get("request_id"),
                "method": request.method,
                "path": request.path,
                "endpoint": request.url_rule.rule if request.url_rule is not None else None,
                "status": response.status_code,
                "ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
            }))
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


def require_secret(header: str, expected: str, error: type[ApplianceError] = Unauthorized) -> None:
    """Constant-time check of a shared secret header; `error` (401 or 403) when absent or wrong."""
    supplied = request.headers.get(header, "")
    if not supplied:
        raise error(f"missing {header} header")
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise error(f"invalid {header}")


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
