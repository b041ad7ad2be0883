"""The query node's work, independent of any HTTP front: tables, writes and searches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

import kernels
from appliance.errors import InvalidInput
from appliance.planner.plan import SearchPlan, SearchRequest, plan_search
from appliance.query.dispatch import Dispatcher
from appliance.storage.tables import TableInfo, TableStore


@dataclass(frozen=True)
class SearchResult:
    """Results of one search: per query, rows best first, each with `_rowid`, `_distance` and payload."""

    table: str
    version: int
    plan: SearchPlan
    rows: pa.Table  # query_index, _rowid, _distance, then the selected columns

    def per_query(self, nq: int) -> list[list[dict[str, Any]]]:
        grouped: list[list[dict[str, Any]]] = [[] for _ in range(nq)]
        for row in self.rows.to_pylist():
            grouped[row.pop("query_index")].append(row)
        return grouped


class QueryService:
    def __init__(self, store: TableStore, dispatcher: Dispatcher) -> None:
        self.store = store
        self.dispatcher = dispatcher

    def create_table(self, name: str, dimension: int, metric: str, payload: Any) -> TableInfo:
        return self.store.create(name, dimension, metric, payload)

    def list_tables(self) -> list[str]:
        return self.store.list()

    def describe(self, name: str) -> TableInfo:
        return self.store.describe(name)

    def describe_schema(self, name: str) -> pa.Schema:
        return self.store.snapshot(name).dataset.schema

    def drop(self, name: str) -> None:
        self.store.drop(name)

    def insert(self, name: str, data: pa.Table) -> int:
        """Commit rows and return the committed version; the caller acknowledges only after this returns."""
        return self.store.append(name, data)

    def delete(self, name: str, predicate: str) -> tuple[int, int]:
        return self.store.delete(name, predicate)

    def search(self, name: str, request: SearchRequest, request_id: str = "") -> SearchResult:
        """Pin the latest version, run the plan on the executors, then fetch payload from that version."""
        snapshot = self.store.snapshot(name)
        columns = request.columns if request.columns is not None else snapshot.payload_columns
        unknown = [c for c in columns if c not in snapshot.dataset.schema.names]
        if unknown:
            raise InvalidInput(f"unknown column(s) in columns: {', '.join(map(str, unknown))}")
        plan = plan_search(snapshot, request)
        ids, dists = self.dispatcher.search(plan, request.queries, request_id)
        found = ids != kernels.NO_ID
        query_index = np.nonzero(found)[0].astype(np.int32)
        row_ids = ids[found]
        distances = dists[found]
        payload = snapshot.take(np.unique(row_ids), columns)
        arrays: dict[str, Any] = {
            "query_index": pa.array(query_index, pa.int32()),
            "_rowid": pa.array(row_ids, pa.uint64()),
            "_distance": pa.array(distances, pa.float32()),
        }
        schema = snapshot.dataset.schema
        for column in columns:
            values = [payload[int(r)][column] for r in row_ids]
            arrays[column] = pa.array(values, type=schema.field(column).type)
        return SearchResult(snapshot.name, snapshot.version, plan, pa.table(arrays))
