"""4-bit PQ (the `pq4` codec): packing, faiss's fast-scan layout, and the list scans of both CPU routes
(`kernels.scan_lists` codec "pq4": faiss's fast-scan, or the numpy kernel under KERNELS_CPU=numpy) against
float64 references of the decoded rows.

The numpy kernel computes ADC distances, exactly on small-integer codebooks: its result must be the
reference's (distance, id) order. The fast-scan sums lookup tables rounded to uint8, each entry within 0.5 / a
(a = 255 / the widest sub-space's spread of entries): its distances are held to m / (2a) of the reference, its
order to (returned distance, id), and no row left out may be nearer than the kth returned by more than that.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_kernels import EPS32, assert_same_result, reference_distances
from test_kernels_coded import pq_list_cases
from test_kernels_scan import cpu_backend, reference

import kernels
import kernels.cpu_faiss
import kernels.scan
from kernels import NO_ID, pq4_pack, pq4_unpack, pq_decode, pq_encode, pq_train, scan_lists
from kernels.pq import pq4_blocks

METRICS = ("l2", "dot")


def _packed(case):
    queries, lists, codebooks, k = case
    return queries, [(ids, pq4_pack(codes), rows) for ids, codes, rows in lists], codebooks, k


# (queries [nq, m * sub], lists of (ids, packed codes [n, ceil(m/2)], query rows), codebooks [m, 16, sub], k):
# rows from a small pool of codes, so that ties are everywhere; lists reach past a block of 32 rows
pq4_list_cases = pq_list_cases(max_rows=40, ksub=16, max_m=6).map(_packed)


def _decoded(lists, codebooks):
    m = len(codebooks)
    return [(ids, pq_decode(pq4_unpack(codes, m), codebooks), rows) for ids, codes, rows in lists]


def _rounding(query: np.ndarray, codebooks: np.ndarray, metric: str) -> float:
    """m / (2a): the most the fast-scan's uint8 tables move a sum, for one query (float64 tables)."""
    m, _, sub = codebooks.shape
    q = query.astype(np.float64).reshape(m, 1, sub)
    c = codebooks.astype(np.float64)
    tables = ((q - c) ** 2).sum(axis=2) if metric == "l2" else -(q * c).sum(axis=2)
    spread = float((tables.max(axis=1) - tables.min(axis=1)).max())
    return m * spread / 510


def assert_within_fast_scan_rounding(got, queries, decoded, codebooks, k, metric):
    got_ids, got_d = got
    assert got_ids.dtype == np.uint64 and got_d.dtype == np.float32 and got_ids.shape == (len(queries), k)
    for r in range(len(queries)):
        mine = [(ids, rows) for ids, rows, scanning in decoded if scanning is None or r in scanning]
        ids = np.concatenate([ids for ids, _ in mine]) if mine else np.empty(0, np.uint64)
        rows = np.concatenate([rows for _, rows in mine]) if mine else np.empty((0, queries.shape[1]))
        reached = min(k, len(ids))
        assert np.all(got_ids[r, reached:] == NO_ID) and np.all(got_d[r, reached:] == np.inf)
        if not reached:
            continue
        want, scale = reference_distances(queries[r : r + 1], rows, metric)
        want = want[0]
        slack = _rounding(queries[r], codebooks, metric) + 64 * EPS32 * (float(scale.max()) + 1)
        where = {int(i): j for j, i in enumerate(ids)}
        picked = np.array([where[int(i)] for i in got_ids[r, :reached]])
        assert len(set(picked.tolist())) == reached
        assert np.all(np.abs(got_d[r, :reached] - want[picked]) <= slack)
        assert np.all(np.diff(got_d[r, :reached]) >= 0)
        tied = got_d[r, 1:reached] == got_d[r, : reached - 1]
        assert np.all(got_ids[r, 1:reached][tied] > got_ids[r, : reached - 1][tied])
        left = np.setdiff1d(np.arange(len(ids)), picked)
        assert np.all(want[left] >= got_d[r, reached - 1] - slack)


@settings(max_examples=150, deadline=None)
@given(case=pq4_list_cases, metric=st.sampled_from(METRICS))
def test_pq4_numpy_scan_equals_reference_exactly(case, metric):
    queries, lists, codebooks, k = case
    with cpu_backend("numpy"):
        got = scan_lists(queries, lists, k, codec="pq4", params={"pq_codebooks": codebooks}, metric=metric)
    assert_same_result(got, reference(queries, _decoded(lists, codebooks), k, metric))


@settings(max_examples=150, deadline=None)
@given(case=pq4_list_cases, metric=st.sampled_from(METRICS))
def test_pq4_fast_scan_within_its_rounding_of_reference(case, metric):
    queries, lists, codebooks, k = case
    with cpu_backend("auto"):
        got = scan_lists(queries, lists, k, codec="pq4", params={"pq_codebooks": codebooks}, metric=metric)
    assert_within_fast_scan_rounding(got, queries, _decoded(lists, codebooks), codebooks, k, metric)


@given(codes=st.integers(1, 9).flatmap(lambda m: arrays(np.uint8, st.tuples(st.integers(0, 70), st.just(m)),
                                                         elements=st.integers(0, 15))))
def test_pq4_pack_round_trips_two_codes_a_byte(codes):
    packed = pq4_pack(codes)
    assert packed.shape == (len(codes), (codes.shape[1] + 1) // 2) and packed.dtype == np.uint8
    np.testing.assert_array_equal(pq4_unpack(packed, codes.shape[1]), codes)


@pytest.mark.parametrize(("m", "rows"), [(8, 70), (7, 32), (96, 5)])
def test_pq4_blocks_are_faiss_layout(m, rows):
    # faiss's own fast-scan index packs the same rows: its list's blocks must be ours, byte for byte
    import faiss

    rng = np.random.default_rng(m)
    codebooks = rng.normal(size=(m, 16, 2)).astype(np.float32)
    x = rng.normal(size=(rows, 2 * m)).astype(np.float32)
    index = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(2 * m), 2 * m, 1, m, 4, faiss.METRIC_L2, 32)
    index.by_residual = False
    faiss.copy_array_to_vector(codebooks.ravel(), index.pq.centroids)
    index.quantizer.add(np.zeros((1, 2 * m), np.float32))
    index.is_trained = True
    index.add(x)
    codes = index.pq.compute_codes(x)  # faiss's 4-bit row codes: pq4_pack's layout
    np.testing.assert_array_equal(pq4_pack(pq4_unpack(codes, m)), codes)
    lists = faiss.downcast_InvertedLists(index.invlists)
    blocks = pq4_blocks(codes)
    theirs = faiss.rev_swig_ptr(lists.get_codes(0), blocks.size)
    np.testing.assert_array_equal(blocks.ravel(), theirs)


def _real_case(rng, m=16, dim=32, sizes=(200, 3, 0, 57, 120, 33)):
    train = rng.normal(size=(2000, dim)).astype(np.float32)
    codebooks = pq_train(train, m, nbits=4, iters=3, device="cpu")
    lists = [(rng.permutation(10**6)[:n].astype(np.uint64),
              pq4_pack(pq_encode(rng.normal(size=(n, dim)).astype(np.float32), codebooks, device="cpu")),
              None if i % 2 else np.sort(rng.permutation(16)[:9])) for i, n in enumerate(sizes)]
    return codebooks, lists, rng.normal(size=(16, dim)).astype(np.float32)


@pytest.mark.parametrize("metric", METRICS)
def test_pq4_scan_runs_on_fast_scan_and_is_close_to_numpy(metric, monkeypatch):
    codebooks, lists, queries = _real_case(np.random.default_rng(4))
    params = {"pq_codebooks": codebooks}

    def refuse(*args, **kwargs):
        raise AssertionError("the numpy kernel ran")

    numpy_scan = kernels.scan._scan_lists_numpy
    monkeypatch.setattr(kernels.scan, "_scan_lists_numpy", refuse)
    fast = scan_lists(queries, lists, 10, codec="pq4", params=params, metric=metric)
    again = scan_lists(queries, lists, 10, codec="pq4", params=params, metric=metric)  # from the kept slots
    monkeypatch.setattr(kernels.scan, "_scan_lists_numpy", numpy_scan)
    with cpu_backend("numpy"):
        slow = scan_lists(queries, lists, 10, codec="pq4", params=params, metric=metric)
    np.testing.assert_array_equal(fast[0], again[0])
    np.testing.assert_array_equal(fast[1], again[1])
    assert np.mean([len(set(a) & set(b)) for a, b in zip(fast[0], slow[0], strict=True)]) >= 8
    assert_within_fast_scan_rounding(fast, queries, _decoded(lists, codebooks), codebooks, 10, metric)


def test_pq4_scanner_evicts_lists_and_keeps_a_scan_whole(monkeypatch):
    # slots for 3 lists and bytes for one: every scan of 6 lists refills them, never drops one it scans
    codebooks, lists, queries = _real_case(np.random.default_rng(5))
    params = {"pq_codebooks": codebooks}
    want = scan_lists(queries, lists, 10, codec="pq4", params=params, metric="l2")
    kernels.cpu_faiss._pq4_pool.clear()
    monkeypatch.setattr(kernels.cpu_faiss, "PQ4_SLOTS", 8)
    monkeypatch.setattr(kernels.cpu_faiss, "PQ4_SLOT_BYTES", 1)
    for _ in range(2):
        got = scan_lists(queries, lists, 10, codec="pq4", params=params, metric="l2")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    monkeypatch.setattr(kernels.cpu_faiss, "PQ4_SLOTS", 3)  # fewer slots than lists: the numpy kernel scans
    kernels.cpu_faiss._pq4_pool.clear()
    got = scan_lists(queries, lists, 10, codec="pq4", params=params, metric="l2")
    with cpu_backend("numpy"):
        assert_same_result(got, scan_lists(queries, lists, 10, codec="pq4", params=params, metric="l2"))
    kernels.cpu_faiss._pq4_pool.clear()


def test_pq4_train_and_encode_on_faiss_equal_numpy(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    codebooks = pq_train(x[:1000], 8, nbits=4, iters=2, device="cpu")
    assert codebooks.shape == (8, 16, 4)
    real = kernels.cpu_faiss.pq_encode
    ran = []
    monkeypatch.setattr(kernels.cpu_faiss, "pq_encode", lambda *a: ran.append(real(*a)) or ran[-1])
    fast = pq_encode(x, codebooks, device="cpu")
    assert ran and ran[0] is not None  # faiss encoded them
    with cpu_backend("numpy"):
        slow = pq_encode(x, codebooks, device="cpu")
    assert fast.max() < 16 and (fast != slow).mean() < 1e-3


def test_pq4_backend_is_listed(monkeypatch):
    assert kernels.cpu_faiss.backends()["scan_lists/pq4"] == "faiss"
    monkeypatch.setenv("KERNELS_CPU", "numpy")
    assert kernels.cpu_faiss.backends()["scan_lists/pq4"] == "numpy"


def test_pq4_scanner_keeps_no_object_alive():
    # the slots hold the lists' arrays weakly: an object the executor's cache lets go is freed
    import gc
    import weakref

    codebooks, lists, queries = _real_case(np.random.default_rng(7))
    watched = [weakref.ref(codes) for _, codes, _ in lists]
    scan_lists(queries, lists, 10, codec="pq4", params={"pq_codebooks": codebooks}, metric="l2")
    del lists
    gc.collect()
    assert all(ref() is None for ref in watched)


def test_pq4_scans_from_many_threads_agree(monkeypatch):
    # scans running at once each take a scanner of their own: none changes a faiss index another searches
    # (with room for one list, every scan refills its scanner's slots)
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(kernels.cpu_faiss, "PQ4_SLOT_BYTES", 1)
    kernels.cpu_faiss._pq4_pool.clear()
    codebooks, lists, queries = _real_case(np.random.default_rng(8))
    params = {"pq_codebooks": codebooks}
    want = scan_lists(queries, lists, 10, codec="pq4", params=params, metric="dot")
    fresh = [[(ids.copy(), codes.copy(), rows) for ids, codes, rows in lists] for _ in range(4)]  # new slots too

    def scan(i: int):
        return scan_lists(queries, fresh[i % 4] if i % 2 else lists, 10, codec="pq4", params=params, metric="dot")

    with ThreadPoolExecutor(8) as pool:
        for got in pool.map(scan, range(64)):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    kernels.cpu_faiss._pq4_pool.clear()


def test_pq4_lists_named_by_keys_are_packed_once(monkeypatch):
    # lists read again as new arrays (an object decoded from a disk tier on every access) keep their slots
    # under the keys the caller names them by; without keys every new array is packed anew
    import kernels.pq

    codebooks, lists, queries = _real_case(np.random.default_rng(9))
    params = {"pq_codebooks": codebooks}
    packed = []
    real = kernels.pq.pq4_blocks
    monkeypatch.setattr(kernels.pq, "pq4_blocks", lambda codes: packed.append(1) or real(codes))
    keys = [f"t/objects/{i}.bin" for i in range(len(lists))]
    scanned = sum(1 for ids, _, rows in lists if len(ids) and (rows is None or len(rows)))
    first = scan_lists(queries, lists, 10, codec="pq4", params=params, metric="l2", keys=keys)
    again = [(ids.copy(), codes.copy(), rows) for ids, codes, rows in lists]
    second = scan_lists(queries, again, 10, codec="pq4", params=params, metric="l2", keys=keys)
    assert len(packed) == scanned
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    scan_lists(queries, [(ids.copy(), codes.copy(), rows) for ids, codes, rows in lists], 10, codec="pq4",
               params=params, metric="l2")
    assert len(packed) == 2 * scanned
    with pytest.raises(ValueError, match="keys for"):
        scan_lists(queries, lists, 10, codec="pq4", params=params, metric="l2", keys=keys[:-1])
