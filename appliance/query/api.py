"""The native JSON API (`/api/v1/...`): tables, rows, deletes and search.

JSON in and out by default; bulk inserts may send an Arrow IPC stream; a search may send its query vectors
as raw float32 or an Arrow IPC stream (request.parse_binary_search), and answers Arrow IPC when the client
asks for it with `Accept: application/vnd.apache.arrow.stream`.
"""

from __future__ import annotations

import pyarrow as pa
from flask import Blueprint, Response, g, request

from appliance.deadline import requested
from appliance.errors import InvalidInput, PayloadTooLarge
from appliance.index.params import IndexParams
from appliance.planner.plan import SearchPlan
from appliance.query.request import (
    ARROW_STREAM,
    BINARY_SEARCH_TYPES,
    CREATE_TABLE_FIELDS,
    DELETE_FIELDS,
    INSERT_FIELDS,
    SearchRequest,
    check_fields,
    parse_arrow_stream,
    parse_binary_search,
    parse_index_request,
    parse_int,
    parse_json_body,
    parse_search,
    search_fields,
)
from appliance.query.service import QueryService
from appliance.storage.tables import check_filter_text
from appliance.web import json_response


def native_api(service: QueryService, max_k: int, max_queries: int, max_batch_rows: int) -> Blueprint:
    api = Blueprint("native", __name__, url_prefix="/api/v1")

    @api.post("/tables")
    def create_table() -> Response:
        doc = parse_json_body(request.get_data())
        check_fields(doc, CREATE_TABLE_FIELDS, "a create-table body")
        name = doc.get("name")
        dimension = parse_int(doc, "dimension", 0, 1, 65_536)
        info = service.create_table(name, dimension, doc.get("metric", "l2"), doc.get("schema"))
        return json_response(info.to_json(), 201)

    @api.get("/tables")
    def list_tables() -> Response:
        return json_response({"tables": service.list_tables()})

    @api.get("/tables/<name>")
    def describe(name: str) -> Response:
        return json_response(service.table(name).describe().to_json())

    @api.delete("/tables/<name>")
    def drop(name: str) -> Response:
        service.drop(name)
        return json_response({"dropped": name})

    @api.post("/tables/<name>/rows")
    def insert(name: str) -> Response:
        if request.mimetype == ARROW_STREAM:
            data = parse_arrow_stream(request.get_data())
        else:
            doc = parse_json_body(request.get_data())
            check_fields(doc, INSERT_FIELDS, "an insert body")
            rows = doc.get("rows")
            if not isinstance(rows, list):
                raise InvalidInput("body must be {\"rows\": [...]} or an Arrow IPC stream")
            if len(rows) > max_batch_rows:
                raise PayloadTooLarge(f"at most {max_batch_rows} rows per request, got {len(rows)}")
            data = rows  # checked and conformed once, by the store, as Arrow inserts are
        inserted = len(data) if isinstance(data, list) else data.num_rows
        if inserted > max_batch_rows:
            raise PayloadTooLarge(f"at most {max_batch_rows} rows per request, got {inserted}")
        if inserted == 0:
            raise InvalidInput("no rows to insert")
        version = service.table(name).insert(data)
        return json_response({"table": name, "version": version, "inserted": inserted})

    @api.post("/tables/<name>/delete")
    def delete(name: str) -> Response:
        doc = parse_json_body(request.get_data())
        check_fields(doc, DELETE_FIELDS, "a delete body")
        predicate = doc.get("filter")
        check_filter_text(predicate)
        version, deleted = service.table(name).delete(predicate)
        return json_response({"table": name, "version": version, "deleted": deleted})

    @api.post("/tables/<name>/index")
    def build_index(name: str) -> Response:
        background, metric, doc = parse_index_request(parse_json_body(request.get_data() or b"{}"))
        table = service.table(name)
        if background:  # leave the build to the indexer fleet: 202 and its event
            return json_response(table.request_index(doc), 202)
        manifest = table.build_index(IndexParams.from_json(doc), metric)
        return json_response(manifest.describe(), 201)

    @api.post("/tables/<name>/optimize")
    def optimize(name: str) -> Response:
        return json_response(service.table(name).request_optimize(), 202)

    @api.get("/tables/<name>/index")
    def index_status(name: str) -> Response:
        return json_response(service.table(name).index_stats())

    @api.post("/tables/<name>/explain")
    def explain(name: str) -> Response:
        doc = parse_json_body(request.get_data())
        check_fields(doc, search_fields(), "an explain body")
        search_request, _ = parse_search(name, doc, max_k, max_queries)
        return json_response(service.table(name, search_request.version).explain(search_request).explain())

    @api.post("/tables/<name>/search")
    def search(name: str) -> Response:
        if request.mimetype in BINARY_SEARCH_TYPES:  # query vectors as float32 or Arrow, the rest in the URL
            queries, doc = parse_binary_search(request.mimetype, request.get_data(), request.headers,
                                               request.args, max_queries)
            search_request, batch = parse_search(name, doc, max_k, max_queries, queries)
        else:
            doc = parse_json_body(request.get_data())
            check_fields(doc, search_fields(), "a search body")
            search_request, batch = parse_search(name, doc, max_k, max_queries)
        deadline = requested(service.search_timeout, request.environ, request.headers, doc)
        result = service.table(name, search_request.version).search(search_request, g.request_id, deadline)
        warnings = metric_warnings(search_request, result.plan)
        if ARROW_STREAM in request.headers.get("accept", ""):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, result.rows.schema) as writer:
                writer.write_table(result.rows)
            return Response(sink.getvalue().to_pybytes(), mimetype=ARROW_STREAM,
                            headers={"x-appliance-version": str(result.version), **warning_header(warnings)})
        grouped = result.per_query(len(search_request.queries))
        body = {"table": name, "version": result.version, "results": grouped if batch else grouped[0]}
        if doc.get("explain"):
            body["plan"] = result.plan.explain()
        if warnings:
            body["warnings"] = warnings
        return json_response(body, headers=warning_header(warnings))

    return api


WARNING_HEADER = "x-appliance-warning"


def metric_warnings(search: SearchRequest, plan: SearchPlan) -> list[str]:
    """A search that names a metric other than its table's index's scans every row exactly (the index
    orders rows by its own metric; the planner says so in `index_metric`): say so, since only /explain
    would show it otherwise."""
    built = plan.index_metric
    if search.metric is None or built is None:
        return []
    return [f"metric '{plan.metric}' differs from the index's metric '{built}', so this search scanned every "
            f"row exactly, without the index; search with metric '{built}' (or leave it out), or rebuild the "
            f"index with metric '{plan.metric}'"]


def warning_header(warnings: list[str]) -> dict[str, str]:
    return {WARNING_HEADER: " | ".join(warnings)} if warnings else {}
