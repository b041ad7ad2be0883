"""The IVF index on a real local storage root: determinism, publication, deltas, compaction, corruption."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from appliance.errors import InvalidInput
from appliance.executor.partition import PartitionScanner
from appliance.index import IndexParams, IndexStore, builder
from appliance.index.builder import build_full, build_partial
from appliance.index.store import CorruptIndexObject
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type


@pytest.fixture
def root(tmp_path) -> StorageRoot:
    return StorageRoot.parse(str(tmp_path / "root"))


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, d)) * 4
    return (centers[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)


def load(tables: TableStore, name: str, vectors: np.ndarray, start: int = 0) -> None:
    tables.append(name, pa.table({"vector": pa.array(vectors.tolist(), vector_type(vectors.shape[1])),
                                  "n": np.arange(start, start + len(vectors))}))


def contents(indexes: IndexStore, manifest) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for refs in manifest.partitions:
        objs = [indexes.get_object(ref)[0] for ref in refs]
        ids = np.concatenate([o["ids"] for o in objs]) if objs else np.empty(0, np.uint64)
        codes = np.concatenate([o["codes"] for o in objs]) if objs else np.empty(0)
        out.append((ids, codes))
    return out


@pytest.mark.parametrize("codec", ["flat", "fp16", "sq8", "pq"])
def test_same_data_and_seed_build_the_same_index(root, codec) -> None:
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 16, "l2", {"n": "int64"})
    load(tables, "t", clustered(2000, 16, 0))
    params = IndexParams(codec=codec, nlist=16, pq_m=4, seed=3)
    first = build_full(tables, indexes, "t", params)
    second = build_full(tables, indexes, "t", params)
    assert (first.index_version, second.index_version) == (1, 2)
    assert indexes.current_version("t") == 2
    c1, c2 = indexes.get_object(first.centroids)[0], indexes.get_object(second.centroids)[0]
    assert c1.keys() == c2.keys() and all(np.array_equal(c1[k], c2[k]) for k in c1)
    for (i1, x1), (i2, x2) in zip(contents(indexes, first), contents(indexes, second), strict=True):
        assert np.array_equal(i1, i2) and np.array_equal(x1, x2)
    assert sum(len(i) for i, _ in contents(indexes, first)) == 2000


def test_a_full_build_that_spilled_leaves_one_object_per_partition(root, monkeypatch) -> None:
    """Spilling keeps a large build's memory bounded; merging the pieces afterwards keeps every partition
    one block for the executors, with the same rows in the same order, and leaves no orphaned pieces."""
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 16, "l2", {"n": "int64"})
    load(tables, "t", clustered(3000, 16, 0))
    params = IndexParams(nlist=8, batch_rows=500, seed=1)
    whole = build_full(tables, indexes, "t", params)
    monkeypatch.setattr(builder, "SPILL_BYTES", 4096)  # spills after almost every batch of 500 rows
    spilled = build_full(tables, indexes, "t", params)
    assert all(len(refs) == 1 for refs in spilled.partitions)
    for (i1, x1), (i2, x2) in zip(contents(indexes, whole), contents(indexes, spilled), strict=True):
        assert np.array_equal(i1, i2) and np.array_equal(x1, x2)
    named = {ref.key for m in (whole, spilled) for ref in m.objects()}
    assert set(indexes.object_times("t")) == named


def test_partial_build_adds_deltas_and_survives_compaction(root) -> None:
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 8, "l2", {"n": "int64"})
    load(tables, "t", clustered(500, 8, 1))
    full = build_full(tables, indexes, "t", IndexParams(nlist=8))
    assert build_partial(tables, indexes, "t") is None  # nothing new
    load(tables, "t", clustered(100, 8, 2), start=500)
    delta = build_partial(tables, indexes, "t")
    assert delta.kind == "partial" and delta.rows == 600 and delta.history == [full.index_version]
    assert delta.centroids == full.centroids  # not retrained
    assert all(old == new[:len(old)] for old, new in zip(full.partitions, delta.partitions, strict=True))
    indexed = np.sort(np.concatenate([i for i, _ in contents(indexes, delta)]))
    tables.snapshot("t").dataset.optimize.compact_files(target_rows_per_fragment=10_000)
    snap = tables.snapshot("t")
    live = np.sort(snap.dataset.to_table(columns=[], with_row_id=True).column("_rowid").to_numpy())
    assert np.array_equal(indexed, live)  # stable row ids: the index still names every row
    assert all(hi < delta.row_id_watermark for hi in (h for _, h in snap.fragment_row_ranges().values()))


def test_builder_killed_before_publication_leaves_previous_version(root, monkeypatch) -> None:
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 4, "l2", {"n": "int64"})
    load(tables, "t", clustered(300, 4, 3))
    build_full(tables, indexes, "t", IndexParams(nlist=4))

    def die(*_args, **_kwargs):
        raise KeyboardInterrupt("killed mid-build")

    monkeypatch.setattr(IndexStore, "publish", die)
    with pytest.raises(KeyboardInterrupt):
        build_full(tables, indexes, "t", IndexParams(nlist=4, seed=9))
    monkeypatch.undo()
    assert indexes.current_version("t") == 1
    assert indexes.current("t").index_version == 1


def test_corrupt_objects_are_detected_never_served(root, tmp_path) -> None:
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 4, "l2", {"n": "int64"})
    load(tables, "t", clustered(200, 4, 4))
    manifest = build_full(tables, indexes, "t", IndexParams(nlist=2))
    ref = next(refs[0] for refs in manifest.partitions if refs)
    path = tmp_path / "root" / "_appliance" / "indexes" / ref.key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexObject):
        indexes.get_object(ref)


def test_scanner_finds_each_row_in_its_partition(root) -> None:
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 8, "cosine", {"n": "int64"})
    vectors = clustered(400, 8, 5)
    load(tables, "t", vectors)
    manifest = build_full(tables, indexes, "t", IndexParams(nlist=4))
    scanner = PartitionScanner(indexes)
    found = 0
    for p in range(manifest.nlist):
        ids, dists, rows = scanner.scan("t", manifest.index_version, p, vectors[:5], 400)
        found += rows
    assert found == 400


def test_a_batch_over_many_partitions_is_scanned_a_bounded_number_of_bytes_at_a_time(root, monkeypatch) -> None:
    """What one executor batch holds beside the cache stays bounded: flat objects are scanned SCAN_BYTES at a
    time and their top k merged, with the same answer as one scan of them all."""
    from appliance.executor import partition
    from appliance.index import codec

    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 8, "cosine", {"n": "int64"})
    vectors = clustered(2000, 8, 7)
    load(tables, "t", vectors)
    manifest = build_full(tables, indexes, "t", IndexParams(nlist=16))
    work = [(p, None) for p in range(manifest.nlist)]
    queries = vectors[:20]
    whole = PartitionScanner(indexes).scan_many("t", manifest.index_version, work, queries, 10)
    largest = max(ref.size for refs in manifest.partitions for ref in refs)
    budget = 2 * largest
    held: list[int] = []
    real_scan = codec.scan

    def scan(name, prepared, lists, params, metric, k, keys=None):
        held.append(sum(ids.nbytes + codes.nbytes for ids, codes, _ in lists))
        return real_scan(name, prepared, lists, params, metric, k, keys)

    monkeypatch.setattr(codec, "scan", scan)
    monkeypatch.setattr(partition, "SCAN_BYTES", budget, raising=False)
    ids, dists, rows = PartitionScanner(indexes).scan_many("t", manifest.index_version, work, queries, 10)
    assert rows == whole[2] == 2000
    assert np.array_equal(ids, whole[0]) and np.allclose(dists, whole[1])
    assert len(held) > 1 and max(held) <= budget + largest


def test_empty_table_and_bad_params_are_refused(root) -> None:
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 4, "l2")
    with pytest.raises(InvalidInput, match="empty"):
        build_full(tables, indexes, "t", IndexParams())
    for bad in [{"codec": "zip"}, {"nlist": -1}, {"bogus": 1}, {"nlist": "many"}]:
        with pytest.raises(InvalidInput):
            IndexParams.from_json(bad)


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("codec", ["hnsw_flat", "hnsw_sq"])
def test_graph_codecs_search_each_partition_and_their_flat_deltas(root, codec, metric) -> None:
    """A graph codec writes one graph object per partition; a partial build adds flat deltas; searching
    every partition with ef >= its rows finds the exact top k of base and delta rows alike (hnsw_flat), or
    nearly (hnsw_sq: 8-bit codes), with distances in the index's metric and ties ordered by id."""
    tables, indexes = TableStore(root), IndexStore(root)
    tables.create("t", 16, metric, {"n": "int64"})
    base, added = clustered(1200, 16, 6), clustered(200, 16, 7)
    load(tables, "t", base)
    full = build_full(tables, indexes, "t", IndexParams(codec=codec, nlist=4, hnsw_m=8))
    assert full.params["hnsw_m"] == 8
    for refs in full.partitions:
        (obj,) = [indexes.get_object(ref)[0] for ref in refs]
        assert set(obj) == {"ids", "graph"} and obj["graph"].dtype == np.uint8
    load(tables, "t", added, start=1200)
    delta = build_partial(tables, indexes, "t")
    assert delta.codec == codec
    new = [indexes.get_object(refs[-1])[0] for refs in delta.partitions if len(refs) > 1]
    assert new and all(set(obj) == {"ids", "codes"} and obj["codes"].dtype == np.float32 for obj in new)

    vectors = np.concatenate([base, added])
    queries = np.concatenate([base[:4], added[:4], clustered(4, 16, 8)])
    ref = pairwise(queries, vectors, metric)
    want = np.lexsort((np.broadcast_to(np.arange(len(vectors)), ref.shape), ref), axis=1)[:, :10]
    scanner = PartitionScanner(indexes)
    ids, dists, rows = scanner.scan_many("t", delta.index_version, [(p, None) for p in range(4)], queries, 10,
                                         ef=2000)
    assert rows == 1400
    live = tables.snapshot("t").dataset.to_table(columns=["n"], with_row_id=True)
    number = dict(zip(live.column("_rowid").to_pylist(), live.column("n").to_pylist(), strict=True))
    got = np.array([[number[i] for i in row] for row in ids.tolist()])
    assert (np.diff(dists, axis=1) >= 0).all()
    if codec == "hnsw_flat":
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(dists, np.take_along_axis(ref, want, axis=1), rtol=1e-4, atol=1e-3)
    else:
        recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist(), strict=True)])
        assert recall >= 0.9
    # a query that probes only some partitions gets only their rows; ef travels with the call
    one, _, rows = scanner.scan_many("t", delta.index_version, [(0, [0, 1])], queries, 5, ef=1)
    assert rows == sum(r.rows for r in delta.partitions[0])
    assert (one[2:] == np.iinfo(np.uint64).max).all() and (one[:2] != np.iinfo(np.uint64).max).all()


def pairwise(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    q, x = queries.astype(np.float64), vectors.astype(np.float64)
    if metric == "cosine":
        q, x = q / np.linalg.norm(q, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "l2":
        return ((q[:, None] - x[None]) ** 2).sum(-1)
    return 1 - q @ x.T


def test_graph_params_are_checked() -> None:
    assert IndexParams.from_json({"codec": "hnsw_sq", "hnsw_m": 32}).hnsw_m == 32
    assert IndexParams(codec="hnsw_flat").resolved(10_000, 8).hnsw_m == 16
    # graph codecs default to few, large partitions (GRAPH_PARTITION_ROWS each); the others to sqrt(rows)
    assert [IndexParams(codec=c).resolved(1_000_000, 8).nlist for c in ("hnsw_sq", "flat")] == [4, 1000]
    for bad in [{"hnsw_m": 1000}, {"hnsw_m": -1}, {"codec": "hnsw_pq"}]:
        with pytest.raises(InvalidInput):
            IndexParams.from_json(bad)


def test_the_default_probe_count_is_a_sixth_of_the_partitions_up_to_a_cap() -> None:
    """nlist / 6 guards queries unlike the rows on small tables; on large ones it would read a sixth of the
    table per query, so it stops at PROBE_FLOOR_CAP (the build's measurement may raise it, the monitor too)."""
    from appliance.index.params import PROBE_FLOOR_CAP

    assert IndexParams().resolved(6_000, 8).nprobes == 13  # nlist 77
    assert IndexParams().resolved(1_000_000, 8).nprobes == PROBE_FLOOR_CAP == 32  # nlist 1000: not 167
    assert IndexParams(nprobes=100).resolved(1_000_000, 8).nprobes == 100  # a user's choice stands
