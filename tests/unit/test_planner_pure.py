"""The planner as a pure function of (request, snapshot statistics, index) -> plan (planner/plan.py).

Statistics and manifests are built in memory: no table, no storage, so each test states exactly what the
planner knows. The last tests cover what feeds it from storage (planner/plan.py) on a real Lance table.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from appliance.index.manifest import IndexManifest, ObjectRef
from appliance.index.params import default_ef
from appliance.planner.plan import (
    FRAGMENT,
    PARTITION,
    FragmentStats,
    Routing,
    SnapshotStats,
    estimate_selectivity,
    plan_search,
    sample_fragments,
    snapshot_stats,
)
from appliance.query.catalog import LoadedIndex
from appliance.query.request import SearchRequest
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import rows_to_table

DIM = 4
BUILDS = itertools.count(1_000_000)  # each index another build (planner/plan.py memoises per build)
ONE_KEY = Routing(partition_group_bytes=10**9, fanout_min_bytes=10**12)


def stats(fragments: list[int] = (100, 100, 100, 100), deleted: int = 0, metric: str = "l2") -> SnapshotStats:
    """A version whose fragment i holds `fragments[i]` rows with consecutive ids from 0; `deleted` rows
    are gone (not counted live)."""
    frags, start = [], 0
    for fid, rows in enumerate(fragments):
        frags.append(FragmentStats(fid, rows, start, start + rows - 1))
        start += rows
    return SnapshotStats(table="t", version=7, dimension=DIM, metric=metric, columns=("vector", "n"),
                         payload_columns=("n",), fragments=tuple(frags), live_rows=start - deleted)


def index(nlist: int = 8, watermark: int = 400, rows: int | None = None, codec: str = "flat",
          metric: str = "l2", nprobes: int = 2, refine: int = 0, min_nprobes: int = 0) -> LoadedIndex:
    """An index of table "t" covering row ids below `watermark` (`rows` of them, all by default), centroid
    p at [p, 0, 0, 0]."""
    manifest = IndexManifest(
        table="t", index_version=3, metric=metric, dimension=DIM, codec=codec,
        params={"nprobes": nprobes, "refine_factor": refine}, table_version=5, row_id_watermark=watermark,
        rows=watermark if rows is None else rows, trained_rows=watermark, centroids=ObjectRef("c", 64, "x"),
        partitions=[[ObjectRef(f"p{p}", 100, "x", rows=10)] for p in range(nlist)], created_at=next(BUILDS),
        build_seconds=0.1, kind="full", recall={"min_nprobes": min_nprobes} if min_nprobes else None)
    centroids = np.zeros((nlist, DIM), np.float32)
    centroids[:, 0] = np.arange(nlist)
    return LoadedIndex(manifest, centroids)


def request(*firsts: float, k: int = 5, **options) -> SearchRequest:
    queries = np.zeros((len(firsts) or 1, DIM), np.float32)
    queries[:, 0] = firsts or (0.0,)
    return SearchRequest(queries=queries, k=k, table="t", **options)


def test_without_an_index_every_fragment_is_scanned_exactly() -> None:
    plan = plan_search(request(3.0), stats())
    assert plan.strategy == "exact" and not plan.uses_index
    assert [(t.kind, t.fragment_id, t.version) for t in plan.tasks] == [(FRAGMENT, f, 7) for f in range(4)]
    assert (plan.k, plan.fetch_k, plan.metric) == (5, 5, "l2")
    assert plan_search(request(3.0, filter="n > 3"), stats()).strategy == "exact-prefilter"


def test_an_index_probes_the_nearest_partitions() -> None:
    plan = plan_search(request(3.2, nprobes=3), stats(), index())
    assert plan.strategy == "ivf" and plan.index_version == 3 and plan.nprobes == 3
    assert plan.partitions == [2, 3, 4] and [(t.kind, t.partitions) for t in plan.tasks] == [(PARTITION, (2, 3, 4))]
    assert (plan.fetch_k, plan.verify_alive, plan.ef) == (5, False, 0)


def test_nprobes_defaults_from_the_index_is_raised_to_its_floor_and_capped_at_nlist() -> None:
    assert plan_search(request(0.0), stats(), index(nprobes=2)).nprobes == 2
    assert plan_search(request(0.0, nprobes=1), stats(), index(min_nprobes=4)).nprobes == 4
    assert plan_search(request(0.0, nprobes=50), stats(), index(nlist=8)).nprobes == 8


def test_graph_codecs_carry_the_search_breadth() -> None:
    plan = plan_search(request(1.0), stats(), index(codec="hnsw_sq"))
    assert plan.ef == default_ef(plan.fetch_k) and all(t.ef == 0 for t in plan.tasks)  # executors default it
    plan = plan_search(request(1.0, ef=300), stats(), index(codec="hnsw_flat"))
    assert plan.ef == 300 and {t.ef for t in plan.tasks} == {300}
    assert plan_search(request(1.0, ef=300), stats(), index(codec="flat")).ef == 0


def test_the_recall_monitors_breadth_multiplies_probes_and_ef() -> None:
    plan = plan_search(request(0.0), stats(), index(nprobes=2, min_nprobes=3), breadth=1.5)
    assert (plan.nprobes, plan.breadth) == (5, 1.5)  # ceil(max(2, floor 3) x 1.5)
    assert plan_search(request(0.0, nprobes=6), stats(), index(nlist=8), breadth=2.0).nprobes == 8  # capped
    plan = plan_search(request(1.0), stats(), index(codec="hnsw_sq"), breadth=2.0)
    assert plan.ef == 2 * default_ef(plan.fetch_k) and {t.ef for t in plan.tasks} == {plan.ef}
    plan = plan_search(request(1.0, ef=100), stats(), index(codec="hnsw_sq"), breadth=1.5)
    assert plan.ef == 150 and {t.ef for t in plan.tasks} == {150}
    assert plan_search(request(0.0), stats(), index(), breadth=0.5).nprobes == 2  # never below 1
    assert plan_search(request(0.0), stats(), breadth=4.0).strategy == "exact"


def test_a_selective_filter_is_prefiltered_exactly_else_postfiltered() -> None:
    selective = plan_search(request(1.0, filter="n < 3"), stats(), index(), selectivity=0.01)
    assert selective.strategy == "exact-prefilter" and not selective.uses_index
    assert selective.selectivity == 0.01
    broad = plan_search(request(1.0, filter="n > 3"), stats(), index(), selectivity=0.5)
    assert broad.strategy == "ivf-postfilter" and broad.postfilter
    assert broad.fetch_k == 5 * 2  # over-fetch by 1/selectivity, at least 2x
    rare = plan_search(request(1.0, filter="n > 3"), stats(), index(), selectivity=0.06)
    assert rare.strategy == "ivf-postfilter" and rare.fetch_k == 5 * 17  # ceil(1 / 0.06)
    # the threshold is the caller's; and a client asking for a post-filter gets one however selective
    assert plan_search(request(1.0, filter="n < 3"), stats(), index(), selectivity=0.06,
                       prefilter_threshold=0.1).strategy == "exact-prefilter"
    assert plan_search(request(1.0, filter="n < 3", prefilter=False), stats(), index(),
                       selectivity=0.01).strategy == "ivf-postfilter"


def test_the_index_is_left_out_when_bypassed_or_of_another_metric() -> None:
    assert plan_search(request(1.0, bypass_index=True), stats(), index()).strategy == "exact"
    plan = plan_search(request(1.0, metric="cosine"), stats(), index(metric="l2"))
    assert plan.strategy == "exact" and plan.metric == "cosine"
    assert plan.index_metric == "l2" and plan.explain()["index_metric"] == "l2"  # why: the API warns with it
    assert plan_search(request(1.0, bypass_index=True, metric="cosine"), stats(), index()).index_metric is None
    assert plan_search(request(1.0), stats(metric="cosine"), index(metric="cosine")).strategy == "ivf"


def test_rows_past_the_watermark_are_scanned_flat_from_it() -> None:
    plan = plan_search(request(1.0), stats([100, 100, 100, 100, 30]), index(watermark=350), routing=ONE_KEY)
    tail = [(t.fragment_id, t.min_row_id) for t in plan.tasks if t.kind == FRAGMENT]
    assert tail == [(3, 350), (4, 350)]  # fragment 3 straddles the watermark, fragment 4 is all new
    assert plan.work_bytes == 2 * 100 + (50 + 30) * DIM * 4  # two probed partitions, 80 unindexed rows
    assert not plan.verify_alive  # nothing deleted: 430 live = 350 indexed + at most 80 new
    assert not [t for t in plan_search(request(1.0), stats(), index()).tasks if t.kind == FRAGMENT]


def test_deletions_make_the_query_node_check_candidates_are_alive() -> None:
    plan = plan_search(request(1.0), stats(deleted=1), index())
    assert plan.verify_alive and plan.fetch_k == 5 + 5  # over-fetch what deletions may take
    assert not plan_search(request(1.0), stats(deleted=1), index(rows=399)).verify_alive  # deleted before the build
    # rows appended since the build do not hide a deleted indexed row: 429 live, at most 30 of them new
    assert plan_search(request(1.0), stats([100, 100, 100, 100, 30], deleted=1), index()).verify_alive


def test_refine_comes_from_the_request_else_the_index() -> None:
    assert plan_search(request(1.0), stats(), index(refine=10)).refine_factor == 10
    plan = plan_search(request(1.0, refine_factor=3), stats(), index(refine=10))
    assert plan.refine_factor == 3 and plan.fetch_k == 5 * 3
    assert plan_search(request(1.0, refine_factor=0), stats(), index(refine=10)).fetch_k == 5


def test_offset_is_planned_for() -> None:
    """LanceDB paging: the plan finds k + offset per query, whichever front or explain asked."""
    exact = plan_search(request(1.0, offset=4), stats())
    assert (exact.k, exact.fetch_k) == (9, 9)
    ivf = plan_search(request(1.0, offset=4, refine_factor=2), stats(), index())
    assert (ivf.k, ivf.fetch_k) == (9, 18)


def test_same_inputs_same_plan() -> None:
    """No hidden input (storage, clocks): the plan is a function of its arguments."""
    args = (request(0.5, 6.5, filter="n > 1"), stats([100, 100, 100, 100, 9]), index(watermark=400))
    first = plan_search(*args, selectivity=0.3)
    assert plan_search(*args, selectivity=0.3).explain() == first.explain()
    assert first.partitions == [0, 1, 6, 7] and first.probes.tolist() == [[0, 1], [6, 7]]  # each query its own


def test_sample_fragments_spread_over_the_table() -> None:
    small = stats([10] * 5)
    assert sample_fragments(small, rows=100) == [0, 1, 2, 3, 4]  # all of a small table: exact
    big = stats([100] * 100)
    chosen = sample_fragments(big, rows=1_000)
    assert len(chosen) == 10 and chosen == sorted(chosen) and chosen[0] == 0 and chosen[-1] >= 90


def small_table(root: str, metric: str = "l2", second: float = 0.0) -> TableStore:
    """Table "t" under `root`: 4 fragments of 50 rows, row i at [i, second, 0, 0], n = i."""
    store = TableStore(StorageRoot.parse(root))
    store.create("t", DIM, metric, {"n": "int64"})
    schema = store.snapshot("t").dataset.schema
    for start in range(0, 200, 50):
        store.append("t", rows_to_table([{"vector": [float(i), second, 0, 0], "n": i}
                                         for i in range(start, start + 50)], schema))
    return store


@pytest.fixture
def store(tmp_path) -> TableStore:
    return small_table(str(tmp_path / "root"))


def test_statistics_of_a_real_version(store: TableStore) -> None:
    store.delete("t", "n = 3")
    got = snapshot_stats(store.snapshot("t"))
    assert (got.table, got.dimension, got.metric, got.live_rows) == ("t", DIM, "l2", 199)
    assert got.columns == ("vector", "n") and got.payload_columns == ("n",)
    assert [(f.rows, f.first_row_id, f.last_row_id) for f in got.fragments] == [
        (50, 0, 49), (50, 50, 99), (50, 100, 149), (50, 150, 199)]
    assert snapshot_stats(store.snapshot("t")) is got  # gathered once per version


def test_selectivity_is_counted_not_materialised(store: TableStore, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = store.snapshot("t")
    assert estimate_selectivity(snapshot, snapshot_stats(snapshot), "n < 20") == pytest.approx(0.1)
    monkeypatch.setattr("appliance.planner.plan.SELECTIVITY_SAMPLE_ROWS", 50)  # a sample of one fragment
    monkeypatch.setattr(type(snapshot.dataset), "to_table", None)  # no row is materialised
    estimate = estimate_selectivity(snapshot, snapshot_stats(snapshot), "n >= 100")
    assert estimate in (0.0, 1.0)  # one whole fragment of four, each all in or all out
