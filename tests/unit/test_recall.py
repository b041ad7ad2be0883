"""Recall that holds by default: the build's probe count (index/tuning.py), the planner's floor, the monitor."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import kernels
from appliance.errors import InvalidInput
from appliance.index import IndexParams, IndexStore
from appliance.index.builder import build_full, build_partial
from appliance.index.tuning import RecallProbe
from appliance.planner.plan import SearchRequest, plan_search, snapshot_stats
from appliance.query.catalog import IndexCatalog
from appliance.query.recall import RecallMonitor
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type

DIM = 32
CLUSTERS = 40


def clustered(n: int, seed: int, centers: np.ndarray) -> np.ndarray:
    """Points around random cluster centres, spread wide enough that partitions overlap (as real
    embeddings do): the default nlist/6 probes miss neighbours across partition borders."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(centers), n)
    return (centers[picks] + rng.standard_normal((n, DIM)) * 2.5).astype(np.float32)


def table_of(vectors: np.ndarray, start: int = 0) -> pa.Table:
    return pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(
        vector_type(DIM)), "row": np.arange(start, start + len(vectors))})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    centers = np.random.default_rng(7).standard_normal((CLUSTERS, DIM)) * 1.2
    data = clustered(12_000, 1, centers)
    root = StorageRoot.parse(str(tmp_path_factory.mktemp("recall") / "data"))
    tables = TableStore(root)
    tables.create("t", DIM, "l2", {"row": "int64"})
    tables.append("t", table_of(data))
    indexes = IndexStore(root)
    manifest = build_full(tables, indexes, "t", IndexParams())
    held_out = clustered(300, 99, centers)  # unseen queries from the same distribution
    return tables, indexes, manifest, data, held_out, centers


def ivf_recall(manifest, indexes, data: np.ndarray, queries: np.ndarray, nprobes: int, k: int = 10) -> float:
    """recall@k of a flat IVF search of the built index against the exact answer (row ids are positions)."""
    centroids = indexes.get_object(manifest.centroids)[0]["centroids"]
    labels, _ = kernels.assign(data, centroids, metric="l2")
    probed = kernels.probe(queries, centroids, nprobes, metric="l2")
    ids = np.arange(len(data), dtype=np.uint64)
    exact, _ = kernels.search_block(queries, data, ids, "l2", k)
    hits = 0
    for q, parts in enumerate(probed):
        rows = np.isin(labels, parts)
        got, _ = kernels.search_block(queries[q:q + 1], data[rows], ids[rows], "l2", k)
        hits += len(set(got[0].tolist()) & set(exact[q].tolist()))
    return hits / (len(queries) * k)


def test_the_stored_probe_count_reaches_the_target_on_unseen_queries(built) -> None:
    _, indexes, manifest, data, held_out, _ = built
    recall = manifest.recall
    assert recall["target_recall"] == 0.95 and recall["sample_target"] == 0.975
    assert recall["nprobes"] == manifest.params["nprobes"] == recall["min_nprobes"] >= 1
    assert recall["sample_recall"] >= 0.975
    assert ivf_recall(manifest, indexes, data, held_out, recall["nprobes"]) >= 0.95
    # the old rule (nlist / 6) does not reach it on this data, so the measured count is what carries it
    old = int(np.ceil(manifest.nlist / 6))
    assert old < recall["nprobes"] and ivf_recall(manifest, indexes, data, held_out, old) < 0.95


def test_the_rule_finds_the_smallest_count(built) -> None:
    """One probe fewer misses the sample's bar: the count is the smallest, not just a sufficient one."""
    _, indexes, manifest, data, _, _ = built
    tables = built[0]
    snap = tables.snapshot("t")
    probe = RecallProbe.sample(snap, len(data), 0, "l2")
    centroids = indexes.get_object(manifest.centroids)[0]["centroids"]
    labels, _ = kernels.assign(data, centroids, metric="l2")
    probe.observe(np.arange(len(data), dtype=np.uint64), data, labels)
    tuned = probe.tune(centroids, 0.95)
    assert tuned["nprobes"] == manifest.recall["nprobes"]
    lower = probe.tune(centroids, 0.6)
    assert lower["nprobes"] < tuned["nprobes"]
    # recall at one probe fewer, measured directly on the sample's rows (own row excluded)
    queries = probe.queries
    own = probe.query_ids.astype(np.int64)
    exact, _ = kernels.search_block(queries, data, np.arange(len(data), dtype=np.uint64), "l2", 11)
    order = kernels.probe(queries, centroids, tuned["nprobes"] - 1, metric="l2")
    hits = total = 0
    for q in range(len(queries)):
        others = [int(i) for i in exact[q] if int(i) != own[q]][:10]
        total += len(others)
        hits += sum(labels[i] in order[q] for i in others)
    assert hits / total < 0.975


def test_clients_below_the_floor_are_raised_and_a_lower_target_lowers_it(built) -> None:
    tables, indexes, manifest, _, held_out, _ = built
    snap = snapshot_stats(tables.snapshot("t"))
    index = IndexCatalog(indexes).current("t")
    floor = manifest.recall["min_nprobes"]
    plan = plan_search(SearchRequest(queries=held_out[:2], k=10, nprobes=1), snap, index)
    assert plan.nprobes == floor
    plan = plan_search(SearchRequest(queries=held_out[:2], k=10, nprobes=floor + 3), snap, index)
    assert plan.nprobes == floor + 3
    # a partial build keeps the stored measurement
    tables.append("t", table_of(clustered(50, 5, built[5]), start=len(built[3])))
    partial = build_partial(tables, indexes, "t")
    assert partial.recall == manifest.recall and partial.min_nprobes == floor
    # the user's own nprobes is never overridden, and a lower target lets lower client values through
    fixed = build_full(tables, indexes, "t", IndexParams(nprobes=2))
    assert fixed.min_nprobes == 0 and fixed.params["nprobes"] == 2
    low = build_full(tables, indexes, "t", IndexParams(target_recall=0.6))
    assert 1 <= low.min_nprobes < floor


@pytest.mark.parametrize("value", [0.4, 1.01, "0.9", True, None])
def test_target_recall_is_bounded(value) -> None:
    with pytest.raises(InvalidInput, match="target_recall"):
        IndexParams.from_json({"target_recall": value})
    assert IndexParams.from_json({"target_recall": 1}).target_recall == 1.0


def test_the_monitor_samples_at_the_rate_and_computes_recall() -> None:
    answers = {}

    def exact(name, request):
        return answers[name]

    monitor = RecallMonitor(exact, sample_rate=1.0, per_second=1e9, window=4)
    try:
        q = np.zeros((1, 4), np.float32)
        answers["t"] = np.array([[1, 2, 3, 4]], np.uint64)
        monitor.offer("t", SearchRequest(queries=q, k=4), np.array([[1, 2, 9, 8]], np.uint64))
        monitor.offer("t", SearchRequest(queries=q, k=4), np.array([[1, 2, 3, 4]], np.uint64))
        assert monitor.wait_idle(10)
        assert monitor.recall("t") == pytest.approx(0.75)
        assert monitor.recall("other") is None
        # the rate limits: a share of 0 samples nothing; at most `per_second` a second
        none = RecallMonitor(exact, sample_rate=0.0, per_second=1e9)
        none.offer("t", SearchRequest(queries=q, k=4), np.array([[1, 2, 3, 4]], np.uint64))
        assert none.wait_idle(5) and none.recall("t") is None
        slow = RecallMonitor(exact, sample_rate=1.0, per_second=0.01)
        for answered in ([1, 2, 9, 8], [1, 2, 3, 4], [1, 2, 3, 4]):
            slow.offer("t", SearchRequest(queries=q, k=4), np.array([answered], np.uint64))
        assert slow.wait_idle(10) and slow.describe("t")["samples"] == 1 and slow.recall("t") == 0.5
        # index-less (exact) searches are not sampled: they are their own reference
        monitor.offer("x", SearchRequest(queries=q, k=4, bypass_index=True), np.array([[9, 9, 9, 9]], np.uint64))
        assert monitor.wait_idle(5) and monitor.recall("x") is None
        slow.close()
    finally:
        monitor.close()


def test_the_monitor_keeps_its_exact_reruns_within_its_time_budget() -> None:
    """A re-run that took t seconds admits the next only t x (1/budget - 1) seconds later, so a table whose
    exact scan is slow (a large one) is sampled less, whatever the rate and per-second limits allow."""
    import time

    exact = np.array([[1, 2, 3, 4]], np.uint64)

    def slow_exact(_name, _request):
        time.sleep(0.2)
        return exact

    q = np.zeros((1, 4), np.float32)
    budgeted = RecallMonitor(slow_exact, sample_rate=1.0, per_second=1e9, budget=0.01)  # next after >= 19.8 s
    free = RecallMonitor(slow_exact, sample_rate=1.0, per_second=1e9, budget=1.0)
    try:
        for monitor in (budgeted, free):
            monitor.offer("t", SearchRequest(queries=q, k=4), exact)
            assert monitor.wait_idle(30)
            for _ in range(3):
                monitor.offer("t", SearchRequest(queries=q, k=4), exact)
                assert monitor.wait_idle(30)
        assert budgeted.describe("t")["samples"] == 1
        assert free.describe("t")["samples"] == 4
    finally:
        budgeted.close()
        free.close()


def test_the_monitor_raises_a_tables_breadth_while_its_recall_is_below_target() -> None:
    """Live recall below the index's target widens that index's searches, step by step, up to a bound; a
    sample taken at an older breadth or of an older index version does not steer; a new index starts at 1."""
    from appliance.query import recall as recall_module

    exact = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], np.uint64)
    monitor = RecallMonitor(lambda _name, _request: exact, sample_rate=1.0, per_second=1e9)
    q = np.zeros((1, 4), np.float32)
    poor = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 90, 91]], np.uint64)  # recall 0.8
    good = exact

    def feed(answer: np.ndarray, n: int, index_version: int = 3, breadth: float = 1.0) -> None:
        for _ in range(n):
            monitor.offer("t", SearchRequest(queries=q, k=10), answer, index_version, 0.95, breadth)
            assert monitor.wait_idle(10)

    try:
        assert monitor.breadth("t", 3) == 1.0
        feed(good, recall_module.ADJUST_SAMPLES)
        assert monitor.breadth("t", 3) == 1.0  # on target: unchanged
        feed(poor, 5)
        assert monitor.breadth("t", 3) == 1.0  # the last 20: 15 at 1.0 and 5 at 0.8 average 0.95, on target
        feed(poor, 1)
        assert monitor.breadth("t", 3) == recall_module.BREADTH_STEP
        feed(poor, recall_module.ADJUST_SAMPLES, breadth=1.0)  # taken before the raise: ignored
        assert monitor.breadth("t", 3) == recall_module.BREADTH_STEP
        feed(poor, recall_module.ADJUST_SAMPLES, breadth=recall_module.BREADTH_STEP)  # at the new value: counts
        assert monitor.breadth("t", 3) == recall_module.BREADTH_STEP ** 2
        for _ in range(30):
            feed(poor, recall_module.ADJUST_SAMPLES, breadth=monitor.breadth("t", 3))
        assert monitor.breadth("t", 3) == recall_module.MAX_BREADTH
        assert monitor.describe("t")["breadth"] == recall_module.MAX_BREADTH
        feed(poor, recall_module.ADJUST_SAMPLES, index_version=2, breadth=1.0)  # an older index: ignored
        assert monitor.breadth("t", 3) == recall_module.MAX_BREADTH
        feed(good, 1, index_version=4)
        assert monitor.breadth("t", 4) == 1.0 and monitor.breadth("t", 3) == 1.0
        gauges = {g.name: g for g in monitor.gauges()}
        assert gauges["appliance_search_breadth"].samples[0].value == 1.0
    finally:
        monitor.close()
