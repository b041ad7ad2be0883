"""Property tests of `kernels.scan_lists` (the IVF partition scan) on both CPU backends against float64.

Each query scans its own subset of the lists (as a batch does: a partition is probed by some queries only),
lists may be empty or be scanned by no query, k runs past the rows a query reaches, dimensions are odd
(faiss's SIMD loops take 8 or 16 floats at a time and finish the rest apart), and rows are drawn from
small pools of small integers, so every distance is exact in float32 and ties, across lists as well, are
everywhere: the result must equal the reference's (distance, id) order exactly, ties to the lower id.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_kernels import assert_same_result, reference_distances, reference_topk, small_ints

import kernels.cpu_faiss
from kernels import NO_ID, fp16_encode, pq_decode, scan_lists, sq8_decode, sq8_encode, sq8_train

BACKENDS = ("auto", "numpy")  # auto: faiss for flat l2/dot; numpy: the array-module code everywhere


@contextlib.contextmanager
def cpu_backend(choice: str) -> Iterator[None]:
    """KERNELS_CPU for the block (monkeypatch is not reset between hypothesis examples)."""
    saved = os.environ.get("KERNELS_CPU")
    os.environ["KERNELS_CPU"] = choice
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("KERNELS_CPU", None)
        else:
            os.environ["KERNELS_CPU"] = saved


@st.composite
def list_cases(draw, max_nq=5, max_lists=5, max_rows=9, max_dim=19, values=small_ints):
    dim = draw(st.integers(1, max_dim))
    nq = draw(st.integers(0, max_nq))
    queries = draw(arrays(np.float32, (nq, dim), elements=values))
    pool = draw(arrays(np.float32, (draw(st.integers(1, 4)), dim), elements=values))
    sizes = draw(st.lists(st.integers(0, max_rows), max_size=max_lists))
    ids = np.array(draw(st.lists(st.integers(0, 2**63), min_size=sum(sizes), max_size=sum(sizes), unique=True)),
                   np.uint64)
    lists, start = [], 0
    for size in sizes:
        rows = pool[np.array(draw(st.lists(st.integers(0, len(pool) - 1), min_size=size, max_size=size)),
                             dtype=np.intp)].reshape(size, dim)
        scanning = draw(st.one_of(st.none(), st.lists(st.integers(0, max(nq - 1, 0)), unique=True, max_size=nq)
                                  .map(lambda r: np.array(sorted(r), dtype=np.intp))))
        if nq == 0 and scanning is not None:
            scanning = np.empty(0, np.intp)
        lists.append((ids[start:start + size], rows, scanning))
        start += size
    return queries, lists, draw(st.integers(1, sum(sizes) + 3))


def reference(queries, lists, k, metric):
    """Per query, the float64 distances to the rows of the lists it scans, ordered by reference_topk."""
    out_ids = np.full((len(queries), k), NO_ID, np.uint64)
    out_d = np.full((len(queries), k), np.inf, np.float32)
    for r in range(len(queries)):
        mine = [(ids, rows) for ids, rows, scanning in lists if scanning is None or r in scanning]
        if not mine:
            continue
        ids = np.concatenate([ids for ids, _ in mine])
        rows = np.concatenate([rows for _, rows in mine])
        if not len(ids):
            continue
        d = reference_distances(queries[r : r + 1], rows, metric)[0].astype(np.float32)
        out_ids[r : r + 1], out_d[r : r + 1] = reference_topk(d, ids, k)
    return out_ids, out_d


@settings(max_examples=150, deadline=None)
@given(case=list_cases(), metric=st.sampled_from(("l2", "dot")), backend=st.sampled_from(BACKENDS))
def test_flat_scan_equals_reference(case, metric, backend):
    queries, lists, k = case
    with cpu_backend(backend):
        got = scan_lists(queries, lists, k, codec="flat", params={}, metric=metric)
    assert_same_result(got, reference(queries, lists, k, metric))


@settings(max_examples=100, deadline=None)
@given(case=list_cases(max_dim=8), codec=st.sampled_from(("fp16", "sq8", "pq")))
@example(case=(np.array([[-3.0]], np.float32), [(np.arange(7, dtype=np.uint64),
                                                  np.array([[0.0]] * 5 + [[2.0], [-8.0]], np.float32), None)], 6),
         codec="sq8")  # a tie at the kth place that faiss's SQ8 rounding breaks the other way
def test_coded_scan_equals_reference_on_decoded_rows(case, codec):
    queries, lists, k = case
    dim = queries.shape[1]
    every = np.concatenate([rows for _, rows, _ in lists]) if lists else np.zeros((0, dim), np.float32)
    if codec == "sq8":
        lo, scale = sq8_train(every) if len(every) else (np.zeros(dim, np.float32), np.ones(dim, np.float32))
        params = {"sq8_lo": lo, "sq8_scale": scale}
        encoded = [(ids, sq8_encode(rows, lo, scale), s) for ids, rows, s in lists]
        decoded = [(ids, sq8_decode(codes, lo, scale), s) for (ids, codes, s) in encoded]
        metric = "l2"  # SQ8 dot has its own product path: test_kernels_codecs compares it with decoded rows
    elif codec == "fp16":
        params, encoded, metric = {}, [(ids, fp16_encode(rows), s) for ids, rows, s in lists], "dot"
        decoded = lists
    else:  # one sub-vector per dimension; each code is a row of the pool, so decoding is exact
        codebooks = np.zeros((dim, 256, 1), np.float32)
        codebooks[:, :17, 0] = np.arange(-8, 9, dtype=np.float32)[None, :]
        params = {"pq_codebooks": codebooks}
        encoded = [(ids, (rows + 8).astype(np.uint8), s) for ids, rows, s in lists]
        decoded = [(ids, pq_decode(codes, codebooks), s) for ids, codes, s in encoded]
        metric = "l2"
    got = scan_lists(queries, encoded, k, codec=codec, params=params, metric=metric)
    want = reference(queries, decoded, k, metric)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-4)  # SQ8 decodes lo + code * scale
    # The same ids, but where two rows' decoded distances tie, faiss's SQ8 reconstruction (float32, its
    # own rounding) may order them the other way: then the row it chose must be as near, within the same
    # tolerance (seen: rows 2 and -8 from query -3 at 25.0 and 24.999996).
    rows_of = {int(i): row for ids, rows, _ in decoded for i, row in zip(ids, rows, strict=True)}
    for r, j in zip(*np.nonzero(got[0] != want[0]), strict=True):
        assert got[0][r, j] != NO_ID and want[0][r, j] != NO_ID, (r, j, got, want)
        mine = reference_distances(queries[r : r + 1], rows_of[int(got[0][r, j])][None, :], metric)[0][0]
        assert abs(mine - want[1][r, j]) <= 1e-4 + 1e-6 * abs(want[1][r, j]), (r, j, got, want)


def test_faiss_scan_resolves_ties_at_the_kth_place_like_numpy(monkeypatch):
    # 40 copies of one row over 4 lists, k 5: faiss's heaps keep arbitrary copies; the answer is the 5
    # lowest ids of all 40, which only the hand-back to the numpy kernel can find.
    rng = np.random.default_rng(1)
    row = rng.integers(-3, 4, (1, 11)).astype(np.float32)
    ids = rng.permutation(1000)[:40].astype(np.uint64)
    lists = [(ids[i::4], np.repeat(row, 10, axis=0), None) for i in range(4)]
    queries = rng.integers(-3, 4, (3, 11)).astype(np.float32)
    for metric in ("l2", "dot"):
        got = scan_lists(queries, lists, 5, codec="flat", params={}, metric=metric)
        np.testing.assert_array_equal(got[0], np.sort(ids)[None, :5].repeat(3, axis=0))


def test_faiss_scan_matches_numpy_on_real_data(monkeypatch):
    rng = np.random.default_rng(2)
    dim = 37
    lists = [(rng.permutation(10**6)[:n].astype(np.uint64), rng.normal(size=(n, dim)).astype(np.float32),
              None if i % 2 else np.sort(rng.permutation(16)[:9])) for i, n in enumerate((200, 3, 0, 57, 120))]
    queries = rng.normal(size=(16, dim)).astype(np.float32)
    for metric in ("l2", "dot"):
        fast = scan_lists(queries, lists, 10, codec="flat", params={}, metric=metric)
        monkeypatch.setenv("KERNELS_CPU", "numpy")
        slow = scan_lists(queries, lists, 10, codec="flat", params={}, metric=metric)
        monkeypatch.delenv("KERNELS_CPU")
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_allclose(fast[1], slow[1], rtol=1e-5, atol=1e-5)


def test_non_finite_queries_take_the_numpy_path(monkeypatch):
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    lists = [(np.arange(4, dtype=np.uint64), rows, None)]
    queries = np.array([[0, 1, 2], [np.nan, 0, 0], [np.inf, 0, 0]], np.float32)
    got = scan_lists(queries, lists, 2, codec="flat", params={}, metric="l2")
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    assert_same_result(got, scan_lists(queries, lists, 2, codec="flat", params={}, metric="l2"))
    assert got[0][1, 0] == NO_ID  # a NaN distance is no match, as before


def test_backend_table_names_every_faiss_op(monkeypatch):
    assert kernels.cpu_faiss.backends()["scan_lists/flat"] == "faiss"
    assert kernels.cpu_faiss.backends()["search_block"] == "numpy"
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    assert set(kernels.cpu_faiss.backends().values()) == {"numpy"}


def test_scan_lists_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        scan_lists(np.zeros((1, 2), np.float32), [], -1, codec="flat", params={}, metric="l2")
    with pytest.raises(ValueError, match="2-D"):
        scan_lists(np.zeros(2, np.float32), [], 1, codec="flat", params={}, metric="l2")
