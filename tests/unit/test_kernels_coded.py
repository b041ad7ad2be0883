"""Property tests of the SQ8 and PQ list scans (`kernels.scan_lists`, faiss's IVF scanners on the CPU, the
numpy kernel under KERNELS_CPU=numpy) and of PQ encoding on faiss, against float64 references.

PQ cases use small-integer codebooks, so every distance is exact in float32 whatever order faiss's SIMD
sums in, and codes come from small pools, so ties (across lists too) are everywhere: the result must be
the reference's (distance, id) order exactly. SQ8 decodes lo + code * scale, which faiss computes as
vmin + (code + 0.5) / 255 * vdiff: equal up to float32 rounding, so SQ8 results are held to the
reference within that rounding.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_kernels import EPS32, assert_same_result, real_values, reference_distances, small_ints
from test_kernels_scan import BACKENDS, cpu_backend, list_cases, reference

import kernels.cpu_faiss
import kernels.scan
from kernels import NO_ID, pq_decode, pq_encode, scan_lists, sq8_encode, sq8_train

METRICS = ("l2", "dot")


@st.composite
def pq_list_cases(draw, max_nq=5, max_lists=5, max_rows=9, ksub=256, max_m=5):
    """(queries [nq, m * sub], lists of (ids, codes [n, m], query rows), codebooks [m, ksub, sub], k)."""
    m, sub = draw(st.integers(1, max_m)), draw(st.integers(1, 3))
    pool = draw(arrays(np.float32, (draw(st.integers(1, 5)), sub), elements=small_ints))
    codebooks = pool[draw(arrays(np.intp, (m, ksub), elements=st.integers(0, len(pool) - 1)))]
    code_pool = draw(arrays(np.uint8, (draw(st.integers(1, 4)), m), elements=st.integers(0, ksub - 1)))
    nq = draw(st.integers(0, max_nq))
    queries = draw(arrays(np.float32, (nq, m * sub), elements=small_ints))
    sizes = draw(st.lists(st.integers(0, max_rows), max_size=max_lists))
    ids = np.array(draw(st.lists(st.integers(0, 2**63), min_size=sum(sizes), max_size=sum(sizes), unique=True)),
                   np.uint64)
    lists, start = [], 0
    for size in sizes:
        picks = draw(st.lists(st.integers(0, len(code_pool) - 1), min_size=size, max_size=size))
        scanning = draw(st.one_of(st.none(), st.lists(st.integers(0, max(nq - 1, 0)), unique=True, max_size=nq)
                                  .map(lambda r: np.array(sorted(r), dtype=np.intp))))
        if nq == 0 and scanning is not None:
            scanning = np.empty(0, np.intp)
        lists.append((ids[start : start + size], code_pool[np.array(picks, dtype=np.intp)].reshape(size, m),
                      scanning))
        start += size
    return queries, lists, codebooks, draw(st.integers(1, sum(sizes) + 3))


@settings(max_examples=150, deadline=None)
@given(case=pq_list_cases(), metric=st.sampled_from(METRICS), backend=st.sampled_from(BACKENDS))
def test_pq_scan_equals_reference_exactly(case, metric, backend):
    queries, lists, codebooks, k = case
    with cpu_backend(backend):
        got = scan_lists(queries, lists, k, codec="pq", params={"pq_codebooks": codebooks}, metric=metric)
    decoded = [(ids, pq_decode(codes, codebooks), rows) for ids, codes, rows in lists]
    assert_same_result(got, reference(queries, decoded, k, metric))


def assert_within_rounding(got, queries, lists, decoded, k, metric, decode_error, reach):
    """The result is a top k of the float64 distances up to float32 rounding: each returned distance is its
    row's reference distance, ascending, ties by id; no row left out is nearer than the kth by more than
    rounding; padding only where a query reaches fewer than k rows. `decode_error` [dim] bounds how far a
    decoded value may be off (decoding in float32), `reach` [dim] how large a decoded value may be."""
    got_ids, got_d = got
    assert got_ids.dtype == np.uint64 and got_d.dtype == np.float32 and got_ids.shape == (len(queries), k)
    for r in range(len(queries)):
        mine = [(ids, rows) for (ids, _, scanning), (_, rows, _) in zip(lists, decoded, strict=True)
                if scanning is None or r in scanning]
        ids = np.concatenate([ids for ids, _ in mine]) if mine else np.empty(0, np.uint64)
        rows = np.concatenate([rows for _, rows in mine]) if mine else np.empty((0, queries.shape[1]))
        want, scale = reference_distances(queries[r : r + 1], rows, metric)
        q = np.abs(queries[r].astype(np.float64))
        want = want[0]
        slack = 64 * (queries.shape[1] + 2) * EPS32 * scale[0] + 4 * (decode_error * (q + reach + decode_error)).sum()
        reached = min(k, len(ids))
        assert np.all(got_ids[r, reached:] == NO_ID) and np.all(got_d[r, reached:] == np.inf)
        if not reached:
            continue
        where = {int(i): j for j, i in enumerate(ids)}
        picked = np.array([where[int(i)] for i in got_ids[r, :reached]])
        assert len(set(picked.tolist())) == reached
        assert np.all(np.abs(got_d[r, :reached] - want[picked]) <= slack[picked])
        assert np.all(np.diff(got_d[r, :reached]) >= 0)
        tied = got_d[r, 1:reached] == got_d[r, : reached - 1]
        assert np.all(got_ids[r, 1:reached][tied] > got_ids[r, : reached - 1][tied])
        left = np.setdiff1d(np.arange(len(ids)), picked)
        if len(left):
            assert np.all(want[left] + slack[left] >= want[picked[-1]] - slack[picked[-1]])


@settings(max_examples=150, deadline=None)
@given(case=list_cases(values=real_values), metric=st.sampled_from(METRICS), backend=st.sampled_from(BACKENDS))
def test_sq8_scan_within_rounding_of_reference(case, metric, backend):
    queries, lists, k = case
    dim = queries.shape[1]
    every = np.concatenate([rows for _, rows, _ in lists]) if lists else np.zeros((0, dim), np.float32)
    lo, scale = sq8_train(every) if len(every) else (np.zeros(dim, np.float32), np.ones(dim, np.float32))
    encoded = [(ids, sq8_encode(rows, lo, scale), s) for ids, rows, s in lists]
    decoded = [(ids, lo.astype(np.float64) + codes * scale.astype(np.float64), s) for ids, codes, s in encoded]
    with cpu_backend(backend):
        got = scan_lists(queries, encoded, k, codec="sq8", params={"sq8_lo": lo, "sq8_scale": scale}, metric=metric)
    spread = np.abs(lo.astype(np.float64)) + 255 * scale.astype(np.float64)
    assert_within_rounding(got, queries, encoded, decoded, k, metric, 8 * EPS32 * spread, spread)


@pytest.mark.parametrize("codec", ["sq8", "pq"])
@pytest.mark.parametrize("metric", METRICS)
def test_coded_scan_resolves_ties_at_the_kth_place(codec, metric):
    # 40 rows of one code over 4 lists, k 5: faiss's heap keeps arbitrary copies; the answer is the 5
    # lowest ids of all 40, which only the hand-back to the numpy kernel finds.
    rng = np.random.default_rng(3)
    ids = rng.permutation(1000)[:40].astype(np.uint64)
    if codec == "pq":
        params = {"pq_codebooks": rng.normal(size=(4, 256, 2)).astype(np.float32)}
        code = rng.integers(0, 256, (1, 4)).astype(np.uint8)
    else:
        params = {"sq8_lo": np.full(8, -1, np.float32), "sq8_scale": np.full(8, 2 / 255, np.float32)}
        code = rng.integers(0, 256, (1, 8)).astype(np.uint8)
    lists = [(ids[i::4], np.repeat(code, 10, axis=0), None) for i in range(4)]
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    got = scan_lists(queries, lists, 5, codec=codec, params=params, metric=metric)
    np.testing.assert_array_equal(got[0], np.sort(ids)[None, :5].repeat(3, axis=0))


def _real_lists(rng, codes_of, dim):
    sizes = (200, 3, 0, 57, 120)
    return [(rng.permutation(10**6)[:n].astype(np.uint64), codes_of(rng.normal(size=(n, dim)).astype(np.float32)),
             None if i % 2 else np.sort(rng.permutation(16)[:9])) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("codec", ["sq8", "pq"])
def test_coded_scans_run_on_faiss_and_agree_with_numpy(codec, monkeypatch):
    rng = np.random.default_rng(4)
    dim = 24
    train = rng.normal(size=(600, dim)).astype(np.float32)
    if codec == "pq":
        params = {"pq_codebooks": kernels.pq_train(train, 6, iters=2, device="cpu")}
        lists = _real_lists(rng, lambda x: pq_encode(x, params["pq_codebooks"], device="cpu"), dim)
    else:
        lo, scale = sq8_train(train)
        params = {"sq8_lo": lo, "sq8_scale": scale}
        lists = _real_lists(rng, lambda x: sq8_encode(x, lo, scale), dim)
    queries = rng.normal(size=(16, dim)).astype(np.float32)
    numpy_scan = kernels.scan._scan_lists_numpy
    for metric in METRICS:
        def refuse(*args, **kwargs):
            raise AssertionError("the numpy kernel ran")
        monkeypatch.setattr(kernels.scan, "_scan_lists_numpy", refuse)  # distinct distances: faiss decides all
        fast = scan_lists(queries, lists, 10, codec=codec, params=params, metric=metric)
        monkeypatch.setattr(kernels.scan, "_scan_lists_numpy", numpy_scan)
        monkeypatch.setenv("KERNELS_CPU", "numpy")
        slow = scan_lists(queries, lists, 10, codec=codec, params=params, metric=metric)
        monkeypatch.delenv("KERNELS_CPU")
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_allclose(fast[1], slow[1], rtol=1e-5, atol=1e-5)


def test_coded_scan_with_parameters_faiss_cannot_take_uses_numpy():
    # 4-entry codebooks are no 8-bit PQ for faiss: the numpy kernel scans them
    codebooks = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    codes = np.array([[0, 1], [3, 2], [1, 1]], np.uint8)
    lists = [(np.arange(3, dtype=np.uint64), codes, None)]
    queries = np.ones((2, 6), np.float32)
    got = scan_lists(queries, lists, 2, codec="pq", params={"pq_codebooks": codebooks}, metric="l2")
    want = reference(queries, [(lists[0][0], pq_decode(codes, codebooks), None)], 2, "l2")
    assert_same_result(got, want)


def test_pq_encode_runs_on_faiss_and_equals_numpy(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    codebooks = kernels.pq_train(x[:1000], 8, iters=2, device="cpu")
    calls = []
    real = kernels.cpu_faiss.pq_encode
    monkeypatch.setattr(kernels.cpu_faiss, "pq_encode", lambda *a: calls.append(1) or real(*a))
    fast = pq_encode(x, codebooks, device="cpu")
    assert calls
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    slow = pq_encode(x, codebooks, device="cpu")
    assert len(calls) == 1
    # the two compute distances differently (direct vs expanded): a code may differ only on a near tie
    differ = fast != slow
    assert differ.mean() < 1e-3
    for r, j in zip(*np.nonzero(differ), strict=True):
        part = x[r : r + 1, j * 4 : (j + 1) * 4]
        d, scale = reference_distances(part, codebooks[j], "l2")
        assert abs(d[0, fast[r, j]] - d[0, slow[r, j]]) <= 64 * EPS32 * scale[0, fast[r, j]]


def test_backend_table_lists_the_coded_ops(monkeypatch):
    for op in ("scan_lists/pq", "scan_lists/sq8", "pq_encode"):
        assert kernels.cpu_faiss.backends()[op] == "faiss"
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    assert set(kernels.cpu_faiss.backends().values()) == {"numpy"}


@pytest.mark.parametrize("codec", ["sq8", "pq"])
def test_non_finite_queries_take_the_numpy_path(codec, monkeypatch):
    rng = np.random.default_rng(6)
    if codec == "pq":
        params = {"pq_codebooks": rng.normal(size=(2, 256, 2)).astype(np.float32)}
        codes = rng.integers(0, 256, (6, 2)).astype(np.uint8)
    else:
        params = {"sq8_lo": np.zeros(4, np.float32), "sq8_scale": np.full(4, 0.1, np.float32)}
        codes = rng.integers(0, 256, (6, 4)).astype(np.uint8)
    lists = [(np.arange(6, dtype=np.uint64), codes, None)]
    queries = np.array([[0, 1, 2, 3], [np.nan, 0, 0, 0], [np.inf, 0, 0, 0]], np.float32)
    got = scan_lists(queries, lists, 2, codec=codec, params=params, metric="l2")
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    assert_same_result(got, scan_lists(queries, lists, 2, codec=codec, params=params, metric="l2"))


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_coded_scans_do_not_leak(monkeypatch):
    # faiss hands its list scanners over without ownership: one made per scan and never freed cost some
    # 8 KB a scan (170 MB over these 20,000)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    codebooks = kernels.pq_train(x, 4, iters=2, device="cpu")
    lo, scale = sq8_train(x)
    ids = np.arange(500, dtype=np.uint64)
    cases = [("pq", [(ids, pq_encode(x, codebooks, device="cpu"), None)], {"pq_codebooks": codebooks}),
             ("sq8", [(ids, sq8_encode(x, lo, scale), None)], {"sq8_lo": lo, "sq8_scale": scale})]
    for codec, lists, params in cases:
        scan_lists(x[:1], lists, 3, codec=codec, params=params, metric="l2")
    before = _resident_bytes()
    for _ in range(10_000):
        for codec, lists, params in cases:
            scan_lists(x[:1], lists, 3, codec=codec, params=params, metric="l2")
    assert _resident_bytes() - before < 30 * 2**20
