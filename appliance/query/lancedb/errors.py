"""Errors the way LanceDB clients expect them.

The client does not parse error bodies: it raises `HttpError("<status>: <body>")` with our JSON body as
text, turns a 404 on a table into `ValueError("Table 'x' was not found")`, and recognises an existing
table only by a **400** whose body says "already exists" (a 409 it would retry three times). It retries
409/429/5xx, so an error that retrying cannot fix must not use those statuses.
"""

from __future__ import annotations

from flask import Blueprint, Response

from appliance.errors import ApplianceError, TableExists
from appliance.web import json_response


class NotSupported(ApplianceError):
    """An operation of the LanceDB protocol the appliance does not implement. 400, not 404 (the client
    would report "table not found") nor 501 (a 5xx reads as a server fault to monitoring and fuzzing);
    the client raises HttpError with our message and does not retry."""

    status = 400
    code = "not_supported"


def install(bp: Blueprint) -> None:
    @bp.errorhandler(ApplianceError)
    def _error(exc: ApplianceError) -> Response:
        status = 400 if isinstance(exc, TableExists) else exc.status
        return json_response(exc.to_json(), status, exc.headers() or None)


def install_fallback(bp: Blueprint) -> None:
    """Table operations of the protocol not routed above answer 400 naming the operation."""

    @bp.route("/table/<name>/<path:operation>", methods=["GET", "POST"])
    def _unsupported(name: str, operation: str) -> Response:
        raise NotSupported(f"'{operation.strip('/')}' is not supported by this appliance",
                           "supported: create, describe, query, count_rows, insert, merge_insert, delete, update, "
                           "drop, create_index, index/list, index/NAME/stats, index/NAME/drop, version/list, "
                           "restore, tags/*, stats, explain_plan, add_columns, alter_columns, drop_columns")

    @bp.route("/namespace/<path:operation>", methods=["GET", "POST"])
    def _namespaces(operation: str) -> Response:
        raise NotSupported("namespaces other than the root are not supported by this appliance")
