"""`POST /v1/table/{t}/query/` (and `explain_plan/`): the search endpoint of the LanceDB protocol."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from flask import Blueprint, Response, g

from appliance.errors import InvalidInput
from appliance.planner.plan import SearchRequest
from appliance.query.lancedb.query import parse_query, run_query
from appliance.query.lancedb.wire import arrow_file_response, optional_json
from appliance.query.service import QueryService
from appliance.web import json_response

if TYPE_CHECKING:  # the package __init__ imports this module
    from appliance.query.lancedb import Limits


def register(bp: Blueprint, service: QueryService, limits: Limits) -> None:
    @bp.post("/table/<name>/query/")
    def query(name: str) -> Response:
        q = parse_query(optional_json(), limits.max_k, limits.max_query_vectors)
        table, version = run_query(service, name, q, g.get("request_id", ""), limits.max_k)
        return arrow_file_response(table, {"x-appliance-version": str(version)})

    @bp.post("/table/<name>/explain_plan/")
    def explain_plan(name: str) -> Response:
        """The plan as the client prints it: a string (the appliance's plan as indented JSON)."""
        doc = optional_json()
        body = doc.get("query")
        if not isinstance(body, dict):
            raise InvalidInput("explain_plan needs {\"query\": {...}}")
        q = parse_query(body, limits.max_k, limits.max_query_vectors)
        if q.vectors is None:
            return json_response(f"scan of table '{name}' (filter: {q.filter}) on the query node")
        request = SearchRequest(queries=q.vectors, k=q.k or limits.max_k, metric=q.distance_type, filter=q.filter,
                                nprobes=q.nprobes, refine_factor=q.refine_factor, prefilter=q.prefilter,
                                bypass_index=q.bypass_index)
        return json_response(json.dumps(service.explain(name, request).explain(), indent=2))
