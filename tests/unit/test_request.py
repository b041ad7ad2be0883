"""One SearchRequest, checked once (query/request.py): what both fronts build, what validation resolves
against the pinned version, and that a search's filter meets the cost guard and Lance's type check once
each, on a real table with a real index."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from lance.dataset import LanceScanner
from test_planner_pure import DIM, small_table

from appliance.errors import InvalidInput, LimitExceeded
from appliance.index import IndexParams, IndexStore
from appliance.index.builder import build_full
from appliance.planner.plan import snapshot_stats
from appliance.query.catalog import IndexCatalog
from appliance.query.dispatch import Dispatcher
from appliance.query.lancedb.query import parse_query
from appliance.query.request import parse_search, search_request, validate
from appliance.query.service import QueryService
from appliance.routing import HashRing
from appliance.storage import StorageRoot, TableStore


class AllLive:
    def __init__(self, urls: list[str]) -> None:
        self.ring = HashRing(urls)

    def down(self) -> set[str]:
        return set()


@pytest.fixture
def store(tmp_path) -> TableStore:
    """Table "t" (cosine): 200 rows in 4 fragments, row i at [i, 1, 0, 0], n = i."""
    return small_table(str(tmp_path / "root"), "cosine", 1.0)


@pytest.fixture
def service(store: TableStore, tmp_path) -> QueryService:
    indexes = IndexStore(StorageRoot.parse(str(tmp_path / "root")))
    build_full(store, indexes, "t", IndexParams(codec="flat", nlist=2))
    return QueryService(store, Dispatcher(AllLive(["http://127.0.0.1:1"]), "token", 1.0, 0.25),  # type: ignore[arg-type]
                        IndexCatalog(indexes))


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    """Counts the cost guard's runs (storage/filters.py) and Lance's filter type checks (explain_plan)."""
    counts: Counter = Counter()
    import appliance.storage.tables as tables

    guard, explain = tables.check_expression, LanceScanner.explain_plan

    def counted_guard(*args, **kwargs):
        counts["guard"] += 1
        return guard(*args, **kwargs)

    def counted_explain(self, *args, **kwargs):
        counts["type_check"] += 1
        return explain(self, *args, **kwargs)

    monkeypatch.setattr(tables, "check_expression", counted_guard)
    monkeypatch.setattr(LanceScanner, "explain_plan", counted_explain)
    yield counts


def test_a_filtered_index_search_checks_its_filter_once(service: QueryService, checks: Counter) -> None:
    doc = {"vector": [3.0, 1.0, 0.0, 0.0], "k": 5, "filter": "n > 10"}
    plan = service.table("t").explain(parse_search("t", doc, 100, 10)[0])
    assert plan.uses_index and plan.strategy == "ivf-postfilter" and plan.selectivity == pytest.approx(0.945)
    assert checks == {"guard": 1, "type_check": 1}
    service.table("t").explain(parse_search("t", doc, 100, 10)[0])  # the same version and filter: typed already
    assert checks == {"guard": 2, "type_check": 1}
    lance_body = {"vector": [3.0, 1.0, 0.0, 0.0], "k": 5, "offset": 2, "filter": "n > 11"}
    plan = service.table("t").explain(parse_query("t", lance_body, 100, 10).search)
    assert checks == {"guard": 3, "type_check": 2} and plan.k == 7


def test_both_fronts_build_the_same_request() -> None:
    native, _ = parse_search("t", {"vector": [1.0, 2.0, 3.0, 4.0], "k": 7, "metric": "DOT", "filter": "n > 1",
                                   "nprobes": 3, "refine_factor": 2, "prefilter": False}, 100, 10)
    lance = parse_query("t", {"vector": [1.0, 2.0, 3.0, 4.0], "k": 7, "distance_type": "dot", "filter": "n > 1",
                              "nprobes": 3, "refine_factor": 2, "prefilter": False, "columns": ["n"]}, 100, 10).search
    assert lance is not None
    fields = ("table", "k", "offset", "metric", "filter", "nprobes", "refine_factor", "prefilter", "bypass_index")
    assert [getattr(native, f) for f in fields] == [getattr(lance, f) for f in fields]
    assert native.metric == "dot" and (native.columns, lance.columns) == (None, ("n",))
    assert (native.include_vector, lance.include_vector) == (False, True)


def test_the_builder_names_each_front_s_fields() -> None:
    q = np.zeros((1, DIM), np.float32)
    with pytest.raises(LimitExceeded, match="k must be between 1 and 100"):
        search_request("t", q, 101, 100)
    with pytest.raises(LimitExceeded, match=r"k \+ offset must be between 1 and 100, got 101"):
        parse_query("t", {"vector": [0.0] * DIM, "k": 90, "offset": 11}, 100, 10)
    with pytest.raises(InvalidInput, match="distance_type must be one of l2, cosine, dot"):
        parse_query("t", {"vector": [0.0] * DIM, "distance_type": "hamming"}, 100, 10)
    with pytest.raises(InvalidInput, match="metric must be one of"):
        search_request("t", q, 5, 100, metric=5)
    with pytest.raises(InvalidInput, match="columns must be a list"):
        search_request("t", q, 5, 100, columns="n")


def test_validation_resolves_against_the_version(store: TableStore) -> None:
    old = store.snapshot("t", 2)
    snap = store.snapshot("t")
    stats = snapshot_stats(snap)
    request = search_request("t", np.zeros((1, DIM), np.float32), 5, 100)
    valid = validate(request, snap, stats)
    assert (valid.metric, valid.columns, valid.bypass_index) == ("cosine", ("n",), False)
    every = validate(search_request("t", request.queries, 5, 100, include_vector=True), snap, stats)
    assert every.columns == ("vector", "n")
    assert validate(request, old, snapshot_stats(old), latest=False).bypass_index  # the index is the latest's
    with pytest.raises(InvalidInput, match="dimension 3, table 't' has dimension 4"):
        validate(search_request("t", np.zeros((1, 3), np.float32), 5, 100), snap, stats)
    with pytest.raises(InvalidInput, match="unknown column"):
        validate(search_request("t", request.queries, 5, 100, columns=["nope"]), snap, stats)
    with pytest.raises(InvalidInput, match="invalid filter"):
        validate(search_request("t", request.queries, 5, 100, filter="nope > 1"), snap, stats)
