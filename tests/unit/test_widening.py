"""A query of a batch that comes up short (a post-filter or deletions left it fewer than k rows while its
candidates were full) is searched again alone, 4x and 16x wider, then exactly; the batch's other queries keep
the answers they got, as they would alone (appliance/query/service.py `_execute`, dispatch.replace_rows)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

import kernels
from appliance.deadline import Deadline
from appliance.index import IndexStore
from appliance.index.builder import build_full
from appliance.index.params import IndexParams
from appliance.planner.plan import SearchPlan
from appliance.query.catalog import IndexCatalog
from appliance.query.dispatch import Found
from appliance.query.request import search_request
from appliance.query.service import QueryService
from appliance.storage import StorageRoot, TableStore


class ShortFleet:
    """Stands in for the executors: an IVF plan answers every query with its own number as the row id
    (query 0 -> row 100, ...), and query number `short` of the stacked batch short of k with full candidates,
    until the plan is exact, which answers every query fully with row 900 + query number."""

    search_timeout = 10.0

    def __init__(self, short: int) -> None:
        self.short = short
        self.calls: list[tuple[bool, int, int]] = []  # (uses the index, queries, fetch_k) of every dispatch

    def search(self, plan: SearchPlan, queries: np.ndarray, request_id: str = "", deadline: Deadline | None = None,
               columns: Sequence[str] = (), schema: pa.Schema | None = None) -> Found:
        self.calls.append((plan.uses_index, len(queries), plan.fetch_k))
        nq, k = len(queries), plan.k
        base = 900 if not plan.uses_index else 100
        ids = np.array([[base + int(q[0])] * k for q in queries], np.uint64)
        short = np.zeros(nq, bool)
        if plan.uses_index:
            short = np.array([int(q[0]) == self.short for q in queries])
            ids[short, 1:] = kernels.NO_ID
        distances = np.where(ids == kernels.NO_ID, np.inf, 1.0).astype(np.float32)
        return Found(ids, distances, None, short)


def test_only_the_short_query_is_searched_again(tmp_path) -> None:
    root = StorageRoot.parse(str(tmp_path / "root"))
    store, indexes = TableStore(root), IndexStore(root)
    store.create("t", 2, "l2", {"n": "int64"})
    store.append("t", pa.table({"vector": pa.array([[float(i), 0.0] for i in range(300)], pa.list_(pa.float32(), 2)),
                                "n": np.arange(300)}))
    build_full(store, indexes, "t", IndexParams(codec="flat", nlist=2, seed=1))
    fleet = ShortFleet(short=1)
    service = QueryService(store, fleet, IndexCatalog(indexes))  # type: ignore[arg-type]
    queries = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], np.float32)  # query numbers in the first coordinate
    result = service.table("t").search(search_request("t", queries, 3, 100, columns=[]))
    first = fleet.calls[0][2]
    # the batch, then query 1 alone: 4x and 16x the candidates, then exactly
    assert fleet.calls == [(True, 3, first), (True, 1, 4 * first), (True, 1, 16 * first), (False, 1, 3)]
    answers = result.per_query(3)
    assert [r["_rowid"] for r in answers[0]] == [100] * 3 and [r["_rowid"] for r in answers[2]] == [102] * 3
    assert [r["_rowid"] for r in answers[1]] == [901] * 3  # its exact answer
