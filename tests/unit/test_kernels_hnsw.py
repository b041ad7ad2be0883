"""kernels.hnsw: graph search against a float64 exact reference, in Lance's metrics and topk's order."""

from __future__ import annotations

import numpy as np
import pytest

import kernels
from kernels import NO_ID


def _reference(queries: np.ndarray, data: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances [nq, n] as Lance defines them."""
    q, x = queries.astype(np.float64), data.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return 1 - q @ x.T


def _data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, dim))
    data = centers[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, dim))
    queries = centers[rng.integers(0, 8, 20)] + 0.3 * rng.normal(size=(20, dim))
    return data.astype(np.float32), queries.astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_flat_graph_is_exact_when_ef_covers_every_row(metric: str) -> None:
    data, queries = _data(300, 16)
    ids = np.arange(1000, 1300, dtype=np.uint64)[::-1].copy()  # positions map to ids, not to themselves
    index = kernels.hnsw_load(kernels.hnsw_build(data, metric=metric, m=8))
    got_ids, got_d = kernels.hnsw_search(index, queries, 10, ef=len(data), ids=ids)
    ref = _reference(queries, data, metric)
    want = np.argsort(ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got_ids, ids[want])
    np.testing.assert_allclose(got_d, np.take_along_axis(ref, want, axis=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("graph", ["flat", "sq"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_graph_recall_is_high_with_a_large_ef(graph: str, metric: str) -> None:
    """A flat graph finds >= 95 % of the true top 10 at ef 128; an SQ graph loses only what its 8-bit
    codes lose (its recall when every row is visited: 0.915 here for unit vectors)."""
    data, queries = _data(2000, 32, seed=1)
    index = kernels.hnsw_load(kernels.hnsw_build(data, metric=metric, m=16, storage=graph))
    want = np.argsort(_reference(queries, data, metric), axis=1)[:, :10]

    def recall(ef: int) -> float:
        got, _ = kernels.hnsw_search(index, queries, 10, ef=ef)
        return float(np.mean([len(set(g.tolist()) & set(w.tolist())) / 10 for g, w in zip(got, want, strict=True)]))

    if graph == "flat":
        assert recall(128) >= 0.95
    else:
        ceiling = recall(len(data))
        assert ceiling >= 0.9 and recall(128) >= ceiling - 0.02


def test_ties_go_to_the_smaller_id_and_short_graphs_pad() -> None:
    data = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # rows 0 and 1 tie
    index = kernels.hnsw_load(kernels.hnsw_build(data, metric="l2", m=4))
    ids = np.array([9, 5, 7], dtype=np.uint64)
    got_ids, got_d = kernels.hnsw_search(index, np.array([[1.0, 0.0]], np.float32), 5, ef=10, ids=ids)
    assert got_ids[0, :3].tolist() == [5, 9, 7]
    assert (got_ids[0, 3:] == NO_ID).all() and np.isinf(got_d[0, 3:]).all()
    np.testing.assert_allclose(got_d[0, :3], [0, 0, 2], atol=1e-6)


def test_an_empty_graph_and_bad_arguments() -> None:
    index = kernels.hnsw_load(kernels.hnsw_build(np.zeros((0, 4), np.float32), m=4))
    ids, dists = kernels.hnsw_search(index, np.ones((2, 4), np.float32), 3, ef=8)
    assert (ids == NO_ID).all() and np.isinf(dists).all()
    with pytest.raises(ValueError, match="metric"):
        kernels.hnsw_build(np.ones((3, 4), np.float32), metric="hamming")
    with pytest.raises(ValueError, match="storage"):
        kernels.hnsw_build(np.ones((3, 4), np.float32), storage="pq")
    with pytest.raises(ValueError, match="ef"):
        kernels.hnsw_search(index, np.ones((2, 4), np.float32), 3, ef=0)
