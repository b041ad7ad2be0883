"""The OpenAPI 3.1 document of the query node's public and admin endpoints, served at `/openapi.json`.

Hand-written, next to the code it describes, because two fronts share the node: the native JSON API
(`/api/v1`) and the LanceDB protocol (`/v1`), whose bodies are partly Arrow IPC and whose quirks
(trailing slashes, bodyless POSTs, bare-integer answers) a generator would not know. The fuzz test
(`tests/integration/test_fuzz_api.py`) drives the operations listed here, and a test checks that every
route of the app is listed, so the two cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any

from appliance.index.params import CODECS, TARGET_RECALL_BOUNDS, IndexParams
from appliance.query.request import SEARCH_PARAMS
from appliance.storage.schema import METRICS

ARROW_STREAM = "application/vnd.apache.arrow.stream"
ARROW_FILE = "application/vnd.apache.arrow.file"
ERROR = {"$ref": "#/components/schemas/Error"}
TABLE = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "table name"}
INDEX = {"name": "index", "in": "path", "required": True, "schema": {"type": "string"}, "description": "index name"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, body: dict[str, Any] | None = None, answer: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, tag: str = "lancedb", public: bool = False,
        status: str = "200", admin: bool = False, media: str = "application/json") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "tags": [tag],
        "parameters": params or [],
        "responses": {
            status: {"description": "success",
                     "content": {media: {"schema": answer or {"type": "object"}}}},
            "400": {"description": "bad input", **_json(ERROR)},
            "404": {"description": "unknown table or index", **_json(ERROR)},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": False, "content": body}
    if public:
        op["security"] = []
    elif admin:
        op["security"] = [{"adminKey": []}]
        op["responses"]["401"] = {"description": "missing or wrong admin key", **_json(ERROR)}
    else:
        op["responses"]["401"] = {"description": "missing or wrong API key", **_json(ERROR)}
    return op


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


INT = {"type": "integer"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
VECTOR = {"type": "array", "items": {"type": "number"}}
ARROW_BODY = {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}}
VERSION_BODY = _json({"type": "object", "properties": {"version": {"type": ["integer", "null"]}}})["content"]

LANCE_QUERY = {
    "type": "object",
    "properties": {
        "vector": {"oneOf": [VECTOR, {"type": "array", "items": VECTOR}]},
        "k": INT, "offset": INT, "filter": STR, "prefilter": BOOL,
        "columns": {"oneOf": [{"type": "array", "items": STR}, {"type": "object", "additionalProperties": STR}]},
        "with_row_id": BOOL, "nprobes": INT, "minimum_nprobes": INT, "maximum_nprobes": INT,
        "refine_factor": {"type": ["integer", "null"]}, "distance_type": {"enum": list(METRICS)},
        "bypass_vector_index": BOOL, "lower_bound": {"type": ["number", "null"]},
        "upper_bound": {"type": ["number", "null"]}, "vector_column": STR, "version": {"type": ["integer", "null"]},
        "full_text_query": {"type": "object", "properties": {"query": STR, "columns": {"type": "array",
                                                                                      "items": STR}}},
        "order_by": {"type": "array", "items": {"type": "object"}},
    },
}
# Derived from the declarations the parsers check (request.SEARCH_PARAMS, IndexParams), so a field the
# server accepts cannot be missing here.
_SCHEMA_OF_TYPE = {int: INT, str: STR, bool: BOOL, list: {"type": "array", "items": STR}}
_SEARCH_SCHEMAS = {name: _SCHEMA_OF_TYPE[kind] for name, kind in SEARCH_PARAMS.items()}
_SEARCH_SCHEMAS["metric"] = {"enum": list(METRICS)}
NATIVE_SEARCH = {
    "type": "object",
    "properties": {"vector": VECTOR, "vectors": {"type": "array", "items": VECTOR}, **_SEARCH_SCHEMAS},
    # strict: an unknown field is a 400 naming it (appliance/query/request.py check_fields). A search whose metric
    # differs from the index's answers with `warnings` and the x-appliance-warning header (it scans exactly).
    "additionalProperties": False,
}
INDEX_BODY = {
    "type": "object",
    "properties": {
        **{name: INT for name in IndexParams.__dataclass_fields__},
        "codec": {"enum": list(CODECS)}, "target_recall": {"type": "number", "minimum": TARGET_RECALL_BOUNDS[0],
                                                           "maximum": TARGET_RECALL_BOUNDS[1]},
        "metric": {"enum": list(METRICS)}, "background": BOOL,
    },
    "additionalProperties": False,
}


OCTET_STREAM = "application/octet-stream"
BINARY_SEARCH_PARAMS = [
    {"name": "x-vector-dimension", "in": "header", "required": False, "schema": INT,
     "description": "values per query vector of an application/octet-stream search body (required with it)"},
    *(_q(name, schema, "a field of the JSON search body; only with a binary body")
      for name, schema in _SEARCH_SCHEMAS.items() if name not in ("columns", "batch")),
    _q("columns", STR, "comma-separated column names; only with a binary body"),
    _q("batch", BOOL, "answer a list per query even for one vector; only with a binary body"),
]


def _paths() -> dict[str, dict[str, Any]]:
    t = [TABLE]
    return {
        # --- probes, metrics, this document ----------------------------------------------------------------
        "/healthz": {"get": _op("Alive", tag="ops", public=True)},
        "/readyz": {"get": _op("Ready to serve: storage reachable, an executor healthy (else 503)", tag="ops",
                               public=True)},
        "/metrics": {"get": _op("Prometheus metrics of this node", tag="ops", public=True, media="text/plain",
                                answer={"type": "string"})},
        "/openapi.json": {"get": _op("This document", tag="ops", public=True)},
        # --- admin -------------------------------------------------------------------------------------------
        "/admin/ring": {"get": _op("Executor members, health and which are live", tag="admin", admin=True)},
        "/admin/cache": {"get": _op("The executors' cache statistics per tier, summed and per executor",
                                    tag="admin", admin=True)},
        "/admin/drain": {
            "get": _op("Drain state of this node", tag="admin", admin=True),
            "post": _op("Stop taking new work and wait for in-flight requests", tag="admin", admin=True,
                        params=[_q("wait", {"type": "number"}, "seconds to wait for in-flight requests")]),
        },
        "/admin/undrain": {"post": _op("Take new work again", tag="admin", admin=True)},
        # --- the native JSON API ---------------------------------------------------------------------------
        "/api/v1/tables": {
            "get": _op("List tables", tag="native"),
            "post": _op("Create a table", tag="native", status="201", body=_json({
                "type": "object", "required": ["name", "dimension"],
                "properties": {"name": STR, "dimension": INT, "metric": {"enum": list(METRICS)},
                               "schema": {"type": "object", "additionalProperties": STR}},
                "additionalProperties": False})["content"]),
        },
        "/api/v1/tables/{name}": {
            "get": _op("Describe a table", tag="native", params=t),
            "delete": _op("Drop a table", tag="native", params=t),
        },
        "/api/v1/tables/{name}/rows": {"post": _op("Insert rows (JSON rows or an Arrow IPC stream)", tag="native",
                                                   params=t, body={**_json({"type": "object", "properties": {
                                                       "rows": {"type": "array", "items": {"type": "object"}}},
                                                       "additionalProperties": False})[
                                                       "content"], **ARROW_BODY})},
        "/api/v1/tables/{name}/delete": {"post": _op("Delete rows matching a filter", tag="native", params=t,
                                                     body=_json({"type": "object", "required": ["filter"],
                                                                 "properties": {"filter": STR},
                                                                 "additionalProperties": False})["content"])},
        "/api/v1/tables/{name}/search": {"post": _op(
            "Vector search. The query vectors may also come as binary: raw little-endian float32 "
            "(application/octet-stream, the dimension in the x-vector-dimension header) or an Arrow IPC stream "
            "of one column `vector` (one row per query); the other fields are then query-string parameters, "
            "and the answer is a batch (a list per query) when the body holds more than one vector or batch=true",
            tag="native", params=[*t, *BINARY_SEARCH_PARAMS], body={
                **_json(NATIVE_SEARCH)["content"],
                OCTET_STREAM: {"schema": {"type": "string", "format": "binary",
                                          "description": "n x dimension little-endian float32 values"}},
                ARROW_STREAM: {"schema": {"type": "string", "format": "binary",
                                          "description": "an Arrow IPC stream of one column `vector`"}}})},
        "/api/v1/tables/{name}/explain": {"post": _op("The plan of a search", tag="native", params=t,
                                                      body=_json(NATIVE_SEARCH)["content"])},
        "/api/v1/tables/{name}/index": {
            "get": _op("The published IVF index and its coverage", tag="native", params=t),
            "post": _op("Build and publish an index (IVF, or IVF with a graph per partition)", tag="native",
                        params=t, status="201", body=_json(INDEX_BODY)["content"]),
        },
        "/api/v1/tables/{name}/optimize": {"post": _op("Ask the indexers to optimize the table now", tag="native",
                                                       params=t)},
        # --- the LanceDB protocol (lancedb client, remote mode) --------------------------------------------
        "/v1/table/": {"get": _op("List tables (paged)", params=[_q("limit", INT), _q("page_token", STR)],
                                  answer={"type": "object", "properties": {
                                      "tables": {"type": "array", "items": STR},
                                      "page_token": {"type": ["string", "null"]}}})},
        "/v1/namespace/{namespace}/table/list": {"get": _op(
            "List tables of a namespace (only the root, $)",
            params=[{"name": "namespace", "in": "path", "required": True, "schema": STR},
                    _q("limit", INT), _q("page_token", STR)])},
        "/v1/table/{name}/create/": {"post": _op(
            "Create a table from an Arrow IPC stream (schema, and rows)", params=[
                *t, _q("mode", {"enum": ["create", "exist_ok", "overwrite"]})], body=ARROW_BODY)},
        "/v1/table/{name}/describe/": {"post": _op("Schema (Lance JsonSchema) and version", params=t,
                                                   body=VERSION_BODY)},
        "/v1/table/{name}/drop/": {"post": _op("Drop the table", params=t)},
        "/v1/table/{name}/count_rows/": {"post": _op(
            "Count rows (a bare JSON integer)", params=t, answer=INT,
            body=_json({"type": "object", "properties": {"predicate": STR,
                                                         "version": {"type": ["integer", "null"]}}})["content"])},
        "/v1/table/{name}/insert/": {"post": _op(
            "Append (or with mode=overwrite replace) rows", params=[*t, _q("mode", {"enum": ["append", "overwrite"]})],
            body=ARROW_BODY)},
        "/v1/table/{name}/query/": {"post": _op("Vector, full-text or plain query; answers an Arrow IPC file",
                                                params=t, body=_json(LANCE_QUERY)["content"], media=ARROW_FILE,
                                                answer={"type": "string", "format": "binary"})},
        "/v1/table/{name}/explain_plan/": {"post": _op(
            "The plan of a query, as a string", params=t, answer=STR,
            body=_json({"type": "object", "properties": {"verbose": BOOL, "query": LANCE_QUERY}})["content"])},
        "/v1/table/{name}/delete/": {"post": _op(
            "Delete rows matching a predicate", params=t,
            body=_json({"type": "object", "properties": {"predicate": STR}})["content"])},
        "/v1/table/{name}/update/": {"post": _op(
            "Set payload columns to SQL expressions where a predicate holds", params=t,
            body=_json({"type": "object", "properties": {
                "predicate": {"type": ["string", "null"]},
                "updates": {"type": "array", "items": {"type": "array", "items": STR}}}})["content"])},
        "/v1/table/{name}/merge_insert/": {"post": _op(
            "Upsert rows by a key column", body=ARROW_BODY, params=[
                *t, _q("on", STR), _q("when_matched_update_all", BOOL), _q("when_matched_update_all_filt", STR),
                _q("when_not_matched_insert_all", BOOL), _q("when_not_matched_by_source_delete", BOOL),
                _q("when_not_matched_by_source_delete_filt", STR)])},
        "/v1/table/{name}/stats/": {"post": _op("Rows, bytes, fragments", params=t)},
        "/v1/table/{name}/version/list/": {"post": _op("Versions of the table", params=t)},
        "/v1/table/{name}/restore/": {"post": _op("Make an old version the latest", params=t, body=VERSION_BODY)},
        **{f"/v1/table/{{name}}/tags/{op}/": {"post": _op(summary, params=t, body=_json(
            {"type": "object", "properties": {"tag": STR, "version": INT}})["content"])}
           for op, summary in (("list", "Tags of the table and their versions"), ("create", "Tag a version"),
                               ("update", "Move a tag to another version"), ("delete", "Delete a tag"),
                               ("version", "The version a tag names"))},
        "/v1/table/{name}/add_columns/": {"post": _op("Add payload columns computed by SQL", params=t, body=_json(
            {"type": "object", "properties": {"new_columns": {"type": "array", "items": {
                "type": "object", "properties": {"name": STR, "expression": STR}}}}})["content"])},
        "/v1/table/{name}/alter_columns/": {"post": _op("Rename payload columns, change nullability or type",
                                                        params=t, body=_json({"type": "object", "properties": {
                                                            "alterations": {"type": "array",
                                                                            "items": {"type": "object"}}}})[
                                                            "content"])},
        "/v1/table/{name}/drop_columns/": {"post": _op("Drop payload columns", params=t, body=_json(
            {"type": "object", "properties": {"columns": {"type": "array", "items": STR}}})["content"])},
        "/v1/table/{name}/create_index/": {"post": _op(
            "Build a vector (IVF_*), scalar (BTREE, BITMAP, LABEL_LIST) or full-text (FTS) index", params=t,
            body=_json({"type": "object", "properties": {
                "column": STR, "index_type": STR, "metric_type": STR, "num_partitions": INT,
                "num_sub_vectors": INT, "name": STR, "replace": BOOL}})["content"])},
        "/v1/table/{name}/index/list/": {"post": _op("Indices of the table", params=t, body=VERSION_BODY)},
        "/v1/table/{name}/index/{index}/stats/": {"post": _op("Statistics of one index", params=[TABLE, INDEX],
                                                              body=VERSION_BODY)},
        "/v1/table/{name}/index/{index}/drop/": {"post": _op("Drop one index", params=[TABLE, INDEX])},
    }


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "vector-appliance query node", "version": version,
                 "description": "Native JSON API (/api/v1), LanceDB-compatible REST API (/v1), admin and ops "
                                "endpoints. Errors are JSON {error, code, detail} with a 4xx status."},
        "paths": _paths(),
        "security": [{"apiKey": []}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
                "adminKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                             "description": "the admin key (setting admin_key; the API key when unset)"},
            },
            "schemas": {"Error": {"type": "object", "required": ["error", "code"], "properties": {
                "error": STR, "code": STR, "detail": STR}}},
        },
    }
