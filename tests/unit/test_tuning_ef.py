"""A graph index's search breadth measured at build time (index/tuning.py): the rule on a controlled search,
then real builds (hnsw_flat, hnsw_sq) whose manifests carry the measured ef, and the planner holding searches
to it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import kernels
from appliance.index import IndexParams, IndexStore
from appliance.index.builder import build_full, build_partial
from appliance.index.params import GRAPH_EF_FLOOR, default_ef
from appliance.index.tuning import EF_LADDER, EF_PLATEAU, RecallProbe, sample_target
from appliance.planner.plan import SearchRequest, plan_search, snapshot_stats
from appliance.query.catalog import IndexCatalog
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type

DIM = 16
ROWS = 6_000


def clustered(n: int, seed: int) -> np.ndarray:
    centers = np.random.default_rng(11).standard_normal((24, DIM)) * 3
    rng = np.random.default_rng(seed)
    return (centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, DIM))).astype(np.float32)


def probe_of(data: np.ndarray) -> RecallProbe:
    """A probe of 50 rows of `data` (row ids = positions) that has seen the whole table in one partition."""
    picks = np.arange(0, len(data), len(data) // 50)[:50]
    probe = RecallProbe(data[picks], picks.astype(np.uint64), "l2")
    probe.observe(np.arange(len(data), dtype=np.uint64), data, np.zeros(len(data), dtype=np.int64))
    probe.probe_graphs(np.zeros((1, DIM), np.float32), 1)
    return probe


def exact_search(data: np.ndarray, misses: dict[int, int]):
    """A stand-in graph search: the exact top k, but the last `misses[ef]` of each query's own top k + 1
    replaced by far rows (a walk of that breadth missed them)."""
    ids = np.arange(len(data), dtype=np.uint64)

    def search(queries: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray]:
        got, dists = kernels.search_block(queries, data, ids, "l2", k + 20)
        miss = misses[ef]
        if miss:
            got = np.concatenate([got[:, : k - miss], got[:, -miss:]], axis=1)
            dists = np.concatenate([dists[:, : k - miss], dists[:, -miss:]], axis=1)
        return got[:, :k], dists[:, :k]
    return search


def test_the_rule_takes_the_smallest_ef_that_reaches_the_sample_target() -> None:
    data = clustered(2_000, 1)
    probe = probe_of(data)
    # 2 of 10 neighbours missed below ef 96, none from 96 on: recall 0.8, then 1.0
    probe.observe_graph(0, exact_search(data, {ef: 2 if ef < 96 else 0 for ef in EF_LADDER}))
    tuned = probe.tune_ef(0.95)
    assert tuned["ef"] == 96 and tuned["ef_sample_recall"] == 1.0
    assert [r for _, r in tuned["ef_recalls"]] == [0.8] * EF_LADDER.index(96) + [1.0] * (len(EF_LADDER) - 5)
    # a lower target is reached by a narrower walk
    assert probe.tune_ef(0.6)["ef"] == EF_LADDER[0]


def test_where_no_breadth_reaches_the_target_the_rule_stops_where_recall_levels_off() -> None:
    """hnsw_sq's 8-bit codes lose a little that no ef buys back: the rule takes the smallest ef within
    EF_PLATEAU of the best the ladder measured, not the widest."""
    data = clustered(2_000, 2)
    probe = probe_of(data)
    probe.observe_graph(0, exact_search(data, {ef: 3 if ef < 48 else 1 for ef in EF_LADDER}))
    tuned = probe.tune_ef(0.95)
    best = max(r for _, r in tuned["ef_recalls"])
    assert best < sample_target(0.95) and tuned["ef"] == 48 and tuned["ef_sample_recall"] >= best - EF_PLATEAU


def table_of(vectors: np.ndarray) -> pa.Table:
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(
        vector_type(DIM)), "row": np.arange(len(vectors))})


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = StorageRoot.parse(str(tmp_path_factory.mktemp("ef") / "data"))
    tables, indexes = TableStore(root), IndexStore(root)
    for name in ("t", "u"):  # t: the tests of one codec each (they append to it); u: the next test's
        tables.create(name, DIM, "l2", {"row": "int64"})
        tables.append(name, table_of(clustered(ROWS, 3)))
    return tables, indexes


@pytest.mark.parametrize("codec", ["hnsw_flat", "hnsw_sq"])
def test_a_graph_build_stores_the_measured_ef_and_searches_are_held_to_it(graphs, codec) -> None:
    tables, indexes = graphs
    # target 0.999: this table's rows need a wider walk than the ladder's first steps
    manifest = build_full(tables, indexes, "t", IndexParams(codec=codec, nlist=4, target_recall=0.999))
    recall = manifest.recall
    measured = recall["ef"]
    assert measured in EF_LADDER and recall["min_ef"] == measured == manifest.min_ef
    ladder = dict(map(tuple, recall["ef_recalls"]))  # the graphs' recall on the sample rows at every ef
    assert recall["ef_sample_recall"] == ladder[measured]
    reach = min(sample_target(0.999), max(ladder.values()) - EF_PLATEAU)
    assert measured == min(e for e, r in ladder.items() if r >= reach)
    if codec == "hnsw_flat":  # exact rows: this table's rows need a wider walk than the ladder's first step
        assert measured > EF_LADDER[0] and ladder[measured] >= sample_target(0.999)
    else:  # 8-bit codes: recall levels off below the target, and the rule stops there
        assert max(ladder.values()) < sample_target(0.999)
    assert manifest.params["ef"] == max(GRAPH_EF_FLOOR, measured)

    stats = snapshot_stats(tables.snapshot("t"))
    index = IndexCatalog(indexes).current("t")
    queries = clustered(2, 9)
    default = plan_search(SearchRequest(queries=queries, k=10), stats, index)
    assert default.ef == max(manifest.params["ef"], default_ef(10)) and {t.ef for t in default.tasks} == {default.ef}
    assert plan_search(SearchRequest(queries=queries, k=10, ef=measured // 2), stats, index).ef == measured  # raised
    assert plan_search(SearchRequest(queries=queries, k=10, ef=900), stats, index).ef == 900
    # a partial build keeps the measurement
    tables.append("t", table_of(clustered(40, 4)).set_column(1, "row", pa.array(np.arange(ROWS, ROWS + 40))))
    assert build_partial(tables, indexes, "t").recall == recall


def test_a_users_ef_stands_and_a_lower_target_lowers_the_floor(graphs) -> None:
    tables, indexes = graphs
    fixed = build_full(tables, indexes, "u", IndexParams(codec="hnsw_flat", nlist=4, ef=20, target_recall=0.999))
    assert fixed.params["ef"] == 20 and fixed.min_ef == 0 and fixed.recall["ef"] in EF_LADDER  # measured, not imposed
    stats = snapshot_stats(tables.snapshot("u"))
    plan = plan_search(SearchRequest(queries=clustered(1, 9), k=10, ef=17), stats, IndexCatalog(indexes).current("u"))
    assert plan.ef == 17
    default = plan_search(SearchRequest(queries=clustered(1, 9), k=10), stats, IndexCatalog(indexes).current("u"))
    assert default.ef == max(20, default_ef(10))
    low = build_full(tables, indexes, "u", IndexParams(codec="hnsw_flat", nlist=4, target_recall=0.6))
    assert 0 < low.min_ef < fixed.recall["ef"]
    # a rebuild measures again: the resolved ef is not carried over as if the user had chosen it
    assert IndexParams.for_rebuild(low.params).ef == 0
    # codecs without a graph keep no breadth
    assert IndexParams().resolved(8_000, DIM).ef == 0
    assert IndexParams(codec="hnsw_sq").resolved(8_000, DIM).ef == GRAPH_EF_FLOOR
