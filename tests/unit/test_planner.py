"""The planner's routing groups: what a plan's tasks are keyed by, and when a plan fans out (planner/plan.py)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.index import IndexStore
from appliance.index.manifest import IndexManifest, ObjectRef
from appliance.planner.plan import (
    FRAGMENT,
    PARTITION,
    PROBES_FIELD,
    Routing,
    SearchPlan,
    SearchRequest,
    Task,
    group_numbers,
    plan_search,
    probes_from_header,
    probes_of,
)
from appliance.planner.plan import snapshot_stats as stats
from appliance.query.catalog import IndexCatalog, LoadedIndex
from appliance.query.dispatch import Dispatcher
from appliance.query.service import QueryService
from appliance.routing import HashRing
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import rows_to_table

DIM = 4
ROWS_PER_FRAGMENT = 50
FRAGMENT_BYTES = ROWS_PER_FRAGMENT * DIM * 4


@pytest.fixture
def store(tmp_path) -> TableStore:
    """Table "t": 4 fragments of 50 rows (800 bytes of vectors each), row i at [i, 0, 0, 0]."""
    store = TableStore(StorageRoot.parse(str(tmp_path / "root")))
    store.create("t", DIM, "l2", {"n": "int64"})
    schema = store.snapshot("t").dataset.schema
    for start in range(0, 4 * ROWS_PER_FRAGMENT, ROWS_PER_FRAGMENT):
        store.append("t", rows_to_table([{"vector": [float(i), 0, 0, 0], "n": i}
                                         for i in range(start, start + ROWS_PER_FRAGMENT)], schema))
    return store


BUILDS = itertools.count(1)


def index(sizes: list[int], watermark: int = 4 * ROWS_PER_FRAGMENT, version: int = 3) -> LoadedIndex:
    """An index of table "t" with one partition per size (its objects' bytes), centroid p at [p, 0, 0, 0];
    each is another build (created_at), as two published manifests of one version never differ."""
    manifest = IndexManifest(
        table="t", index_version=version, metric="l2", dimension=DIM, codec="flat",
        params={"nprobes": len(sizes), "refine_factor": 0}, table_version=5, row_id_watermark=watermark,
        rows=watermark, trained_rows=watermark, centroids=ObjectRef("c", 64, "x"),
        partitions=[[ObjectRef(f"v{version}/p{p}", size, "x", rows=10)] for p, size in enumerate(sizes)],
        created_at=float(next(BUILDS)), build_seconds=0.1, kind="full")
    centroids = np.zeros((len(sizes), DIM), np.float32)
    centroids[:, 0] = np.arange(len(sizes))
    return LoadedIndex(manifest, centroids)


def request(*firsts: float, **options) -> SearchRequest:
    queries = np.zeros((len(firsts), DIM), np.float32)
    queries[:, 0] = firsts
    return SearchRequest(queries=queries, k=5, table="t", **options)


ALWAYS = Routing(partition_group_bytes=100, fanout_min_bytes=0)


@given(st.lists(st.integers(0, 300), max_size=60), st.integers(1, 200))
def test_groups_are_consecutive_within_the_budget_and_full(sizes: list[int], budget: int) -> None:
    numbers = group_numbers(sizes, budget)
    assert numbers == sorted(numbers) and (not numbers or numbers[0] == 0)
    assert all(b - a in (0, 1) for a, b in zip(numbers, numbers[1:], strict=False))
    for group in set(numbers):
        members = [s for s, g in zip(sizes, numbers, strict=True) if g == group]
        assert sum(members) <= budget or len(members) == 1  # only a member over budget stands alone above it
        following = numbers.index(group) + len(members)
        if following < len(sizes):  # greedy: the next member did not fit
            assert sum(members) + sizes[following] > budget
    # appending never moves earlier members
    assert group_numbers([*sizes, 50], budget)[:len(sizes)] == numbers


def test_a_small_table_is_one_routing_key(store: TableStore) -> None:
    snapshot = store.snapshot("t")
    exact = plan_search(request(3.0), stats(snapshot))
    assert [t.kind for t in exact.tasks] == [FRAGMENT] * 4
    assert {t.key for t in exact.tasks} == {"t/fragments/group/0"}
    ivf = plan_search(request(3.0), stats(snapshot), index([1000] * 8))
    assert [(t.kind, t.key, t.partitions) for t in ivf.tasks] == [(PARTITION, "t/index/v3/group/0", tuple(range(8)))]
    assert (ivf.fanout, ivf.executors, len(ivf.groups)) == (False, 1, 1)
    assert ivf.work_bytes == 8000


def partition_keys(plan: SearchPlan) -> dict[int, str]:
    return {p: t.key for t in plan.tasks for p in t.partitions}


def test_a_big_index_is_cut_into_groups_of_at_most_the_budget(store: TableStore) -> None:
    sizes = [40, 40, 40, 100, 250, 30, 30, 10, 10]
    plan = plan_search(request(4.0), stats(store.snapshot("t")), index(sizes), routing=ALWAYS)
    key_of = partition_keys(plan)
    assert [key_of[p].rsplit("/", 1)[1] for p in range(len(sizes))] == ["0", "0", "1", "2", "3", "4", "4", "4", "4"]
    assert plan.fanout and plan.executors == 5
    for group in plan.groups:
        members = [sizes[p] for p, key in key_of.items() if key == group.key]
        assert group.work_bytes == sum(members)
        assert sum(members) <= 100 or members == [250]  # a partition over the budget is a group of its own
    assert [g.work_bytes for g in plan.groups] == sorted((g.work_bytes for g in plan.groups), reverse=True)


def test_fanout_only_from_the_threshold_on(store: TableStore) -> None:
    sizes = [60, 60, 60, 60]
    work = 2 * sum(sizes)  # two queries probing every partition
    for threshold, fans_out in ((work, True), (work + 1, False)):
        plan = plan_search(request(0.0, 3.0), stats(store.snapshot("t")), index(sizes),
                           routing=Routing(partition_group_bytes=120, fanout_min_bytes=threshold))
        assert plan.work_bytes == work and len(plan.groups) == 2
        assert plan.fanout is fans_out
        if fans_out:
            assert {t.key for t in plan.tasks} == {"t/index/v3/group/0", "t/index/v3/group/1"}
        else:  # one hop: every task under the key of the group with the most work
            assert {t.key for t in plan.tasks} == {plan.groups[0].key}
        assert len(plan.tasks) == (2 if fans_out else 1) == plan.executors  # one task per key
        assert sorted(p for t in plan.tasks for p in t.partitions) == [0, 1, 2, 3]


def test_one_hop_goes_to_the_group_with_most_of_the_work(store: TableStore) -> None:
    plan = plan_search(request(3.0, nprobes=3), stats(store.snapshot("t")), index([10, 10, 10, 90]),
                       routing=Routing(partition_group_bytes=50, fanout_min_bytes=10**9))
    assert [t.partitions for t in plan.tasks] == [(1, 2, 3)]  # the 3 partitions nearest to 3.0
    assert plan.groups[0].key == "t/index/v3/group/1" and plan.groups[0].work_bytes == 90
    assert {t.key for t in plan.tasks} == {"t/index/v3/group/1"}


def test_keys_are_stable_across_queries_and_change_with_the_index_version(store: TableStore) -> None:
    snapshot = store.snapshot("t")
    sizes = [60] * 6  # a group each (budget 100)

    def keys(q: float, version: int = 3) -> dict[int, str]:
        plan = plan_search(request(q, nprobes=2), stats(snapshot), index(sizes, version=version), routing=ALWAYS)
        return partition_keys(plan)

    first, second = keys(0.2), keys(1.2)  # partitions {0, 1} and {1, 2}
    assert first == {0: "t/index/v3/group/0", 1: "t/index/v3/group/1"}
    assert second == {1: "t/index/v3/group/1", 2: "t/index/v3/group/2"}
    assert keys(0.2, version=4) == {0: "t/index/v4/group/0", 1: "t/index/v4/group/1"}


def test_a_plan_has_one_partition_task_per_key_and_its_probes_say_who_scans_what(store: TableStore) -> None:
    """Partitions travel grouped by routing key; each query still scans only its own nprobes partitions."""
    sizes = [60] * 8  # a group each under ALWAYS
    firsts = (0.2, 1.4, 5.1, 6.6, 2.0)
    plan = plan_search(request(*firsts, nprobes=3), stats(store.snapshot("t")), index(sizes), routing=ALWAYS)
    assert plan.probes is not None and plan.probes.shape == (len(firsts), 3)
    assert [set(row) for row in plan.probes.tolist()] == [
        set(np.argsort(np.abs(np.arange(8) - q), kind="stable")[:3].tolist()) for q in firsts]
    assert len({t.key for t in plan.tasks}) == len(plan.tasks)  # one task per key
    listed = [p for t in plan.tasks for p in t.partitions]
    assert sorted(listed) == plan.partitions == sorted(set(plan.probes.ravel().tolist()))
    for p, rows in zip(listed, probes_of(plan.probes, listed), strict=True):
        expected = [q for q, row in enumerate(plan.probes.tolist()) if p in row]
        assert (list(range(len(firsts))) if rows is None else rows.tolist()) == expected
        assert rows is not None  # no partition here is probed by all five
    every = plan_search(request(*firsts, nprobes=8), stats(store.snapshot("t")), index(sizes), routing=ALWAYS)
    assert every.probes is None and every.partitions == list(range(8))  # all scan all: as no probes says
    everyone = probes_of(np.array([[1, 0], [0, 2]], np.int32), [0, 1, 2])
    assert everyone[0] is None and everyone[1].tolist() == [0] and everyone[2].tolist() == [1]


def test_tasks_and_probes_read_back_from_the_wire_in_both_forms() -> None:
    task = Task(PARTITION, "t/index/v3/group/0", "t", 7, index_version=3, partitions=(1, 4, 9), ef=40)
    assert Task.from_json(json.loads(json.dumps(task.to_json()))) == task
    fragment = Task(FRAGMENT, "t/fragments/group/0", "t", 7, fragment_id=2, min_row_id=100)
    assert Task.from_json(json.loads(json.dumps(fragment.to_json()))) == fragment
    older = {"kind": "partition", "key": "k", "table": "t", "version": 7, "fragment": -1, "min_row_id": 0,
             "index_version": 3, "partition": 5, "queries": [0, 2]}  # a query node before the probe matrix
    assert Task.from_json(older) == Task(PARTITION, "k", "t", 7, index_version=3, partitions=(5,), queries=(0, 2))
    for bad in ({"partitions": [1.5]}, {"partitions": [True]}, {"partitions": [-1]}, {"partitions": 3},
                {"partitions": [4, 1, 9]}, {"partitions": [1, 4, 4]}, {"queries": ["0"]}):
        with pytest.raises(ValueError, match="malformed task"):
            Task.from_json({**task.to_json(), **bad})
    assert probes_from_header({}, 2) is None
    assert probes_from_header({PROBES_FIELD: [[3, 1], [0, 2]]}, 2).tolist() == [[3, 1], [0, 2]]
    for rows in ([[3, 1]], [[3, 1], [0]], [[3, 1.0], [0, 2]], [[3, 3], [0, 2]], [[-1, 1], [0, 2]], [[], []],
                 [[2**40, 1], [0, 2]], "12", [["a", "b"], [0, 2]]):
        with pytest.raises(ValueError, match=PROBES_FIELD):
            probes_from_header({PROBES_FIELD: rows}, 2)


def test_unindexed_rows_are_still_scanned_in_their_fragments_group(store: TableStore) -> None:
    """Read-your-writes: rows past the index's watermark are flat-scanned, keyed by fragment group."""
    snapshot = store.snapshot("t")
    plan = plan_search(request(3.0), stats(snapshot), index([60] * 4, watermark=175), routing=ALWAYS)
    fragments = [t for t in plan.tasks if t.kind == FRAGMENT]
    # 800 bytes a fragment: a group each under ALWAYS's 100-byte budget
    assert [(t.fragment_id, t.min_row_id, t.key) for t in fragments] == [(3, 175, "t/fragments/group/3")]
    assert plan.work_bytes == 4 * 60 + 25 * DIM * 4  # 25 unindexed rows of fragment 3
    # exact scans group fragments by their bytes too: 800 bytes each, two per group of 1600
    exact = plan_search(request(3.0), stats(snapshot), routing=Routing(partition_group_bytes=2 * FRAGMENT_BYTES,
                                                                fanout_min_bytes=0))
    assert [t.key for t in exact.tasks] == ["t/fragments/group/0"] * 2 + ["t/fragments/group/1"] * 2
    assert exact.work_bytes == 4 * FRAGMENT_BYTES


def test_explain_names_tasks_groups_and_executors(store: TableStore) -> None:
    plan = plan_search(request(0.0), stats(store.snapshot("t")), index([60] * 4), routing=ALWAYS)
    doc = plan.explain()
    assert doc["tasks"] == [f"t/index/v3/partition/{p}" for p in range(4)]
    assert doc["groups"] == [{"key": "t/index/v3/group/0", "tasks": 1, "work_bytes": 60},
                             {"key": "t/index/v3/group/1", "tasks": 1, "work_bytes": 60},
                             {"key": "t/index/v3/group/2", "tasks": 1, "work_bytes": 60},
                             {"key": "t/index/v3/group/3", "tasks": 1, "work_bytes": 60}]
    assert (doc["fanout"], doc["executors"], doc["work_bytes"]) == (True, 4, 240)
    assigned = dataclasses.replace(plan, assignment={"http://a": ["t/index/v3/group/0"],
                                                     "http://b": ["t/index/v3/group/1"]})
    assert assigned.explain()["executors"] == 2


def test_dispatch_sends_every_task_of_a_shared_key_to_one_executor(store: TableStore) -> None:
    """Tasks of one group share a key: the dispatcher must route all of them, not one per key."""
    plan = plan_search(request(0.0, 3.0), stats(store.snapshot("t")), index([60] * 8), routing=Routing(
        partition_group_bytes=10**6, fanout_min_bytes=10**9))
    plan = dataclasses.replace(plan, tasks=[dataclasses.replace(plan.tasks[0], partitions=(p,)) for p in range(8)])
    assert len(plan.tasks) == 8 and len({t.key for t in plan.tasks}) == 1
    dispatcher = Dispatcher(AllLive(["http://127.0.0.1:1", "http://127.0.0.1:2"]), "token", 1.0, 0.25)  # type: ignore[arg-type]
    assignment = dispatcher.assignment(plan)
    assert len(assignment) == 1
    assert sorted(p for tasks in assignment.values() for t in tasks for p in t.partitions) == list(range(8))


def test_replicas_spread_searches_and_keep_a_repeated_search_on_one(store: TableStore) -> None:
    snapshot = store.snapshot("t")
    routing = Routing(partition_group_bytes=10**6, fanout_min_bytes=10**9, group_replicas=3)
    replicas = set()
    for q in np.linspace(0.0, 7.0, 40):
        plan = plan_search(request(float(q)), stats(snapshot), index([60] * 8), routing=routing)
        assert plan_search(request(float(q)), stats(snapshot), index([60] * 8), routing=routing).replica == plan.replica
        expected = "t/index/v3/group/0" + (f"#{plan.replica}" if plan.replica else "")
        assert {t.key for t in plan.tasks} == {expected}
        replicas.add(plan.replica)
    assert replicas == {0, 1, 2}
    assert plan_search(request(1.0), stats(snapshot), index([60] * 8)).replica == 0  # default: one replica
    with pytest.raises(ValueError, match="group_replicas"):
        Routing(group_replicas=0)


class AllLive:
    """Membership as the dispatcher sees it once every executor passed its health probe."""

    def __init__(self, urls: list[str]) -> None:
        self.ring = HashRing(urls)

    def down(self) -> set[str]:
        return set()


def test_explain_shows_the_executors_the_plan_goes_to_now(store: TableStore, tmp_path) -> None:
    executors = [f"http://127.0.0.1:{port}" for port in (1, 2, 3)]
    service = QueryService(store, Dispatcher(AllLive(executors), "token", 1.0, 0.25),  # type: ignore[arg-type]
                           IndexCatalog(IndexStore(StorageRoot.parse(str(tmp_path / "root")))))
    plan = service.table("t").explain(request(3.0))
    assert plan.assignment is not None and plan.executors == 1  # a small table: one executor, one hop
    [(node, keys)] = plan.assignment.items()
    assert node in executors and keys == ["t/fragments/group/0"]
    assert plan.explain()["assignment"] == {node: keys}
    service.routing = Routing(partition_group_bytes=FRAGMENT_BYTES, fanout_min_bytes=0)  # a group per fragment
    spread = service.table("t").explain(request(3.0))
    assert sorted(k for keys in spread.assignment.values() for k in keys) == [
        f"t/fragments/group/{g}" for g in range(4)]
    assert spread.executors == len(spread.assignment) > 1
