"""The shortcuts in top-k selection give exactly the reference result, whichever route a case takes.

`kernels.topk` narrows candidates with an upper bound on each row's kth distance: the kth value of the
first columns (`_select`), and the running top k's kth distance while folding chunks (`search_block`).
At the real sizes the routes are chosen by how many candidates a bound keeps; here the thresholds are
forced both ways on small inputs full of ties, NaN and inf, so each route must match the reference.
"""

from __future__ import annotations

from contextlib import contextmanager
from importlib import import_module

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import assert_same_result, distance_cases, reference_topk, small_ints, vector_cases

from kernels import METRICS, pairwise_distances, search_block, topk

topk_module = import_module("kernels.topk")  # `kernels.topk` is the function

ROUTES = {"bound": 0, "fallback": 10**9}
"""MAX_CANDIDATE_SHARE that makes every bound be used (0) or never be used (10**9)."""


@contextmanager
def route(name: str, prefix_columns: int = 1):
    saved = topk_module.PREFIX_COLUMNS, topk_module.MAX_CANDIDATE_SHARE
    topk_module.PREFIX_COLUMNS, topk_module.MAX_CANDIDATE_SHARE = prefix_columns, ROUTES[name]
    try:
        yield
    finally:
        topk_module.PREFIX_COLUMNS, topk_module.MAX_CANDIDATE_SHARE = saved


@settings(max_examples=200, deadline=None)
@given(case=distance_cases(max_n=80), name=st.sampled_from(sorted(ROUTES)), prefix=st.integers(1, 6))
def test_topk_routes_match_reference(case, name, prefix):
    distances, ids, k = case
    with route(name, prefix):
        got = topk(distances, ids, k)
    assert_same_result(got, reference_topk(distances, ids, k))


@settings(max_examples=150, deadline=None)
@given(case=vector_cases(small_ints, max_n=60, max_dim=5), metric=st.sampled_from(METRICS), k=st.integers(1, 12),
       block_rows=st.integers(1, 9), name=st.sampled_from(sorted(ROUTES)), data=st.data())
def test_search_block_routes_match_one_shot_topk(case, metric, k, block_rows, name, data):
    queries, vectors = case
    ids = np.array(data.draw(st.permutations(range(70, 70 + len(vectors)))), dtype=np.uint64)
    want = topk(pairwise_distances(queries, vectors, metric), ids, k)
    with route(name):
        got = search_block(queries, vectors, ids, metric, k, block_rows=block_rows)
    assert_same_result(got, want)


def test_rows_sorted_worst_first_fall_back_to_the_whole_row():
    # The first columns hold the largest distances, so their kth value keeps every entry: the bound is
    # dropped for the whole-row partition, and the answer is unchanged.
    distances = np.tile(np.arange(20_000, 0, -1, dtype=np.float32), (3, 1))
    ids = np.arange(20_000, dtype=np.uint64)
    got_ids, got_distances = topk(distances, ids, 5)
    np.testing.assert_array_equal(got_ids, np.tile(np.arange(19_999, 19_994, -1, dtype=np.uint64), (3, 1)))
    np.testing.assert_array_equal(got_distances, np.tile(np.arange(1, 6, dtype=np.float32), (3, 1)))


def test_large_block_with_nan_rows_and_padding():
    # A query of NaNs (all its distances NaN) next to ordinary ones, over many chunks and over fewer rows
    # than k: the fold must keep NaN rows and padding in their places. Small integers keep distances exact
    # whatever the chunk size.
    rng = np.random.default_rng(0)
    vectors = rng.integers(-3, 4, (5000, 4)).astype(np.float32)
    queries = rng.integers(-3, 4, (3, 4)).astype(np.float32)
    queries[0] = np.nan
    ids = rng.permutation(5000).astype(np.uint64)
    want = topk(pairwise_distances(queries, vectors, "l2"), ids, 7)
    assert_same_result(search_block(queries, vectors, ids, "l2", 7, block_rows=512), want)
    assert_same_result(search_block(queries, vectors[:3], ids[:3], "l2", 7, block_rows=1), topk(
        pairwise_distances(queries, vectors[:3], "l2"), ids[:3], 7))
