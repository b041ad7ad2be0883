"""`POST /v1/table/{t}/query/` (and `explain_plan/`): the search endpoint of the LanceDB protocol."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from flask import Blueprint, Response, g, request

from appliance.errors import InvalidInput
from appliance.query.lancedb.query import parse_query, run_query
from appliance.query.lancedb.wire import arrow_file_response, optional_json
from appliance.query.service import QueryService
from appliance.web import json_response

if TYPE_CHECKING:  # the package __init__ imports this module
    from appliance.query.lancedb import Limits

EXPLAIN_HEADER = "x-appliance-explain"
"""A query request carrying `x-appliance-explain: true` is answered with the plan it ran, as compact JSON
in the `x-appliance-plan` header (the native API's `"explain": true`); the client's protocol is unchanged."""
PLAN_HEADER = "x-appliance-plan"

def wants_json() -> bool:
    """The request asks for JSON only (`accept: application/json`, no wildcard): answered as rows of JSON
    objects instead of the protocol's Arrow IPC file."""
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "*/*" not in accept and "arrow" not in accept


def register(bp: Blueprint, service: QueryService, limits: Limits) -> None:
    @bp.post("/table/<name>/query/")
    def query(name: str) -> Response:
        q = parse_query(name, optional_json(), limits.max_k, limits.max_query_vectors)
        table, version, plan = run_query(service, name, q, g.get("request_id", ""))
        headers = {"x-appliance-version": str(version)}
        if plan is not None and request.headers.get(EXPLAIN_HEADER, "").lower() in ("1", "true"):
            headers[PLAN_HEADER] = json.dumps(plan.explain(), separators=(",", ":"))  # the plan that ran
        if wants_json():  # the web console's full-text search; the lancedb client sends accept: */*
            return json_response({"version": version, "rows": table.to_pylist()}, headers=headers)
        return arrow_file_response(table, headers)

    @bp.post("/table/<name>/explain_plan/")
    def explain_plan(name: str) -> Response:
        """The plan as the client prints it: a string (the appliance's plan as indented JSON). It is the
        plan `query/` runs for the same body: the same SearchRequest (offset and version included)."""
        doc = optional_json()
        body = doc.get("query")
        if not isinstance(body, dict):
            raise InvalidInput("explain_plan needs {\"query\": {...}}")
        q = parse_query(name, body, limits.max_k, limits.max_query_vectors)
        if q.search is None:
            return json_response(f"scan of table '{name}' (filter: {q.filter}) on the query node")
        return json_response(json.dumps(service.table(name, q.version).explain(q.search).explain(), indent=2))
