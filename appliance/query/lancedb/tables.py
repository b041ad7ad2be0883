"""Table lifecycle and writes of the LanceDB protocol: list, create, describe, drop, count_rows, insert
(append or overwrite), delete, update, merge_insert and stats.

Writes answer only after Lance has committed them, with the committed version, like the native API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
from flask import Blueprint, Response, request

from appliance.errors import InvalidInput, NotFound, TableNotFound
from appliance.query.lancedb.schema_json import schema_to_lance_json
from appliance.query.lancedb.wire import (
    arrow_body,
    optional_filter,
    optional_int,
    optional_json,
    optional_str,
    query_flag,
)
from appliance.query.service import QueryService, Table
from appliance.storage.schema import METRIC_KEY, METRICS, VECTOR_COLUMN
from appliance.storage.tables import check_filter_text, raise_if_rejected
from appliance.web import json_response

if TYPE_CHECKING:  # the package __init__ imports this module
    from appliance.query.lancedb import Limits

ROOT_NAMESPACE = "$"


def register(bp: Blueprint, service: QueryService, limits: Limits) -> None:
    @bp.get("/table/")
    def list_tables() -> Response:
        return json_response(_page(service.list_tables()))

    @bp.get("/namespace/<namespace>/table/list")
    def list_namespace_tables(namespace: str) -> Response:
        if namespace != ROOT_NAMESPACE:
            raise NotFound(f"namespace '{namespace}' was not found", "the appliance has only the root namespace $")
        return json_response(_page(service.list_tables()))

    @bp.post("/table/<name>/create/")
    def create(name: str) -> Response:
        mode = request.args.get("mode", "create")
        data = arrow_body(limits.max_batch_rows)
        data = _fixed_size_vectors(data)
        metric = table_metric(data.schema) or _replaced_metric(service, name, mode)
        info = service.create_table_from_arrow(name, data.schema, data, mode, metric)
        return json_response({"version": info.version})

    @bp.post("/table/<name>/describe/")
    def describe(name: str) -> Response:
        version = optional_int(optional_json(), "version", 1)
        snapshot = service.table(name, version).snapshot
        body = {"version": snapshot.version, "schema": schema_to_lance_json(snapshot.dataset.schema),
                "location": snapshot.dataset.uri}
        return json_response(body)

    @bp.post("/table/<name>/drop/")
    def drop(name: str) -> Response:
        service.drop(name)
        return json_response({})

    @bp.post("/table/<name>/count_rows/")
    def count_rows(name: str) -> Response:
        doc = optional_json()
        predicate = optional_filter(doc)
        return json_response(service.table(name, optional_int(doc, "version", 1)).count_rows(predicate))

    @bp.post("/table/<name>/insert/")
    def insert(name: str) -> Response:
        if request.args.get("upload_id"):
            raise InvalidInput("multipart writes are not supported; send the rows in one insert request")
        mode = request.args.get("mode", "append")
        if mode not in ("append", "overwrite"):
            raise InvalidInput(f"mode must be append or overwrite, got {mode!r}")
        data = arrow_body(limits.max_batch_rows)
        table = service.table(name)
        if mode == "overwrite":
            return json_response({"version": table.overwrite(data)})
        if data.num_rows == 0:
            return json_response({"version": table.snapshot.version})
        return json_response({"version": table.insert(data)})

    @bp.post("/table/<name>/delete/")
    def delete(name: str) -> Response:
        predicate = optional_str(optional_json(), "predicate")
        check_filter_text(predicate)
        try:
            version, deleted = service.table(name).delete(predicate)  # type: ignore[arg-type]
        except (OSError, ValueError) as exc:  # a filter that fails on the data: 400, not a retried 503
            raise_if_rejected(exc)
            raise
        return json_response({"num_deleted_rows": deleted, "version": version})

    @bp.post("/table/<name>/update/")
    def update(name: str) -> Response:
        doc = optional_json()
        version, updated = service.table(name).update(optional_filter(doc), _updates(doc.get("updates")))
        return json_response({"rows_updated": updated, "version": version})

    @bp.post("/table/<name>/merge_insert/")
    def merge_insert(name: str) -> Response:
        on = request.args.get("on", "")
        if not on or "," in on:
            raise InvalidInput("merge_insert needs exactly one key column in 'on'")
        data = arrow_body(limits.max_batch_rows)
        matched_filter = request.args.get("when_matched_update_all_filt") or None
        delete_filter = request.args.get("when_not_matched_by_source_delete_filt") or None
        for condition in (matched_filter, delete_filter):
            if condition is not None:
                check_filter_text(condition)  # the cost guard, as for every filter
        result = service.table(name).merge_insert(
            on, data,
            update_matched=query_flag("when_matched_update_all"),
            matched_filter=matched_filter,
            insert_unmatched=query_flag("when_not_matched_insert_all"),
            delete_unmatched_by_source=query_flag("when_not_matched_by_source_delete"),
            delete_filter=delete_filter,
        )
        return json_response({**result, "num_attempts": 1})

    @bp.post("/table/<name>/stats/")
    def stats(name: str) -> Response:
        return json_response(_stats(service.table(name)))


def _page(names: list[str]) -> dict[str, Any]:
    """One page of table names after `page_token` (the last name of the previous page), `limit` long."""
    token = request.args.get("page_token") or ""
    try:
        limit = int(request.args.get("limit") or 0)
    except ValueError as exc:
        raise InvalidInput("limit must be an integer") from exc
    if limit < 0:
        raise InvalidInput("limit must not be negative")
    rest = [n for n in names if n > token]
    page = rest[:limit] if limit else rest
    more = bool(limit) and len(rest) > limit
    return {"tables": page, "page_token": page[-1] if more and page else None}


def table_metric(schema: pa.Schema) -> str | None:
    """The metric a client asks a new table to have, in its Arrow schema's metadata (`appliance.metric`:
    l2, cosine or dot; the lancedb client has no other way to send one); None when absent."""
    raw = (schema.metadata or {}).get(METRIC_KEY)
    if raw is None:
        return None
    metric = raw.decode(errors="replace").strip().lower()
    if metric not in METRICS:
        raise InvalidInput(f"schema metadata {METRIC_KEY.decode()} must be one of {', '.join(METRICS)}, "
                           f"got {raw.decode(errors='replace')!r}")
    return metric


def _replaced_metric(service: QueryService, name: str, mode: str) -> str:
    """Without a metric in the schema: a table replaced (mode=overwrite) keeps its own, a new one is l2."""
    if mode == "overwrite":
        try:
            return service.table(name).snapshot.metric
        except TableNotFound:
            pass
    return "l2"


def _fixed_size_vectors(data: pa.Table) -> pa.Table:
    """Rows whose `vector` is a variable-size list of one length (as some writers produce) are read as
    fixed-size vectors of that length, which a table needs to know its dimension."""
    if VECTOR_COLUMN not in data.column_names:
        return data
    column = data.column(VECTOR_COLUMN)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return data
    lengths = set(pa.compute.list_value_length(column).drop_null().to_pylist())
    if len(lengths) != 1:
        raise InvalidInput("vectors must all have the same number of values to create a table",
                           f"lengths seen: {sorted(lengths)[:10]}")
    dimension = lengths.pop()
    if dimension < 1:
        raise InvalidInput("vectors must not be empty")
    fixed = pa.list_(pa.field("item", pa.float32()), dimension)
    try:
        cast = column.cast(fixed)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidInput(f"column '{VECTOR_COLUMN}' cannot be read as float vectors", str(exc)) from exc
    return data.set_column(data.column_names.index(VECTOR_COLUMN), VECTOR_COLUMN, cast)


def _updates(raw: Any) -> dict[str, str]:
    """`[["column", "SQL expression"], ...]` (what the client sends) -> {column: expression}."""
    if isinstance(raw, dict):
        raw = list(raw.items())
    if not isinstance(raw, list) or not raw or not all(
            isinstance(u, list | tuple) and len(u) == 2 and all(isinstance(x, str) for x in u) for u in raw):
        raise InvalidInput("updates must be a non-empty list of [column, SQL expression] pairs")
    return {column: expression for column, expression in raw}


def _stats(table: Table) -> dict[str, Any]:
    ds = table.snapshot.dataset
    lengths = sorted(f.count_rows() for f in ds.get_fragments())
    total_bytes = sum(int(v.get("metadata", {}).get("total_files_size", 0)) for v in ds.versions()[-1:])

    def pct(p: float) -> int:
        return lengths[min(len(lengths) - 1, int(p * len(lengths)))] if lengths else 0

    indices = len(ds.list_indices()) + (1 if table.index_version() is not None else 0)
    return {
        "total_bytes": total_bytes,
        "num_rows": ds.count_rows(),
        "num_indices": indices,
        "fragment_stats": {
            "num_fragments": len(lengths),
            "num_small_fragments": sum(1 for n in lengths if n < 100_000),
            "lengths": {"min": lengths[0] if lengths else 0, "max": lengths[-1] if lengths else 0,
                        "mean": sum(lengths) // len(lengths) if lengths else 0,
                        "p25": pct(0.25), "p50": pct(0.5), "p75": pct(0.75), "p99": pct(0.99)},
        },
    }
