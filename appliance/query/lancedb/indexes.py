"""Indices of the LanceDB protocol: create_index, index/list, index/{name}/stats, index/{name}/drop.

A vector index (`IVF_*` on `vector`) is the appliance's own IVF index (`appliance/index/`), built and
published now, served by the executors, and always named `vector_idx`. Scalar indices (BTREE, BITMAP,
LABEL_LIST) and the full-text index (FTS) are Lance's own, kept in the table and used by Lance when it
filters and when it runs full-text queries.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from appliance.errors import ApplianceError, InvalidInput, NotFound
from appliance.index.params import IndexParams
from appliance.query.lancedb.wire import optional_bool, optional_int, optional_json, optional_str
from appliance.query.service import QueryService, Table
from appliance.storage.schema import VECTOR_COLUMN
from appliance.storage.tables import clean_lance_message
from appliance.web import json_response

VECTOR_INDEX = "vector_idx"
PQ_MIN_ROWS = 256
# IVF_HNSW_PQ builds hnsw_sq: a graph navigated on PQ codes (faiss IndexHNSWPQ) loses recall that no ef buys
# back (its distances are the greedy search's only guide), and the client that sends it (LanceDB Cloud's)
# refuses IVF_HNSW_PQ itself in favour of IVF_HNSW_SQ; the user still gets the graph they asked for.
VECTOR_TYPES = {"IVF_FLAT": "flat", "IVF_PQ": "pq", "IVF_SQ": "sq8", "IVF_HNSW_SQ": "hnsw_sq",
                "IVF_HNSW_PQ": "hnsw_sq", "IVF_HNSW_FLAT": "hnsw_flat"}
CODEC_TYPES = {"flat": "IVF_FLAT", "fp16": "IVF_FLAT", "pq": "IVF_PQ", "pq4": "IVF_PQ", "sq8": "IVF_SQ",
               "hnsw_sq": "IVF_HNSW_SQ", "hnsw_flat": "IVF_HNSW_FLAT"}
SCALAR_TYPES = ("BTREE", "BITMAP", "LABEL_LIST")
LANCE_TYPES = {"btree": "BTREE", "bitmap": "BITMAP", "labellist": "LABEL_LIST", "inverted": "FTS", "fts": "FTS"}
FTS_OPTIONS = ("with_position", "base_tokenizer", "language", "max_token_length", "lower_case", "stem",
               "remove_stop_words", "ascii_folding")


class IndexNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"Index '{name}' was not found")


def register(bp: Blueprint, service: QueryService) -> None:
    @bp.post("/table/<name>/create_index/")
    def create_index(name: str) -> Response:
        doc = optional_json()
        column = optional_str(doc, "column") or VECTOR_COLUMN
        index_type = (optional_str(doc, "index_type") or "IVF_PQ").upper()
        replace = optional_bool(doc, "replace", True)
        table = service.table(name)
        dataset = table.snapshot.dataset
        if column not in dataset.schema.names:
            raise InvalidInput(f"column '{column}' is not in table '{name}'")
        if index_type in VECTOR_TYPES:
            _create_vector_index(table, column, index_type, replace, doc)
        elif index_type in SCALAR_TYPES or index_type == "FTS":
            _create_lance_index(dataset, column, index_type, replace, doc)
        else:
            raise InvalidInput(f"index_type {index_type!r} is not supported",
                               f"supported: {', '.join([*VECTOR_TYPES, *SCALAR_TYPES, 'FTS'])}")
        return json_response({})

    @bp.post("/table/<name>/index/list/")
    def list_indices(name: str) -> Response:
        return json_response({"indexes": _list(service.table(name))})

    @bp.post("/table/<name>/index/<index>/stats/")
    def index_stats(name: str, index: str) -> Response:
        return json_response(_stats(service.table(name), index))

    @bp.post("/table/<name>/index/<index>/drop/")
    def drop_index(name: str, index: str) -> Response:
        table = service.table(name)
        if index == VECTOR_INDEX:
            if not table.drop_index(forget_choice=True):
                raise IndexNotFound(index)
            return json_response({})
        dataset = table.snapshot.dataset
        if index not in {i["name"] for i in dataset.list_indices()}:
            raise IndexNotFound(index)
        _lance(lambda: dataset.drop_index(index))
        return json_response({})


def _create_vector_index(table: Table, column: str, index_type: str, replace: bool, doc: dict[str, Any]) -> None:
    name = table.name
    if column != VECTOR_COLUMN:
        raise InvalidInput(f"{index_type} indexes the '{VECTOR_COLUMN}' column, not '{column}'")
    if not replace and table.index_version() is not None:
        raise InvalidInput(f"Index '{VECTOR_INDEX}' already exists on table '{name}' (replace is false)")
    metric = (optional_str(doc, "metric_type") or optional_str(doc, "distance_type") or "l2").lower()
    if metric not in ("l2", "cosine", "dot"):
        raise InvalidInput(f"metric_type must be l2, cosine or dot, got {metric!r}")
    if metric == "l2":
        # The client sends l2 whenever no metric was given (its default), so on a table created with another
        # metric l2 means "the table's": an l2 index there would serve none of the table's default searches.
        metric = table.snapshot.metric
    params: dict[str, Any] = {"codec": VECTOR_TYPES[index_type]}
    if params["codec"] == "pq":
        # num_bits 4 (LanceDB's 4-bit PQ): codes scanned with faiss's SIMD fast-scan (codec pq4); 8 (the default)
        bits = optional_int(doc, "num_bits", 0, 64) or 8
        if bits not in (4, 8):
            raise InvalidInput(f"num_bits must be 4 or 8 for IVF_PQ, got {bits}")
        params["codec"] = "pq4" if bits == 4 else "pq"
    rows = table.count_rows()
    if params["codec"] in ("pq", "pq4") and rows < PQ_MIN_ROWS:  # as LanceDB: PQ codebooks need 256 training rows
        raise InvalidInput(f"{index_type} needs at least {PQ_MIN_ROWS} rows to train, table '{name}' has {rows}",
                           "use IVF_FLAT or IVF_SQ for small tables")
    for ours, theirs in (("nlist", "num_partitions"), ("pq_m", "num_sub_vectors"), ("kmeans_iters", "max_iterations"),
                         ("hnsw_m", "m")):
        value = optional_int(doc, theirs, 0, 1_000_000)
        if value:
            params[ours] = value
    table.build_index(IndexParams.from_json(params), metric)


def _create_lance_index(dataset: Any, column: str, index_type: str, replace: bool, doc: dict[str, Any]) -> None:
    if column == VECTOR_COLUMN:
        raise InvalidInput(f"a {index_type} index cannot be built on the vector column")
    name = optional_str(doc, "name") or f"{column}_idx"
    if not replace and name in {i["name"] for i in dataset.list_indices()}:
        raise InvalidInput(f"Index '{name}' already exists (replace is false)")
    if index_type == "FTS":
        options = {k: doc[k] for k in FTS_OPTIONS if doc.get(k) is not None}
        _lance(lambda: dataset.create_scalar_index(column, "INVERTED", name=name, replace=True, **options))
    else:
        _lance(lambda: dataset.create_scalar_index(column, index_type, name=name, replace=True))


def _list(table: Table) -> list[dict[str, Any]]:
    snapshot = table.snapshot
    out = []
    status = table.index_status()
    if status["index"] is not None:
        out.append({"index_name": VECTOR_INDEX, "columns": [VECTOR_COLUMN],
                    "index_type": CODEC_TYPES.get(status["index"]["codec"], "IVF_FLAT"),
                    "num_indexed_rows": status["indexed_rows"], "num_unindexed_rows": status["unindexed_rows"]})
    for index in snapshot.dataset.list_indices():
        out.append({"index_name": index["name"], "columns": list(index["fields"]),
                    "index_type": LANCE_TYPES.get(str(index["type"]).lower(), str(index["type"]))})
    return out


def _stats(table: Table, index: str) -> dict[str, Any]:
    if index == VECTOR_INDEX:
        status = table.index_status()
        if status["index"] is None:
            raise IndexNotFound(index)
        return {"num_indexed_rows": status["indexed_rows"], "num_unindexed_rows": status["unindexed_rows"],
                "index_type": CODEC_TYPES.get(status["index"]["codec"], "IVF_FLAT"),
                "distance_type": status["index"]["metric"], "num_indices": 1}
    dataset = table.snapshot.dataset
    if index not in {i["name"] for i in dataset.list_indices()}:
        raise IndexNotFound(index)
    stats = _lance(lambda: dataset.index_statistics(index))
    return {"num_indexed_rows": int(stats.get("num_indexed_rows", 0)),
            "num_unindexed_rows": int(stats.get("num_unindexed_rows", 0)),
            "index_type": LANCE_TYPES.get(str(stats.get("index_type", "")).lower(), str(stats.get("index_type"))),
            "num_indices": int(stats.get("num_indices", 1))}


def _lance(run: Any) -> Any:
    try:
        return run()
    except ApplianceError:
        raise
    except (ValueError, OSError, RuntimeError, TypeError) as exc:
        raise InvalidInput("index operation failed", clean_lance_message(exc)) from exc
