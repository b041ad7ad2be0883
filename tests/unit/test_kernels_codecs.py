"""Property tests of the codecs (SQ8, FP16, PQ), the code scans and candidate re-ranking against float64
numpy references.

Codecs are held to the errors `kernels.codecs` states. PQ is checked piece by piece: encoding picks the
nearest sub-centroid of the reference (ties: the lower code), decoding is a table lookup, and the lookup
table scan equals the exact distance to the decoded vector. With small integer queries and codebooks all of
these are exact in float32, so scans must equal `search_block` over decoded rows bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_kernels import EPS32, assert_same_result, real_values, reference_distances, small_ints, vector_cases

from kernels import (
    METRICS,
    candidate_distances,
    code_distances,
    fp16_decode,
    fp16_encode,
    pq_decode,
    pq_distances,
    pq_encode,
    pq_train,
    search_block,
    search_codes,
    sq8_decode,
    sq8_encode,
    sq8_train,
)
from kernels.codecs import FP16_MAX
from kernels.pq import CODES_PER_SUBSPACE, PQ_METRICS

FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal float16, 2**-14


@st.composite
def matrices(draw, values, min_rows=0, max_rows=20, max_dim=7):
    dim = draw(st.integers(1, max_dim))
    return draw(arrays(np.float32, (draw(st.integers(min_rows, max_rows)), dim), elements=values))


@st.composite
def pq_cases(draw, values, max_rows=20, max_nq=4):
    """(queries [nq, d], x [n, d], codebooks [m, 256, d/m]) with d = m * sub; the codebooks come from a pool
    of a few sub-vectors, so equal sub-centroids (and so ties between codes) are common."""
    m = draw(st.integers(1, 4))
    sub = draw(st.integers(1, 3))
    pool = draw(arrays(np.float32, (draw(st.integers(1, 6)), sub), elements=values))
    picks = draw(arrays(np.intp, (m, CODES_PER_SUBSPACE), elements=st.integers(0, len(pool) - 1)))
    codebooks = pool[picks]
    queries = draw(arrays(np.float32, (draw(st.integers(0, max_nq)), m * sub), elements=values))
    x = draw(arrays(np.float32, (draw(st.integers(0, max_rows)), m * sub), elements=values))
    return queries, x, codebooks


# -------------------------------------------------------------------------------------------------- SQ8


@settings(max_examples=150, deadline=None)
@given(train=matrices(real_values, min_rows=1), other=st.data())
def test_sq8_round_trip_within_half_a_step(train, other):
    lo, scale = sq8_train(train)
    assert lo.dtype == scale.dtype == np.float32 and lo.shape == scale.shape == (train.shape[1],)
    # Values outside the trained range are clamped to it, so the error is measured from the clamped value.
    x = other.draw(arrays(np.float32, (other.draw(st.integers(0, 10)), train.shape[1]), elements=real_values))
    for rows in (train, x):
        codes = sq8_encode(rows, lo, scale)
        assert codes.dtype == np.uint8 and codes.shape == rows.shape
        decoded = sq8_decode(codes, lo, scale).astype(np.float64)
        hi = lo.astype(np.float64) + 255 * scale.astype(np.float64)
        clamped = np.clip(rows.astype(np.float64), lo, hi)
        rounding = 4 * EPS32 * (np.abs(lo) + 255 * scale)  # float32 arithmetic in encode and decode
        assert np.all(np.abs(decoded - clamped) <= scale / 2 + rounding)


def test_sq8_constant_dimension_decodes_exactly():
    x = np.array([[3.5, 1.0], [3.5, 2.0], [3.5, -1.0]], np.float32)
    lo, scale = sq8_train(x)
    assert scale[0] == 0
    decoded = sq8_decode(sq8_encode(x, lo, scale), lo, scale)
    np.testing.assert_array_equal(decoded[:, 0], x[:, 0])
    with pytest.raises(ValueError, match="at least one vector"):
        sq8_train(np.zeros((0, 2), np.float32))


# ------------------------------------------------------------------------------------------------- FP16


@settings(max_examples=150, deadline=None)
@given(x=matrices(st.floats(-1e6, 1e6, width=32)))
def test_fp16_within_stated_error(x):
    codes = fp16_encode(x)
    assert codes.dtype == np.float16 and codes.shape == x.shape
    decoded = fp16_decode(codes).astype(np.float64)
    x64 = x.astype(np.float64)
    magnitude = np.abs(x64)
    normal = (magnitude >= FP16_TINY) & (magnitude <= FP16_MAX)
    assert np.all(np.abs(decoded - x64)[normal] <= 2.0**-11 * magnitude[normal])  # the stated relative error
    subnormal = magnitude < FP16_TINY
    assert np.all(np.abs(decoded - x64)[subnormal] <= 2.0**-25)  # half of float16's smallest step
    beyond = magnitude > FP16_MAX
    np.testing.assert_array_equal(decoded[beyond], np.sign(x64[beyond]) * FP16_MAX)  # clamped, never inf


# --------------------------------------------------------------------------------------------------- PQ


@settings(max_examples=150, deadline=None)
@given(case=pq_cases(small_ints))
def test_pq_encode_is_nearest_sub_centroid_with_ties_to_lower_code(case):
    _, x, codebooks = case
    m, _, sub = codebooks.shape
    codes = pq_encode(x, codebooks, device="cpu")
    assert codes.dtype == np.uint8 and codes.shape == (len(x), m)
    for j in range(m):
        want = reference_distances(x[:, j * sub : (j + 1) * sub], codebooks[j], "l2")[0]  # exact on integers
        np.testing.assert_array_equal(codes[:, j], np.argmin(want, axis=1).reshape(len(x)))


@settings(max_examples=100, deadline=None)
@given(case=pq_cases(real_values))
def test_pq_encode_on_real_values_is_within_rounding_of_the_nearest(case):
    _, x, codebooks = case
    m, _, sub = codebooks.shape
    codes = pq_encode(x, codebooks, device="cpu")
    for j in range(m):
        part = x[:, j * sub : (j + 1) * sub]
        want, scale = reference_distances(part, codebooks[j], "l2")
        slack = 16 * (sub + 2) * EPS32 * scale.max(axis=1)
        assert np.all(want[np.arange(len(x)), codes[:, j]] <= want.min(axis=1) + slack)


@settings(max_examples=100, deadline=None)
@given(case=pq_cases(real_values), data=st.data())
def test_pq_decode_is_a_table_lookup(case, data):
    _, x, codebooks = case
    m, _, sub = codebooks.shape
    codes = data.draw(arrays(np.uint8, (len(x), m)))
    decoded = pq_decode(codes, codebooks)
    assert decoded.shape == (len(x), m * sub)
    for i in range(len(x)):
        for j in range(m):
            np.testing.assert_array_equal(decoded[i, j * sub : (j + 1) * sub], codebooks[j, codes[i, j]])


@settings(max_examples=150, deadline=None)
@given(case=pq_cases(real_values), metric=st.sampled_from(PQ_METRICS), data=st.data())
def test_pq_distances_equal_reference_distances_to_decoded_rows(case, metric, data):
    # The lookup-table sum over sub-spaces is the exact distance to the decoded vector: for l2 the sum of
    # sub-space squared distances, for dot 1 - q.x.
    queries, x, codebooks = case
    codes = data.draw(arrays(np.uint8, (len(x), len(codebooks))))
    got = pq_distances(queries, codes, codebooks, metric, device="cpu")
    assert got.dtype == np.float32 and got.shape == (len(queries), len(x))
    want, scale = reference_distances(queries, pq_decode(codes, codebooks), metric)
    assert np.all(np.abs(got - want) <= 16 * (queries.shape[1] + 2) * len(codebooks) * EPS32 * scale)


@settings(max_examples=60, deadline=None)
@given(case=pq_cases(small_ints), metric=st.sampled_from(PQ_METRICS), data=st.data())
def test_pq_distances_exact_on_small_integers(case, metric, data):
    queries, x, codebooks = case
    codes = data.draw(arrays(np.uint8, (len(x), len(codebooks))))
    got = pq_distances(queries, codes, codebooks, metric, device="cpu")
    want = reference_distances(queries, pq_decode(codes, codebooks), metric)[0]
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_pq_train_shape_determinism_and_quality():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    codebooks = pq_train(x, 4, iters=4, seed=7, device="cpu")
    assert codebooks.dtype == np.float32 and codebooks.shape == (4, CODES_PER_SUBSPACE, 2)
    np.testing.assert_array_equal(codebooks, pq_train(x, 4, iters=4, seed=7, device="cpu"))
    # Trained codebooks reconstruct far better than codebooks of random rows (the k-means objective).
    error = np.square(pq_decode(pq_encode(x, codebooks), codebooks) - x).sum(axis=1).mean()
    assert error < 0.2 * np.square(x).sum(axis=1).mean()
    # Fewer rows than codes: still 256 codes per sub-space, every row reconstructed exactly.
    few = x[:5]
    small = pq_train(few, 2, iters=2, device="cpu")
    assert small.shape == (2, CODES_PER_SUBSPACE, 4)
    np.testing.assert_array_equal(pq_decode(pq_encode(few, small), small), few)


def test_pq_rejects_bad_arguments():
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="divisible"):
        pq_train(x, 4)
    with pytest.raises(ValueError, match="4 or 8 bits"):
        pq_train(x, 3, nbits=6)
    with pytest.raises(ValueError, match="at least one vector"):
        pq_train(np.zeros((0, 6), np.float32), 3)
    codebooks = np.zeros((3, CODES_PER_SUBSPACE, 2), np.float32)
    with pytest.raises(ValueError, match="PQ scans support"):
        pq_distances(x, np.zeros((4, 3), np.uint8), codebooks, "cosine")


# ------------------------------------------------------------------------------------------------ scans


@settings(max_examples=100, deadline=None)
@given(case=pq_cases(small_ints), codec=st.sampled_from(("flat", "fp16", "sq8", "pq")), k=st.integers(1, 25),
       data=st.data())
def test_search_codes_equals_search_block_on_decoded_rows(case, codec, k, data):
    # Scalar codes are scanned by decoding, so they must agree bit for bit by construction; PQ codes are
    # scanned through lookup tables, which on small integers are exact, so they must agree bit for bit too.
    queries, x, codebooks = case
    metric = data.draw(st.sampled_from(PQ_METRICS if codec == "pq" else METRICS))
    ids = np.array(data.draw(st.permutations(range(500, 500 + len(x)))), dtype=np.uint64)
    params: dict[str, np.ndarray] = {}
    if codec == "flat":
        codes, decoded = x, x
    elif codec == "fp16":
        codes = fp16_encode(x)
        decoded = fp16_decode(codes)
    elif codec == "sq8":
        params["sq8_lo"], params["sq8_scale"] = sq8_train(x) if len(x) else (np.zeros(x.shape[1], np.float32),) * 2
        codes = sq8_encode(x, params["sq8_lo"], params["sq8_scale"])
        decoded = sq8_decode(codes, params["sq8_lo"], params["sq8_scale"])
    else:
        params["pq_codebooks"] = codebooks
        codes = pq_encode(x, codebooks, device="cpu")
        decoded = pq_decode(codes, codebooks)
    got = search_codes(queries, codes, ids, k, codec=codec, params=params, metric=metric)
    assert_same_result(got, search_block(queries, decoded, ids, metric, k))


@settings(max_examples=150, deadline=None)
@given(case=vector_cases(real_values), metric=st.sampled_from(METRICS))
def test_sq8_code_distances_match_the_decoded_rows(case, metric):
    """Dot distances of SQ8 codes are computed without decoding (q.lo + (q*scale).code): they must still
    be the float64 distances to the decoded rows, up to float32 rounding of the terms summed."""
    queries, x = case
    if not len(x):
        return
    lo, scale = sq8_train(x)
    codes = sq8_encode(x, lo, scale)
    decoded = sq8_decode(codes, lo, scale)
    got = code_distances(queries, codes, codec="sq8", params={"sq8_lo": lo, "sq8_scale": scale}, metric=metric)
    want, magnitude = reference_distances(queries, decoded, metric)
    q_norm = np.linalg.norm(queries.astype(np.float64), axis=1)[:, None]
    terms = q_norm * (np.linalg.norm(lo.astype(np.float64)) + np.linalg.norm(codes * scale.astype(np.float64), axis=1))
    tolerance = 8 * (queries.shape[1] + 2) * EPS32 * (magnitude + terms)
    assert got.shape == (len(queries), len(x)) and np.all(np.abs(got - want) <= tolerance)


def test_search_codes_rejects_unknown_codec():
    with pytest.raises(ValueError, match="unknown codec"):
        search_codes(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), np.zeros(1, np.uint64), 1,
                     codec="lz4", params={}, metric="l2")


# ------------------------------------------------------------------------------------------- re-ranking


@st.composite
def candidate_cases(draw, values):
    dim = draw(st.integers(1, 6))
    nq = draw(st.integers(0, 4))
    queries = draw(arrays(np.float32, (nq, dim), elements=values))
    candidates = draw(arrays(np.float32, (nq, draw(st.integers(0, 6)), dim), elements=values))
    return queries, candidates


@settings(max_examples=150, deadline=None)
@given(case=candidate_cases(real_values), metric=st.sampled_from(METRICS))
def test_candidate_distances_match_reference(case, metric):
    queries, candidates = case
    got = candidate_distances(queries, candidates, metric)
    assert got.dtype == np.float32 and got.shape == candidates.shape[:2]
    for i in range(len(queries)):
        want, scale = reference_distances(queries[i : i + 1], candidates[i], metric)
        assert np.all(np.abs(got[i] - want[0]) <= 8 * (queries.shape[1] + 2) * EPS32 * scale[0])
    if metric == "l2":
        assert np.all(got >= 0)


def test_candidate_distances_rejects_bad_shapes():
    with pytest.raises(ValueError, match="candidates must be"):
        candidate_distances(np.zeros((2, 3), np.float32), np.zeros((3, 4, 3), np.float32), "l2")
    with pytest.raises(ValueError, match="unknown metric"):
        candidate_distances(np.zeros((2, 3), np.float32), np.zeros((2, 4, 3), np.float32), "hamming")
