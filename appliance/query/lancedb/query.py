"""`POST /v1/table/{t}/query/`: LanceDB's query body -> a vector search on the executors, a filtered scan,
or a full-text search, answered as one Arrow table.

A body with a non-empty `vector` is a vector search: `parse_query` builds its `SearchRequest`
(query/request.py, the one the native API builds too), which `explain_plan/` explains and `run_query` runs
through `Table.search` (the planner and the executor fleet, exact or IVF); every other query is a scan of
the version the table handle pins, which Lance does on the query node (`search().where(...)`, `head()`,
`take_row_ids()`, full-text search).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from flask import request as http_request

from appliance import limits
from appliance.deadline import Deadline, requested
from appliance.errors import InvalidInput, LimitExceeded
from appliance.planner.plan import SearchPlan
from appliance.query.lancedb.wire import HUGE_K, optional_bool, optional_float, optional_int, optional_str
from appliance.query.request import SearchRequest, parse_vectors, search_request, type_check_filter
from appliance.query.service import QueryService, Table
from appliance.storage.schema import VECTOR_COLUMN
from appliance.storage.tables import TableSnapshot, check_filter_text, clean_lance_message, raise_if_rejected

SPECIAL = ("_distance", "_rowid", "_score", "query_index", "_relevance_score")


@dataclass
class LanceQuery:
    """A validated LanceDB query body."""

    version: int | None = None
    k: int | None = 10  # None: no limit
    offset: int = 0
    filter: str | None = None
    prefilter: bool = True
    columns: list[str] | dict[str, str] | None = None
    with_row_id: bool = False
    vectors: np.ndarray | None = None  # [nq, d] float32; None: not a vector search
    multi: bool = False  # several query vectors in one body: answer with a query_index column
    nprobes: int | None = None
    ef: int | None = None  # IVF_HNSW_* search breadth
    refine_factor: int | None = None
    distance_type: str | None = None
    bypass_index: bool = False
    lower_bound: float | None = None
    upper_bound: float | None = None
    full_text: dict[str, Any] | None = None
    order_by: list[dict[str, Any]] = field(default_factory=list)
    search: SearchRequest | None = None  # a vector search: what query/ runs and explain_plan/ explains


def parse_query(name: str, doc: dict[str, Any], max_k: int, max_queries: int) -> LanceQuery:
    q = LanceQuery()
    q.version = optional_int(doc, "version", 1)
    k = optional_int(doc, "k", 0)
    q.k = None if k is not None and k >= HUGE_K else (10 if k is None else k)
    q.offset = optional_int(doc, "offset", 0, 2**62) or 0
    q.filter = optional_str(doc, "filter")
    q.prefilter = optional_bool(doc, "prefilter", True)
    q.with_row_id = optional_bool(doc, "with_row_id", False)
    q.columns = _columns(doc.get("columns"))
    q.order_by = _order_by(doc.get("order_by"))
    raw = doc.get("vector")
    if raw is not None and raw != []:
        q.multi = isinstance(raw, list) and bool(raw) and isinstance(raw[0], list)
        q.vectors = parse_vectors(raw if q.multi else [raw], "vector")
        if len(q.vectors) > max_queries:
            raise LimitExceeded(f"at most {max_queries} query vectors per request, got {len(q.vectors)}")
    nprobes = (optional_int(doc, "nprobes", 0, limits.MAX_NPROBES)
               or optional_int(doc, "minimum_nprobes", 0, limits.MAX_NPROBES))
    optional_int(doc, "maximum_nprobes", 0, limits.MAX_NPROBES)
    q.ef = optional_int(doc, "ef", 0, limits.MAX_EF) or None  # graph codecs (IVF_HNSW_*): search breadth
    q.nprobes = nprobes or None
    q.refine_factor = optional_int(doc, "refine_factor", 0, limits.MAX_REFINE_FACTOR)
    q.distance_type = optional_str(doc, "distance_type")
    q.bypass_index = optional_bool(doc, "bypass_vector_index", False)
    q.lower_bound = optional_float(doc, "lower_bound")
    q.upper_bound = optional_float(doc, "upper_bound")
    column = optional_str(doc, "vector_column")
    if column not in (None, VECTOR_COLUMN):
        raise InvalidInput(f"vector_column must be '{VECTOR_COLUMN}' (the only vector column), got {column!r}")
    fts = doc.get("full_text_query")
    if fts is not None:
        q.full_text = _full_text(fts)
    if q.full_text is not None and q.vectors is not None:
        raise InvalidInput("a query is either a vector search or a full-text search; hybrid sends one of each")
    if q.vectors is None:
        if q.filter is not None:
            check_filter_text(q.filter)  # a scan's filter; a vector search's passes search_request's
    else:
        q.search = _search_request(name, q, max_k)
    return q


def _search_request(name: str, q: LanceQuery, max_k: int) -> SearchRequest:
    """The vector search of a query body. Without a limit it finds as many rows as max_k allows; the plan
    finds k + offset rows per query, of which `_vector_search` keeps the last k."""
    assert q.vectors is not None
    k = q.k if q.k is not None else max(1, max_k - q.offset)
    plain = q.columns is None or isinstance(q.columns, list)  # else SQL projections, evaluated afterwards
    columns = None if q.columns is None else (list(q.columns) if plain else [])
    return search_request(name, q.vectors, k, max_k, offset=q.offset, k_field="k + offset", version=q.version,
                          metric=q.distance_type, metric_field="distance_type", filter=q.filter, columns=columns,
                          include_vector=True, nprobes=q.nprobes, refine_factor=q.refine_factor, ef=q.ef,
                          prefilter=q.prefilter, bypass_index=q.bypass_index)


def run_query(service: QueryService, name: str, q: LanceQuery, request_id: str
              ) -> tuple[pa.Table, int, SearchPlan | None]:
    """The result table, the version it was read from, and the plan a vector search ran."""
    table = service.table(name, q.version)
    if q.search is not None:
        deadline = requested(service.search_timeout, http_request.environ, http_request.headers)
        return _vector_search(table, q, q.search, request_id, deadline)
    snapshot = table.snapshot
    return _scan(snapshot, q), snapshot.version, None


def _vector_search(table: Table, q: LanceQuery, request: SearchRequest, request_id: str, deadline: Deadline
                   ) -> tuple[pa.Table, int, SearchPlan]:
    k = request.k
    try:
        result = table.search(request, request_id, deadline)
    except (OSError, ValueError) as exc:  # a filter that fails on the data (IVF post-filter, payload fetch)
        raise_if_rejected(exc)
        raise
    rows = result.rows
    qi = rows.column("query_index").to_numpy()
    rank = np.arange(len(qi)) - np.searchsorted(qi, qi, side="left")
    keep = (rank >= q.offset) & (rank < q.offset + k)
    dist = rows.column("_distance").to_numpy()
    if q.lower_bound is not None:
        keep &= dist >= q.lower_bound
    if q.upper_bound is not None:
        keep &= dist < q.upper_bound
    rows = rows.filter(pa.array(keep))
    if isinstance(q.columns, dict):  # SQL projections, evaluated by Lance on the version that was searched
        rows = _project(table.at(result.version).snapshot, rows, q.columns)  # type: ignore[arg-type]
    out = [c for c in rows.column_names if c not in ("query_index", "_rowid", "_distance")]
    out += ["_distance"] + (["_rowid"] if q.with_row_id else [])
    if q.multi:
        out = ["query_index", *out]
    return rows.select(out), result.version, result.plan


def _project(snapshot: TableSnapshot, rows: pa.Table, columns: dict[str, str]) -> pa.Table:
    """SQL projections (`select({"alias": "expr"})`) of the found rows, in the found order."""
    ids = rows.column("_rowid").to_pylist()
    if not ids:
        projected = _lance(lambda: snapshot.dataset.to_table(columns=columns, limit=0))
    else:
        unique = sorted(set(ids))
        projected = _lance(lambda: snapshot.dataset.to_table(
            columns=columns, with_row_id=True, filter=f"_rowid IN ({', '.join(map(str, unique))})"))
        position = {r: i for i, r in enumerate(projected.column("_rowid").to_pylist())}
        projected = projected.take(pa.array([position[r] for r in ids], pa.int64())).drop_columns(["_rowid"])
    for name in ("query_index", "_rowid", "_distance"):
        projected = projected.append_column(name, rows.column(name))
    return projected


def _scan(snapshot: TableSnapshot, q: LanceQuery) -> pa.Table:
    """A plain or full-text scan of one version with Lance: filter, projection, offset, limit, order."""
    if q.filter is not None:
        type_check_filter(snapshot, q.filter)  # parse_query passed it through the cost guard
    columns = q.columns
    if isinstance(columns, list):
        unknown = [c for c in columns if c not in snapshot.dataset.schema.names and c != "_rowoffset"]
        if unknown:
            raise InvalidInput(f"unknown column(s) in columns: {', '.join(unknown)}")
    args: dict[str, Any] = {"columns": columns, "filter": q.filter, "with_row_id": q.with_row_id,
                            "prefilter": q.prefilter}
    if q.full_text is not None:
        args["full_text_query"] = q.full_text
    if not q.order_by:
        args["limit"], args["offset"] = q.k, q.offset or None
    table = _lance(lambda: snapshot.dataset.to_table(**args))
    if q.order_by:
        keys = [(o["column_name"], "ascending" if o.get("ascending", True) else "descending") for o in q.order_by]
        for column, _ in keys:
            if column not in table.column_names:
                raise InvalidInput(f"order_by column '{column}' is not in the result")
        table = table.sort_by(keys)
        end = None if q.k is None else q.offset + q.k
        table = table.slice(q.offset, None if end is None else end - q.offset)
    if "_score" in table.column_names:  # full-text: the score after the columns, as float32
        score = pc.cast(table.column("_score"), pa.float32())
        table = table.drop_columns(["_score"]).append_column("_score", score)
    if "_rowid" in table.column_names:  # the row id last, as the vector search answers it
        rowid = table.column("_rowid")
        table = table.drop_columns(["_rowid"])
        if q.with_row_id:
            table = table.append_column("_rowid", rowid)
    return table


def _lance(run: Any) -> pa.Table:
    try:
        return run()
    except (ValueError, OSError, RuntimeError, TypeError) as exc:
        raise InvalidInput("invalid query", clean_lance_message(exc)) from exc


def _columns(raw: Any) -> list[str] | dict[str, str] | None:
    if raw is None:
        return None
    if isinstance(raw, list) and all(isinstance(c, str) for c in raw):
        return [c for c in raw if c not in SPECIAL]
    if isinstance(raw, dict) and all(isinstance(k, str) and isinstance(v, str) and v for k, v in raw.items()):
        if not raw:
            raise InvalidInput("columns must not be an empty object")
        reserved = [alias for alias in raw if alias in SPECIAL or not alias]
        if reserved:
            raise InvalidInput(f"column alias(es) {', '.join(map(repr, reserved))} are reserved")
        for expression in raw.values():
            check_filter_text(expression, "column expression")  # the cost guard, as for filters
        return dict(raw)
    raise InvalidInput("columns must be a list of column names or an object of alias: SQL expression")


def _order_by(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("column_name"), str)
                                            for o in raw):
        raise InvalidInput("order_by must be a list of {column_name, ascending, nulls_first}")
    return raw


def _full_text(raw: Any) -> dict[str, Any]:
    """The legacy full-text body `{"columns": [...], "query": "text"}` (what clients send to a server that
    announces no version) as Lance's scanner takes it."""
    if not isinstance(raw, dict) or not isinstance(raw.get("query"), str) or not raw["query"].strip():
        raise InvalidInput("full_text_query must be {\"query\": \"text\", \"columns\": [...]}")
    columns = raw.get("columns") or []
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput("full_text_query.columns must be a list of column names")
    return {"query": raw["query"], "columns": columns} if columns else {"query": raw["query"]}
