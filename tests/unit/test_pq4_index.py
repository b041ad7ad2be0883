"""The pq4 codec (4-bit PQ codes, scanned with faiss's fast-scan) in real index builds on a local storage root:
its objects, its defaults, its scans through the executors' PartitionScanner beside pq's, and deltas."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from appliance.executor.partition import PartitionScanner
from appliance.index import IndexParams, IndexStore, codec
from appliance.index.builder import build_full, build_partial
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type


@pytest.fixture
def stores(tmp_path) -> tuple[TableStore, IndexStore]:
    root = StorageRoot.parse(str(tmp_path / "root"))
    return TableStore(root), IndexStore(root)


def _vectors(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, d)) * 4
    return (centers[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)


def _load(tables: TableStore, vectors: np.ndarray, start: int = 0) -> None:
    tables.append("t", pa.table({"vector": pa.array(vectors.tolist(), vector_type(vectors.shape[1])),
                                 "n": np.arange(start, start + len(vectors))}))


def _exact(queries: np.ndarray, vectors: np.ndarray, metric: str, k: int) -> np.ndarray:
    if metric == "cosine":
        q, x = codec.normalise(queries), codec.normalise(vectors)
        d = 1 - q @ x.T
    else:
        d = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_pq4_defaults_take_twice_pq_sub_vectors_and_refine() -> None:
    pq = IndexParams(codec="pq").resolved(10_000, 384)
    pq4 = IndexParams(codec="pq4").resolved(10_000, 384)
    assert (pq.pq_m, pq4.pq_m) == (48, 96)
    assert pq4.refine_factor == pq.refine_factor == 10


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_pq4_index_scans_like_pq_and_keeps_deltas(stores, metric) -> None:
    tables, indexes = stores
    tables.create("t", 16, metric, {"n": "int64"})
    vectors = _vectors(3000, 16, 1)
    _load(tables, vectors)
    built = {name: build_full(tables, indexes, "t", IndexParams(codec=name, nlist=8, nprobes=8, pq_m=m, seed=3))
             for name, m in (("pq", 4), ("pq4", 16))}
    manifest = built["pq4"]
    assert manifest.codec == "pq4"
    centroids = indexes.get_object(manifest.centroids)[0]
    assert centroids["pq_codebooks"].shape == (16, 16, 1)
    for refs in manifest.partitions:
        for ref in refs:
            obj = indexes.get_object(ref)[0]
            assert obj["codes"].dtype == np.uint8 and obj["codes"].shape == (len(obj["ids"]), 8)  # 16 codes, 8 bytes
    queries, k = vectors[:20] + 0.1, 50
    truth = _exact(queries, vectors, metric, 10)
    scanner = PartitionScanner(indexes)
    recall = {}
    for name, m in built.items():
        ids, dists, rows = scanner.scan_many("t", m.index_version, [(p, None) for p in range(m.nlist)], queries, k)
        assert rows == 3000
        assert np.all(np.diff(dists, axis=1) >= 0)
        recall[name] = np.mean([len(set(ids[r].tolist()) & set(truth[r].tolist())) / 10 for r in range(20)])
    assert recall["pq4"] >= 0.9 and recall["pq"] >= 0.9, recall
    # a partial build adds pq4 delta objects, scanned beside the base ones
    extra = _vectors(200, 16, 2) + 50
    _load(tables, extra, start=3000)
    partial = build_partial(tables, indexes, "t")
    assert partial.codec == "pq4" and partial.index_version > manifest.index_version
    ids, _, rows = scanner.scan_many("t", partial.index_version, [(p, None) for p in range(partial.nlist)],
                                     extra[:5], 5)
    assert rows == 3200
    assert all(set(ids[r].tolist()) & set(range(3000, 3200)) for r in range(5))


def test_pq4_objects_read_anew_are_packed_once(stores, monkeypatch) -> None:
    # an executor whose objects come back as new arrays on every read (its disk tier decodes each time)
    # still scans each pq4 object's fast-scan layout from the first scan on: the scanner names it by its key
    import kernels.pq

    tables, indexes = stores
    tables.create("t", 16, "l2", {"n": "int64"})
    vectors = _vectors(2000, 16, 4)
    _load(tables, vectors)
    manifest = build_full(tables, indexes, "t", IndexParams(codec="pq4", nlist=8, nprobes=8, pq_m=16, seed=3))
    stored = {ref.key: indexes.get_object(ref)[0] for refs in [*manifest.partitions, [manifest.centroids]]
              for ref in refs}
    centroids = stored[manifest.centroids.key]

    def load(ref):  # the codebooks stay one array, as a RAM tier keeps them; partition objects come anew
        obj = stored[ref.key]
        return obj if obj is centroids else {name: array.copy() for name, array in obj.items()}

    packed = []
    real = kernels.pq.pq4_blocks
    monkeypatch.setattr(kernels.pq, "pq4_blocks", lambda codes: packed.append(1) or real(codes))
    scanner = PartitionScanner(indexes, load=load)
    work = [(p, None) for p in range(manifest.nlist)]
    first = scanner.scan_many("t", manifest.index_version, work, vectors[:4], 10)
    second = scanner.scan_many("t", manifest.index_version, work, vectors[:4], 10)
    assert len(packed) == sum(len(refs) for refs in manifest.partitions)
    np.testing.assert_array_equal(first[0], second[0])
