"""The executor finishes a batch's candidates (appliance/executor/runner.py): rows deleted since the index was
built are dropped, a post-filter keeps matching rows, a refine re-ranks by exact distance, and the payload
columns of the rows kept come back, all from its cache; the query node merges executors' finished lists
(appliance/query/dispatch.merge_found)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import kernels
from appliance.cache import TieredCache
from appliance.errors import InvalidInput
from appliance.executor.app import BatchRunner
from appliance.executor.runner import TaskRunner
from appliance.index import IndexStore
from appliance.index.builder import build_full
from appliance.index.params import IndexParams
from appliance.metrics import Metrics
from appliance.planner.plan import FRAGMENT, PARTITION, Finish, Task, fragment_key, legacy_tasks, partition_key
from appliance.query.dispatch import Found, merge_found, replace_rows
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import rows_to_table

ROWS, DIM = 600, 8  # more rows than a PQ sub-quantizer's 256 codes: PQ distances are not exact


@pytest.fixture
def indexed(tmp_path: Path):
    """A table of three fragments with a PQ index (a coarse one: refine matters), then rows deleted."""
    root = StorageRoot.parse(str(tmp_path / "root"))
    store, indexes = TableStore(root), IndexStore(root)
    store.create("t", DIM, "l2", {"n": "int64", "tag": "string"})
    vectors = np.random.default_rng(5).random((ROWS, DIM)).astype(np.float32)
    schema = store.snapshot("t").dataset.schema
    for start in range(0, ROWS, 200):
        store.append("t", rows_to_table([{"vector": v.tolist(), "n": start + i, "tag": f"row-{start + i}"}
                                         for i, v in enumerate(vectors[start:start + 200])], schema))
    manifest = build_full(store, indexes, "t", IndexParams(codec="pq", nlist=4, pq_m=2, seed=1))
    store.delete("t", f"n IN ({', '.join(map(str, DELETED))})")
    cache = TieredCache(10**7, tmp_path / "cache", 10**7)
    yield store, TaskRunner(store, indexes, cache), manifest, vectors
    cache.close()


DELETED = (3, 31, 201, 577)


def _partitions(store: TableStore, manifest) -> list[Task]:
    version = store.snapshot("t").version
    return [Task(PARTITION, partition_key("t", manifest.index_version, 0), "t", version,
                 index_version=manifest.index_version, partitions=tuple(range(manifest.nlist)))]


def _exact(queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return kernels.search_block(queries, vectors[rows], rows.astype(np.uint64), "l2", k)


def test_the_executor_drops_deleted_rows_post_filters_refines_and_returns_the_payload(indexed) -> None:
    store, runner, manifest, vectors = indexed
    queries = vectors[[3, 31, 202, 576]] + 0.01  # near deleted rows (and rows failing the filter)
    alive = np.setdiff1d(np.arange(ROWS), DELETED)
    # without refine: PQ distances, but only live rows matching the filter, k of them
    finish = Finish(5, verify=True, postfilter=True)
    ids, _, stats = runner.run(_partitions(store, manifest), queries, 50, "l2", "n % 2 = 1", finish=finish)
    assert set(ids.ravel().tolist()) <= set(alive[alive % 2 == 1].tolist()) and stats.payload is None
    # every partition, every candidate, refined: the exact top 5 of the live, matching rows, with their payload
    finish = Finish(5, refine=True, verify=True, postfilter=True, columns=("tag", "n"))
    ids, dists, stats = runner.run(_partitions(store, manifest), queries, ROWS, "l2", "n % 2 = 1", finish=finish)
    expected_ids, expected_dists = _exact(queries, vectors, alive[alive % 2 == 1], 5)
    assert np.array_equal(ids, expected_ids)
    np.testing.assert_allclose(dists, expected_dists, rtol=1e-5, atol=1e-6)  # exact, not PQ, distances
    assert stats.short == []
    assert stats.payload is not None and stats.payload.column_names == ["tag", "n"]
    assert stats.payload.column("n").to_pylist() == ids.ravel().tolist()  # row ids are n here
    assert stats.payload.column("tag").to_pylist() == [f"row-{i}" for i in ids.ravel().tolist()]


def test_a_query_short_of_k_with_a_full_candidate_list_is_reported(indexed) -> None:
    store, runner, manifest, vectors = indexed
    queries = vectors[[1, 2]] + 0.01
    finish = Finish(5, refine=True, verify=True, postfilter=True)
    # 8 candidates a query, of which ~1 in 50 passes: short, and its candidates were full, so a wider
    # search may find more
    ids, _, stats = runner.run(_partitions(store, manifest), queries, 8, "l2", "n % 50 = 0", finish=finish)
    assert ids.shape == (2, 5) and stats.short == [0, 1]
    assert set(ids[ids != kernels.NO_ID].tolist()) <= set(range(0, ROWS, 50))
    # more candidates asked for than the index holds: short of 5, but nothing more exists
    ids, _, stats = runner.run(_partitions(store, manifest), queries[:1], ROWS + 1, "l2", "n >= 597", finish=finish)
    assert sorted(ids[ids != kernels.NO_ID].tolist()) == [597, 598, 599] and stats.short == []


def test_exact_tasks_return_the_payload_of_their_top_k(indexed) -> None:
    store, runner, _, vectors = indexed
    snapshot = store.snapshot("t")
    tasks = [Task(FRAGMENT, fragment_key("t", f), "t", snapshot.version, fragment_id=f)
             for f in snapshot.fragment_ids()]
    queries = vectors[[10, 360]]
    ids, _, stats = runner.run(tasks, queries, 4, "l2", None, finish=Finish(4, columns=("n",)))
    alive = np.setdiff1d(np.arange(ROWS), DELETED)
    assert np.array_equal(ids, _exact(queries, vectors, alive, 4)[0])
    assert stats.payload is not None and stats.payload.column("n").to_pylist() == ids.ravel().tolist()


def test_merged_lists_keep_the_best_by_distance_then_row_id_with_their_payload() -> None:
    none = kernels.NO_ID
    a = Found(np.array([[5, 9, none], [1, none, none]], np.uint64),
              np.array([[0.1, 0.5, np.inf], [0.2, np.inf, np.inf]], np.float32),
              pa.table({"n": [50, 90, 10]}), np.array([False, True]))
    b = Found(np.array([[4, 8, 2], [none, none, none]], np.uint64),
              np.array([[0.1, 0.3, 0.9], [np.inf, np.inf, np.inf]], np.float32),
              pa.table({"n": [40, 80, 20]}), np.array([False, False]))
    merged = merge_found([a, b], 3)
    assert merged.ids.tolist() == [[4, 5, 8], [1, none, none]]
    assert merged.payload is not None and merged.payload.column("n").to_pylist() == [40, 50, 80, 10]
    assert merged.short.tolist() == [False, True]  # query 1 came up short where a's candidates were full


def test_a_merged_query_is_short_when_any_executor_came_up_short_with_full_candidates() -> None:
    """Executor a kept 1 of its candidates (the post-filter dropped the rest, its list was full): rows past its
    last candidate may still beat b's worst kept one, so the query is searched wider, though b filled k."""
    none = kernels.NO_ID
    a = Found(np.array([[5, none, none]], np.uint64), np.array([[0.1, np.inf, np.inf]], np.float32), None,
              np.array([True]))
    b = Found(np.array([[4, 8, 2]], np.uint64), np.array([[0.2, 0.3, 0.9]], np.float32), None, np.array([False]))
    merged = merge_found([a, b], 3)
    assert merged.ids.tolist() == [[5, 4, 8]] and merged.short.tolist() == [True]


def test_queries_searched_again_replace_their_rows_and_payload_only() -> None:
    """The queries of a batch that came up short are searched again alone; their new answers replace
    theirs, payload rows included, and the other queries keep theirs."""
    none = kernels.NO_ID
    first = Found(np.array([[1, 2], [3, none], [4, 5], [6, none]], np.uint64),
                  np.array([[0.1, 0.2], [0.3, np.inf], [0.4, 0.5], [0.6, np.inf]], np.float32),
                  pa.table({"n": [10, 20, 30, 40, 50, 60]}), np.array([False, True, False, True]))
    again = Found(np.array([[3, 7], [none, none]], np.uint64), np.array([[0.3, 0.7], [np.inf, np.inf]], np.float32),
                  pa.table({"n": [30, 70]}), np.array([False, False]))
    out = replace_rows(first, np.array([1, 3]), again)
    assert out.ids.tolist() == [[1, 2], [3, 7], [4, 5], [none, none]]
    assert out.distances[1].tolist() == pytest.approx([0.3, 0.7]) and out.short.tolist() == [False] * 4
    assert out.payload is not None and out.payload.column("n").to_pylist() == [10, 20, 30, 70, 40, 50]
    assert first.ids[1].tolist() == [3, none]  # the first answer is left as it was


@pytest.mark.parametrize("values", [
    [[10, 11, 12], [20, 21]],  # fixed-width: gathered with numpy
    [["a", "b", "c"], ["d", "e"]],  # variable width: Arrow take
    [[1.5, None, 3.5], [4.5, 5.5]],  # nulls: Arrow take
])
def test_payload_rows_are_gathered_per_fragment_in_the_results_order(values) -> None:
    from appliance.executor.runner import _gather
    arrays = [pa.array(v) for v in values]
    rows = [np.array([2, 0]), np.array([1])]  # fragment 0's rows 2 and 0, then fragment 1's row 1
    order = np.array([2, 0, 0, 1])  # results: fragment 1's row, then fragment 0's row 2 twice, then its row 0
    got = _gather(arrays, rows, order).to_pylist()
    assert got == [values[1][1], values[0][2], values[0][2], values[0][0]]


def test_each_query_of_a_batch_scans_only_the_partitions_its_probes_name(indexed) -> None:
    """One task lists every partition the batch probes; the batch's `probes` make each query scan its own
    only, so each answers as it would alone, and as an older query node's one task per partition did."""
    store, runner, manifest, vectors = indexed
    queries = vectors[[10, 250, 420, 599]] + 0.02
    probes = np.array([[0, 1], [2, 3], [1, 3], [3, 0]], np.int32)  # 2 of the 4 partitions each, in probe order
    [task] = _partitions(store, manifest)
    ids, dists, _ = runner.run([task], queries, 5, "l2", None, probes=probes)
    for q, row in enumerate(probes.tolist()):
        alone, alone_d, _ = runner.run([dataclasses.replace(task, partitions=tuple(sorted(row)))], queries[q:q + 1],
                                       5, "l2", None)
        assert np.array_equal(ids[q], alone[0]) and np.array_equal(dists[q], alone_d[0])
    everything, _, _ = runner.run([task], queries, 5, "l2", None)  # no probes: every query scans every partition
    assert not np.array_equal(everything, ids)
    older = [Task.from_json(doc) for doc in legacy_tasks([task], probes)]  # what older executors are sent
    assert [(t.partitions, t.queries) for t in older] == [
        ((0,), (0, 3)), ((1,), (0, 2)), ((2,), (1,)), ((3,), (1, 2, 3))]
    assert np.array_equal(runner.run(older, queries, 5, "l2", None)[0], ids)
    with pytest.raises(ValueError, match="probed by no query"):
        runner.run([task], queries, 5, "l2", None, probes=np.array([[0, 1]] * 4, np.int32))


def test_a_task_naming_a_query_the_batch_lacks_is_refused_as_bad_input(indexed) -> None:
    """An older query node's task names its queries by row of the batch's matrix: a row past the matrix was an
    IndexError (a 500, retried on another executor), and a negative one silently scanned another query."""
    store, runner, manifest, vectors = indexed
    [task] = _partitions(store, manifest)
    batches = BatchRunner(runner, Metrics("executor"), 10.0)
    queries = vectors[[10, 250, 420, 599]] + 0.02
    header = {"tasks": [], "k": 5, "metric": "l2", "filter": None}
    for named in ([0, 4], [-1], [3, 0, 7]):
        doc = json.loads(json.dumps({**header, "tasks": [{**task.to_json(), "queries": named}]}))
        with pytest.raises(InvalidInput, match="names queries") as refused:
            batches.run(doc, queries, lambda: False)
        assert refused.value.status == 400
    doc = json.loads(json.dumps({**header, "tasks": [{**task.to_json(), "queries": [3, 0]}]}))
    assert batches.run(doc, queries, lambda: False)[0].shape == (4, 5)


def test_a_partition_number_past_int32_beside_probes_is_refused_as_bad_input(indexed) -> None:
    """The batch's probes are int32, and the executor matches its tasks' partitions against them: a partition
    number past int32 raised OverflowError there (a 500), where any other partition it lacks is a 400."""
    store, runner, manifest, vectors = indexed
    [task] = _partitions(store, manifest)
    batches = BatchRunner(runner, Metrics("executor"), 10.0)
    queries = vectors[[10, 250]] + 0.02
    for partition in (2**31, 2**40):
        doc = json.loads(json.dumps({"tasks": [{**task.to_json(), "partitions": [0, partition]}], "k": 5,
                                     "metric": "l2", "filter": None, "probes": [[0, 1], [0, 2]]}))
        with pytest.raises(InvalidInput, match="partition numbers") as refused:
            batches.run(doc, queries, lambda: False)
        assert refused.value.status == 400


def test_a_task_numbering_its_version_or_fragment_out_of_range_is_refused_as_bad_input(indexed) -> None:
    """A table version or fragment id past what Lance takes (negative, past int64) was an OverflowError in
    the scan (a 500), and a partition task's negative index version a missing manifest (a 500)."""
    store, runner, manifest, vectors = indexed
    batches = BatchRunner(runner, Metrics("executor"), 10.0)
    fragment = Task(FRAGMENT, "k", "t", store.snapshot("t").version, fragment_id=0).to_json()
    [partition] = [t.to_json() for t in _partitions(store, manifest)]
    for task in ({**fragment, "fragment": -5}, {**fragment, "fragment": 2**70}, {**fragment, "version": -3},
                 {**fragment, "version": 2**70}, {**partition, "index_version": -1}):
        doc = json.loads(json.dumps({"tasks": [task], "k": 5, "metric": "l2", "filter": None}))
        with pytest.raises(InvalidInput, match="must be a number from 0") as refused:
            batches.run(doc, vectors[:2], lambda: False)
        assert refused.value.status == 400
