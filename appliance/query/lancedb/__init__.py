"""The LanceDB-compatible public REST API (`/v1/...`), so the official `lancedb` client in remote mode
works against the appliance unchanged:

    db = lancedb.connect("db://any", api_key=KEY, host_override="http://query-node:8080")

It is a second front over the same `QueryService` as the native API (`/api/v1`). One module per job:
`tables` (lifecycle and writes), `search` (the query endpoint), `indexes`, `versions`, `columns` (schema
evolution), with `query` (query bodies -> results), `schema_json` (Arrow -> Lance JsonSchema), `wire`
(bodies in and out) and `errors` (the client's error conventions). The wire protocol itself is
described, from the client's source and recorded traffic, in `shared/reference/lancedb-remote-protocol.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response

from appliance.query.lancedb import columns, errors, indexes, search, tables, versions
from appliance.query.service import QueryService
from appliance.storage.tables import check_table_name

# The protocol level the client should speak (it reads this header on list, create and describe).
# 0.2.0: several query vectors travel in one request (one plan, one fan-out), answered with a query_index
# column. Not 0.3.0 (structured full-text queries) nor 0.4.0 (multipart inserts), which are not implemented.
SERVER_VERSION_HEADER = "phalanx-version"
SERVER_VERSION = "0.2.0"


@dataclass(frozen=True)
class Limits:
    max_k: int
    max_query_vectors: int
    max_batch_rows: int


def lancedb_api(service: QueryService, limits: Limits) -> Blueprint:
    """The `/v1` blueprint; register it on the query node's app."""
    bp = Blueprint("lancedb", __name__, url_prefix="/v1")

    @bp.url_value_preprocessor
    def _check_name(endpoint: str | None, values: dict[str, Any] | None) -> None:
        """Every table route rejects a malformed name (`ns$table`, too long, ...) with 400 before any
        storage is touched."""
        if values and "name" in values:
            check_table_name(values["name"])

    errors.install(bp)

    @bp.after_request
    def _server_version(response: Response) -> Response:
        response.headers[SERVER_VERSION_HEADER] = SERVER_VERSION
        return response

    tables.register(bp, service, limits)
    search.register(bp, service, limits)
    indexes.register(bp, service)
    versions.register(bp, service)
    columns.register(bp, service)
    errors.install_fallback(bp)
    return bp


__all__ = ["Limits", "lancedb_api"]
