"""Property tests of the kernels against slow, obviously-correct float64 / pure-Python references.

Sizes are kept small but odd (one row, dimension 1, k > n, nq = 0 or 1) and values are drawn from
small pools so that exact distance ties, duplicate vectors, NaN and inf all occur often: those are the
cases where a fast top-k would quietly disagree with the reference or with itself under another split.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kernels import METRICS, NO_ID, merge_topk, pairwise_distances, search_block, topk

EPS32 = float(np.finfo(np.float32).eps)

# Magnitudes below 1e-3 become exactly 0: zero vectors are then common, and squared norms never
# underflow in float32, which the float64 reference would not mirror.
real_values = st.floats(-100, 100, width=32).map(lambda v: v if abs(v) >= 1e-3 else 0.0)
small_ints = st.integers(-8, 8).map(float)

# Distances for top-k: a pool of repeated values (including +-0) forces ties; arbitrary float32 values
# bring NaN, +-inf and subnormals.
distance_values = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, math.inf, math.nan]),
    st.floats(width=32),
)


@st.composite
def vector_cases(draw, values, max_nq=4, max_n=12, max_dim=8):
    """(queries, vectors) float32; vectors are drawn from a small pool of rows so duplicates are common."""
    dim = draw(st.integers(1, max_dim))
    queries = draw(arrays(np.float32, (draw(st.integers(0, max_nq)), dim), elements=values))
    pool = draw(arrays(np.float32, (draw(st.integers(1, 4)), dim), elements=values))
    rows = draw(st.lists(st.integers(0, len(pool) - 1), max_size=max_n))
    return queries, pool[np.array(rows, dtype=np.intp)].reshape(len(rows), dim)


@st.composite
def distance_cases(draw, max_nq=4, max_n=60):
    """(distances float32 [nq, n], unique ids uint64 [n] in random order, k) with k often > n."""
    nq = draw(st.integers(0, max_nq))
    n = draw(st.integers(0, max_n))
    distances = draw(arrays(np.float32, (nq, n), elements=distance_values))
    ids = np.array(draw(st.lists(st.integers(0, 2**64 - 2), min_size=n, max_size=n, unique=True)), np.uint64)
    return distances, ids, draw(st.integers(1, max_n + 5))


def reference_distances(
    queries: np.ndarray, vectors: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 distances by the definitions, plus the magnitude each one's float32 rounding scales with."""
    q = queries.astype(np.float64)
    x = vectors.astype(np.float64)
    q_norm = np.linalg.norm(q, axis=1)[:, None]
    x_norm = np.linalg.norm(x, axis=1)[None, :]
    if metric == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2), q_norm**2 + x_norm**2
    if metric == "dot":
        return 1 - q @ x.T, 1 + q_norm * x_norm
    norms = q_norm * x_norm
    similarity = np.divide(q @ x.T, norms, out=np.zeros_like(norms), where=norms > 0)
    return 1 - similarity, np.ones_like(similarity)


def reference_topk(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row in Python by (is NaN, distance, id), keep k, pad with (NO_ID, inf)."""
    nq, n = distances.shape
    out_ids = np.full((nq, k), NO_ID, dtype=np.uint64)
    out_distances = np.full((nq, k), np.inf, dtype=np.float32)
    for r in range(nq):
        row = [float(v) for v in distances[r]]
        order = sorted(range(n), key=lambda j: (math.isnan(row[j]), 0.0 if math.isnan(row[j]) else row[j],
                                                int(ids[j])))[:k]
        out_ids[r, : len(order)] = ids[order]
        out_distances[r, : len(order)] = distances[r, order]
    return out_ids, out_distances


def assert_same_result(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    assert got[0].dtype == np.uint64 and got[1].dtype == np.float32
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])  # NaN == NaN and -0.0 == 0.0 here


@settings(max_examples=300, deadline=None)
@given(case=vector_cases(real_values), metric=st.sampled_from(METRICS))
def test_distances_match_float64_reference(case, metric):
    queries, vectors = case
    got = pairwise_distances(queries, vectors, metric)
    want, scale = reference_distances(queries, vectors, metric)
    assert got.dtype == np.float32 and got.shape == (len(queries), len(vectors))
    tolerance = 8 * (queries.shape[1] + 2) * EPS32 * scale
    assert np.all(np.abs(got - want) <= tolerance)
    if metric == "l2":
        assert np.all(got >= 0)


@settings(max_examples=300, deadline=None)
@given(case=distance_cases())
def test_topk_matches_reference_order(case):
    distances, ids, k = case
    assert_same_result(topk(distances, ids, k), reference_topk(distances, ids, k))


@settings(max_examples=150, deadline=None)
@given(case=vector_cases(real_values, max_n=30), metric=st.sampled_from(METRICS), k=st.integers(1, 35),
       data=st.data())
def test_topk_on_float64_distances_cast_to_float32(case, metric, k, data):
    queries, vectors = case
    distances = reference_distances(queries, vectors, metric)[0].astype(np.float32)
    ids = np.array(data.draw(st.permutations(range(len(vectors)))), dtype=np.uint64)
    assert_same_result(topk(distances, ids, k), reference_topk(distances, ids, k))


@settings(max_examples=200, deadline=None)
@given(case=distance_cases(), data=st.data())
def test_merge_of_split_equals_topk_of_whole(case, data):
    distances, ids, k = case
    n = len(ids)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    bounds = [0, *cuts, n]
    parts = [topk(distances[:, a:b], ids[a:b], k) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert_same_result(merge_topk(parts, k), topk(distances, ids, k))


@settings(max_examples=200, deadline=None)
@given(case=vector_cases(small_ints, max_n=40, max_dim=6), metric=st.sampled_from(METRICS),
       k=st.integers(1, 45), block_rows=st.integers(1, 7), data=st.data())
def test_search_block_in_tiny_chunks_equals_one_shot(case, metric, k, block_rows, data):
    # Small integer coordinates make every product and norm exact in float32, so chunking cannot change
    # a distance by rounding and results must agree bit for bit.
    queries, vectors = case
    ids = np.array(data.draw(st.permutations(range(1000, 1000 + len(vectors)))), dtype=np.uint64)
    got = search_block(queries, vectors, ids, metric, k, block_rows=block_rows)
    assert_same_result(got, topk(pairwise_distances(queries, vectors, metric), ids, k))
    assert_same_result(search_block(queries, vectors, ids, metric, k), got)
    if metric != "cosine":  # l2 and dot are exact here, so even the float64 order must match
        want = reference_distances(queries, vectors, metric)[0].astype(np.float32)
        assert_same_result(got, reference_topk(want, ids, k))


def test_padding_when_k_exceeds_rows():
    queries = np.array([[0.0, 0.0]], np.float32)
    vectors = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
    ids, distances = search_block(queries, vectors, np.array([7, 9], np.uint64), "l2", 4)
    np.testing.assert_array_equal(ids, [[9, 7, NO_ID, NO_ID]])
    np.testing.assert_array_equal(distances, [[1.0, 25.0, np.inf, np.inf]])

    ids, distances = search_block(np.zeros((3, 2), np.float32), np.zeros((0, 2), np.float32),
                                  np.zeros(0, np.uint64), "dot", 2)
    assert ids.shape == distances.shape == (3, 2)
    assert np.all(ids == NO_ID) and np.all(distances == np.inf)


def test_zero_vector_has_cosine_distance_one():
    vectors = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(pairwise_distances(vectors, vectors, "cosine"), [[1, 1], [1, 0]])


def test_bad_arguments_raise_value_error():
    q = np.zeros((2, 3), np.float32)
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distances(q, x, "hamming")
    with pytest.raises(ValueError, match="dimension mismatch"):
        pairwise_distances(q, np.zeros((4, 5), np.float32), "l2")
    with pytest.raises(ValueError, match="2-D"):
        pairwise_distances(q[0], x, "l2")
    with pytest.raises(ValueError, match="dimension mismatch"):
        search_block(q, np.zeros((4, 5), np.float32), np.arange(4, dtype=np.uint64), "l2", 3)
    with pytest.raises(ValueError, match="unknown metric"):
        search_block(q, x, np.arange(4, dtype=np.uint64), "hamming", 3)
    with pytest.raises(ValueError, match="ids"):
        topk(np.zeros((2, 4), np.float32), np.arange(3, dtype=np.uint64), 2)
    with pytest.raises(ValueError, match="k must be"):
        topk(np.zeros((2, 4), np.float32), np.arange(4, dtype=np.uint64), -1)
    with pytest.raises(ValueError, match="at least one part"):
        merge_topk([], 3)
