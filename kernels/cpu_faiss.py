"""The CPU kernels that run on faiss, where faiss was measured faster than numpy (see `OPS`).

Each function here keeps the public contract of the kernel it stands in for: the metrics as Lance defines
them (l2 squared, cosine 1 - cos, dot 1 - q.x), float32 results, and the deterministic (distance, id)
order. faiss keeps its heaps in its own order and breaks ties arbitrarily, so every top-k here asks faiss
for one entry more than it needs, orders what comes back by (distance, id), and hands a row back to the
numpy kernel when a tie straddles the kth place (then only the numpy kernel knows which of the tied rows
win). faiss compares with NaN like numpy's heaps do not, so a query with a NaN or infinity goes to the
numpy kernel as well; the rows scanned must be finite (the appliance refuses other vectors at insert).

`KERNELS_CPU` (`auto`, the default, or `numpy`) lets a process turn faiss off for every op, for a
comparison or when a faiss build misbehaves; `python -m kernels info` shows what each op uses.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from types import ModuleType

import numpy as np

OPS: dict[str, tuple[str, str]] = {
    # op: (CPU backend, why), decided by `bench/bench_kernels.py --quick` at 1 thread on debian-minilm
    "probe": ("faiss", "IndexFlat over the centroids, cached per centroid array: 1 query x 256 centroids "
                       "0.012 ms against 0.108 ms (most of numpy's time was its general top-k)"),
    "kmeans": ("faiss", "faiss.Clustering from the same seeded rows: 30,000 x 384, 256 centroids, 5 iterations "
                        "0.38 s against 1.22 s; with a tolerance (the default 1e-4), one iteration per call"),
    "scan_lists/flat": ("faiss", "knn per probed list on the cached arrays (no copy), one merge of the heaps"),
    "assign": ("faiss", "knn k=1 (BLAS sgemm and a fused nearest-of-block pass; ties to the lower label as numpy's "
                        "argmin): 262,144 x 128 to 1,000 centroids 0.97 s of CPU against 1.37-1.60 s (numpy makes "
                        "four passes over the distance block); level at 61,666 x 384 to 256 (0.16 s vs 0.17 s); its "
                        "OpenMP threads follow the calling thread's budget (kernels.thread_budget), numpy's BLAS "
                        "a per-process one"),
    "scan_lists/pq": ("faiss", "IVF-PQ list scanner (no residuals) on the lists' own codes, one lookup table per "
                               "query: 1 query x 32 lists of ~234 rows, m 48, 0.47 ms against 14.1 ms"),
    "scan_lists/pq4": ("faiss", "IVF-PQ fast-scan (4-bit codes, SIMD sums of uint8 lookup tables) on each list's "
                                "codes, packed once into its block layout and kept per list object: debian-minilm, "
                                "1 query x 32 lists of ~280 rows, m 96, k 100, 0.19 ms against 14.2 ms; pq (m 48, "
                                "8 bits, as many bytes) 0.44 ms, recall@10 after refine 0.949 both"),
    "scan_lists/sq8": ("faiss", "IVF-SQ QT_8bit list scanner (vmin = lo - scale/2, vdiff = 255 scale) on the "
                                "lists' own codes: 1 query x 32 lists, dim 384, dot 0.56 ms against 1.33 ms, l2 "
                                "0.69 against 4.75 ms"),
    "scan_lists/fp16": ("numpy", "decode + one matrix product per list"),
    "search_block": ("numpy", "exact top-k over a fragment already beats faiss IndexFlat.search"),
    "topk/merge_topk": ("numpy", "deterministic selection; faiss's heaps break ties arbitrarily"),
    "pq_encode": ("faiss", "ProductQuantizer.compute_distance_tables + argmin (ties to the lower code): "
                           "30,000 x 384, m 48 0.41 s against 1.05 s (faiss's compute_codes, 0.28 s, breaks ties "
                           "by SIMD lane)"),
    "pq_train": ("faiss", "k-means per sub-space through kmeans (faiss.Clustering), seeded per sub-space: "
                          "16,384 x 384, m 48, 10 iterations 1.01 s against ProductQuantizer.train's 0.93 s"),
    "pq_distances": ("numpy", "a [nq, n] matrix for callers that want every distance; scans use scan_lists/pq"),
}
"""The CPU backend of every op, and the measurement that decided it."""


@functools.cache
def faiss_module() -> ModuleType | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def enabled(op: str) -> bool:
    """Whether `op` runs on faiss in this process: it is a faiss op, faiss imports, and KERNELS_CPU allows it."""
    if (os.environ.get("KERNELS_CPU") or "auto").lower() == "numpy":
        return False
    return OPS.get(op, ("numpy",))[0] == "faiss" and faiss_module() is not None


def backends() -> dict[str, str]:
    """op -> the backend it uses in this process on the CPU ('faiss' or 'numpy')."""
    return {op: "faiss" if enabled(op) else "numpy" for op in OPS}


def _ptr(array: np.ndarray):  # noqa: ANN202 - a SWIG pointer
    return faiss_module().swig_ptr(array)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return np.ascontiguousarray(x / np.where(norms > 0, norms, np.float32(1)), dtype=np.float32)


def _distances(raw: np.ndarray, metric: str) -> np.ndarray:
    """faiss's scores (squared l2, or inner products) as the kernels' distances."""
    if metric == "l2":
        return np.maximum(raw, np.float32(0), out=raw)
    return np.subtract(np.float32(1), raw, out=raw)


def _order(distances: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row, the order of the columns by (distance, NaN last; id)."""
    return np.lexsort((ids, distances), axis=-1)


# ------------------------------------------------------------------------------------------------ probe

_PROBE_CACHE_SIZE = 16
_probe_indexes: OrderedDict[tuple[int, str], tuple[np.ndarray, object]] = OrderedDict()
_probe_lock = threading.Lock()


def _centroid_index(centroids: np.ndarray, metric: str):  # noqa: ANN202 - a faiss index
    """A flat faiss index over `centroids`, cached by the array's identity (the planner keeps one array per
    index version; the cache holds a reference, so an id is never reused while cached). The array must not
    be modified in place after its first probe."""
    key = (id(centroids), metric)
    with _probe_lock:
        hit = _probe_indexes.get(key)
        if hit is not None and hit[0] is centroids:
            _probe_indexes.move_to_end(key)
            return hit[1]
    faiss = faiss_module()
    data = np.ascontiguousarray(centroids, dtype=np.float32)
    index = faiss.IndexFlatL2(data.shape[1]) if metric == "l2" else faiss.IndexFlatIP(data.shape[1])
    index.add(_unit(data) if metric == "cosine" else data)
    with _probe_lock:
        _probe_indexes[key] = (centroids, index)
        while len(_probe_indexes) > _PROBE_CACHE_SIZE:
            _probe_indexes.popitem(last=False)
    return index


def probe(queries: np.ndarray, centroids: np.ndarray, width: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(nearest `width` centroids int64 [nq, width] in (distance, id) order, rows that need the numpy kernel).

    The second array lists the rows where faiss cannot decide: a tie at the width-th place, or a query that
    is not finite; their first array rows are to be replaced."""
    nlist = len(centroids)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if len(q) == 0:
        return np.empty((0, width), np.int64), np.empty(0, np.intp)
    finite = np.isfinite(q).all(axis=1)
    asked = min(width + 1, nlist)
    raw, labels = _centroid_index(centroids, metric).search(_unit(q) if metric == "cosine" else q, asked)
    distances = _distances(raw, metric)
    order = _order(distances, labels)
    distances = np.take_along_axis(distances, order, axis=1)
    labels = np.take_along_axis(labels, order, axis=1)
    unsure = ~finite
    if asked > width:
        unsure |= distances[:, width - 1] == distances[:, width]
    return labels[:, :width], np.flatnonzero(unsure)


# ----------------------------------------------------------------------------------------------- kmeans


def kmeans(data: np.ndarray, initial: np.ndarray, iters: int, metric: str, tol: float = 0.0) -> np.ndarray | None:
    """Lloyd's k-means by faiss.Clustering from `initial` (the rows `kernels.kmeans` picks with its seed):
    float32 [k, dim], or None when faiss cannot take the input (fewer rows than centroids, or values that
    are not finite) and the numpy kernel is to run. `data` is already unit rows for cosine; cosine is
    spherical (centroids renormalised after each update) and assigns by inner product, as does dot. An
    emptied cluster is refilled by splitting a large one (faiss's rule; the numpy kernel moves the
    farthest row instead). With `tol` > 0, faiss runs one iteration per call (the same arithmetic as one
    call of `iters`) and stops, as the numpy kernel does, at the first iteration whose objective (the sum
    of distances to the nearest centroid, before its update) is within `tol` (relative) of the previous
    one, returning the centroids that objective was measured on."""
    k, dim = initial.shape
    if len(data) < k or not np.isfinite(data).all():
        return None
    faiss = faiss_module()
    clustering = faiss.Clustering(dim, k)
    clustering.niter = iters
    clustering.seed = 1234  # only used to split clusters that empty out; the initial rows come from `seed`
    clustering.spherical = metric == "cosine"
    clustering.max_points_per_centroid = max(len(data) // k + 1, 1 << 30)  # every row: callers sample
    clustering.min_points_per_centroid = 1  # no warning for small sets either
    faiss.copy_array_to_vector(np.ascontiguousarray(initial, dtype=np.float32).ravel(), clustering.centroids)
    index = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    rows = np.ascontiguousarray(data, dtype=np.float32)
    if tol <= 0:
        clustering.train(rows, index)
        return faiss.vector_to_array(clustering.centroids).reshape(k, dim).astype(np.float32, copy=False)
    clustering.niter = 1
    previous = None
    for _ in range(iters):
        before = faiss.vector_to_array(clustering.centroids)
        clustering.train(rows, index)
        stats = clustering.iteration_stats
        score = float(stats.at(stats.size() - 1).obj)
        objective = score if metric == "l2" else len(rows) - score  # inner products -> sum of (1 - q.x)
        if previous is not None and abs(previous - objective) <= tol * abs(previous):
            return before.reshape(k, dim).astype(np.float32, copy=False)
        previous = objective
    return faiss.vector_to_array(clustering.centroids).reshape(k, dim).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------- assign


def assign(x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Nearest centroid of every row: (labels int64 [n], distances float32 [n]), or None when a value is not
    finite (the numpy kernel decides those). faiss's k=1 search keeps the first of equal distances in
    centroid order, so a tie goes to the lower label as with numpy's argmin; cosine searches unit rows by
    inner product. faiss blocks the rows and centroids itself, so memory stays a block's distances."""
    rows = np.ascontiguousarray(x, dtype=np.float32)
    cents = np.ascontiguousarray(centroids, dtype=np.float32)
    if not (np.isfinite(rows).all() and np.isfinite(cents).all()):
        return None
    if metric == "cosine":
        rows, cents = _unit(rows), _unit(cents)
    faiss = faiss_module()
    n, dim = rows.shape
    raw = np.empty((n, 1), np.float32)
    labels = np.empty((n, 1), np.int64)
    search = faiss.knn_L2sqr if metric == "l2" else faiss.knn_inner_product
    search(_ptr(rows), _ptr(cents), dim, n, len(cents), 1, _ptr(raw), _ptr(labels))
    return labels[:, 0], _distances(raw[:, 0], metric)


# ------------------------------------------------------------------------------------------- list scans


def scan_flat_lists(queries: np.ndarray, lists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                    k: int, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top k over float32 lists (ids, vectors, the query rows that scan the list or None for all), for
    metric l2 or dot: (ids uint64 [nq, k], distances float32 [nq, k], rows that need the numpy kernel).

    faiss's knn keeps a heap of k + 1 per list and query, on the list's own array (no copy); the heaps of
    all lists go into one [nq, lists x (k + 1)] matrix and are ordered by (distance, id) at once. A row is
    exact unless some list's heap was full and its last entry ties with the row's kth distance: then a
    tied row of that list may have been left out, and the row is listed for the numpy kernel."""
    faiss = faiss_module()
    nq, dim = queries.shape
    width = k + 1
    # Heaps land in [list, query, k + 1] buffers: a list every query scans is searched straight into its
    # contiguous slice; the others through a small buffer. Unsearched slots keep label -1 (no row).
    raw = np.empty((len(lists), nq, width), np.float32)
    found = np.full((len(lists), nq, width), -1, np.int64)
    search = faiss.knn_L2sqr if metric == "l2" else faiss.knn_inner_product
    q_ptr = _ptr(queries)
    for j, (_, vectors, rows) in enumerate(lists):
        if rows is None:
            search(q_ptr, _ptr(vectors), dim, nq, len(vectors), width, _ptr(raw[j]), _ptr(found[j]))
            continue
        q = np.ascontiguousarray(queries[rows])
        part_raw, part_found = np.empty((len(q), width), np.float32), np.empty((len(q), width), np.int64)
        search(_ptr(q), _ptr(vectors), dim, len(q), len(vectors), width, _ptr(part_raw), _ptr(part_found))
        raw[j, rows], found[j, rows] = part_raw, part_found
    sizes = np.array([len(ids) for ids, _, _ in lists], np.int64)
    offsets = np.cumsum(sizes) - sizes
    all_ids = np.concatenate([ids for ids, _, _ in lists])
    real = found >= 0
    distances = _distances(raw, metric)
    distances[~real] = np.nan
    labels = np.where(real, all_ids[np.where(real, found + offsets[:, None, None], 0)], np.iinfo(np.uint64).max)
    # a full heap's worst distance, per query and list (NaN where the heap was not full)
    last = np.where((sizes >= width)[:, None], distances[:, :, -1], np.float32(np.nan)).T
    cand_d = distances.transpose(1, 0, 2).reshape(nq, -1)
    cand_i = labels.transpose(1, 0, 2).reshape(nq, -1)
    order = _order(cand_d, cand_i)[:, :k]
    out_d = np.take_along_axis(cand_d, order, axis=1)
    out_i = np.take_along_axis(cand_i, order, axis=1)
    if out_d.shape[1] < k:  # fewer candidates than k in all: only with no lists
        pad = k - out_d.shape[1]
        out_d = np.concatenate([out_d, np.full((nq, pad), np.nan, np.float32)], axis=1)
        out_i = np.concatenate([out_i, np.full((nq, pad), np.iinfo(np.uint64).max, np.uint64)], axis=1)
    unsure = np.zeros(nq, bool)
    if k:
        unsure = (last <= out_d[:, k - 1 : k]).any(axis=1)  # NaN (no full heap, or kth not real) compares False
    padding = np.isnan(out_d)
    out_i[padding], out_d[padding] = np.iinfo(np.uint64).max, np.inf
    return out_i, out_d, np.flatnonzero(unsure)


# ------------------------------------------------------------------------------ coded (SQ8, PQ) list scans

_CODED_CACHE_SIZE = 8
_coded_local = threading.local()  # per thread, as faiss objects are not shared between threads here


@atexit.register
def _drop_coded_indexes() -> None:
    """Free this thread's cached indexes before the interpreter tears faiss's module down (SWIG would
    otherwise report the objects it meets without their destructor)."""
    cache = getattr(_coded_local, "indexes", None)
    if cache is not None:
        cache.clear()


def _coded_index(codec: str, params: Mapping[str, np.ndarray], dim: int, metric: str):  # noqa: ANN202
    """An IVF index without residuals holding `codec`'s trained parameters, cached per thread by the
    identity of the parameter arrays (the executors keep one array per index version and never modify
    it), or None when faiss's codec cannot stand for ours (PQ other than 8 bits per code, shapes that do
    not match)."""
    faiss = faiss_module()
    arrays = (params["pq_codebooks"],) if codec == "pq" else (params["sq8_lo"], params["sq8_scale"])
    key = (codec, metric, dim, *map(id, arrays))
    cache: OrderedDict = getattr(_coded_local, "indexes", None)
    if cache is None:
        cache = _coded_local.indexes = OrderedDict()
    hit = cache.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], arrays, strict=True)):
        cache.move_to_end(key)
        return hit[1]
    faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    quantizer = faiss.IndexFlatL2(dim)  # never searched: the caller says which lists each query scans
    if codec == "pq":
        codebooks = np.ascontiguousarray(arrays[0], dtype=np.float32)
        if codebooks.ndim != 3 or codebooks.shape[1] != 256 or codebooks.shape[0] * codebooks.shape[2] != dim:
            return None
        index = faiss.IndexIVFPQ(quantizer, dim, 1, codebooks.shape[0], 8, faiss_metric)
        faiss.copy_array_to_vector(codebooks.ravel(), index.pq.centroids)
    else:
        lo, scale = (np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays)
        if len(lo) != dim or len(scale) != dim:
            return None
        # faiss's QT_8bit decodes vmin + (code + 0.5) / 255 * vdiff, which is lo + code * scale for these:
        trained = np.concatenate([lo - scale / 2, scale * 255]).astype(np.float32)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, 1, faiss.ScalarQuantizer.QT_8bit, faiss_metric)
        faiss.copy_array_to_vector(trained, index.sq.trained)
    index.by_residual = False
    index.is_trained = True
    cache[key] = (arrays, index, quantizer)
    while len(cache) > _CODED_CACHE_SIZE:
        cache.popitem(last=False)
    return index


def scan_coded_lists(queries: np.ndarray, lists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                     k: int, codec: str, params: Mapping[str, np.ndarray], metric: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Top k over SQ8 or PQ lists (ids, codes, the query rows that scan the list or None for all), metric
    l2 or dot: (ids uint64 [nq, k], distances float32 [nq, k], rows that need the numpy kernel), or None
    when faiss's codec cannot stand for ours.

    faiss's IVF list scanner (of an index without residuals that holds our trained parameters) runs on the
    lists' own arrays, with no copy: per query, `set_query` computes what the codec needs once (PQ: one
    lookup table, not one per list), then `scan_codes` feeds each of its lists into one heap of k + 1 with
    faiss's SIMD distance code. A row is exact unless its kth and (k + 1)th distances tie, and then it is
    listed for the numpy kernel."""
    nq, dim = queries.shape
    index = _coded_index(codec, params, dim, metric)
    if index is None:
        return None
    code_size = index.code_size
    width = k + 1
    per_query: list[list[int]] = [[] for _ in range(nq)]
    pointers = []
    for j, (ids, codes, rows) in enumerate(lists):
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or codes.shape[1] != code_size:
            return None
        ids = np.ascontiguousarray(ids).view(np.int64)
        pointers.append((len(ids), _ptr(codes), _ptr(ids), codes, ids))  # the arrays outlive the pointers
        for r in range(nq) if rows is None else rows.tolist():
            per_query[r].append(j)
    raw = np.full((nq, width), np.inf if metric == "l2" else -np.inf, np.float32)  # empty heaps
    labels = np.full((nq, width), -1, np.int64)
    # faiss hands the scanner over without a Python owner, and making its proxy the owner breaks SWIG's
    # type table when it is freed: it is deleted here explicitly (otherwise each scan leaked its tables).
    scanner = index.get_InvertedListScanner(False, None, None)
    try:
        for r, mine in enumerate(per_query):
            if not mine:
                continue
            scanner.set_query(_ptr(queries[r]))
            row_d, row_i = _ptr(raw[r]), _ptr(labels[r])
            for j in mine:
                n, codes_ptr, ids_ptr = pointers[j][:3]
                scanner.set_list(j, 0.0)
                scanner.scan_codes(n, codes_ptr, ids_ptr, row_d, row_i, width)
    finally:
        faiss_module()._swigfaiss.delete_InvertedListScanner(scanner)
    real = np.isfinite(raw)
    distances = _distances(raw, metric)
    distances[~real] = np.nan
    found = labels.view(np.uint64)
    order = _order(distances, found)
    distances = np.take_along_axis(distances, order, axis=1)
    found = np.take_along_axis(found, order, axis=1)
    unsure = distances[:, k - 1] == distances[:, k]  # NaN (fewer rows than k + 1) compares False
    out_d, out_i = distances[:, :k].copy(), found[:, :k].copy()
    padding = np.isnan(out_d)
    out_i[padding], out_d[padding] = np.iinfo(np.uint64).max, np.inf
    return out_i, out_d, np.flatnonzero(unsure)


# ------------------------------------------------------------------------------------------- PQ encoding


_ENCODE_TABLE_FLOATS = 1 << 22
"""Distance-table entries per block of rows encoded (16 MiB)."""


def pq_encode(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray | None:
    """uint8 codes [n, m] from our codebooks [m, 256 or 16, d/m] (faiss keeps its centroids in that layout), or
    None when faiss cannot take the input (values that are not finite, where the nearest is undefined).

    faiss.ProductQuantizer.compute_distance_tables gives every sub-vector's squared distance to each of its
    256 sub-centroids, computed directly ((x - c)^2, where numpy expands it), a block of rows at a time;
    numpy's argmin keeps the first of equal distances, so ties go to the lower code as in the numpy kernel.
    (faiss's own compute_codes takes the SIMD nearest, which breaks ties by lane: not the lower code.)"""
    m, ksub, sub = codebooks.shape
    data = np.ascontiguousarray(x, dtype=np.float32)
    if ksub not in (16, 256) or not np.isfinite(data).all() or not np.isfinite(codebooks).all():
        return None
    faiss = faiss_module()
    pq = faiss.ProductQuantizer(m * sub, m, ksub.bit_length() - 1)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(), pq.centroids)
    codes = np.empty((len(data), m), np.uint8)
    block = max(1, _ENCODE_TABLE_FLOATS // (m * ksub))
    tables = np.empty((min(block, len(data)), m, ksub), np.float32)
    for start in range(0, len(data), block):
        rows = data[start : start + block]
        pq.compute_distance_tables(len(rows), _ptr(rows), _ptr(tables))
        codes[start : start + len(rows)] = tables[: len(rows)].argmin(axis=2)
    return codes


# ------------------------------------------------------------------------------- PQ4 fast-scan list scans

PQ4_SLOTS = 4096
"""Lists one fast-scan scanner keeps in faiss's block layout (an executor's partition objects it scanned)."""
PQ4_SLOT_BYTES = 64 * 2**20
"""Most bytes of block-layout codes one fast-scan scanner keeps (the least recently scanned lists go first)."""
PQ4_EXTRA = 16
"""Rows the fast-scan keeps beyond k, so that rows tied at the kth place are ordered by id unless more than
this many tie."""


class _Pq4Scanner:
    """A faiss IndexIVFPQFastScan (no residuals) holding our 4-bit codebooks, whose inverted lists are slots:
    each list scanned is packed into faiss's block layout once (`kernels.pq.pq4_blocks`) and kept in a slot
    with its ids, and later scans of the same object search it in place. A slot is found by the key the
    caller names the list by (an immutable object's key: however its arrays were read again, e.g. decoded
    from a disk tier on every access), or else by the identity of its code array (the executors never
    modify an object's arrays). Arrays are only weakly referenced: an identity slot serves while they live
    (an id reused by a later array does not match a dead reference), and no slot keeps an object the
    executor's cache has let go; slots go, least recently scanned first, when the bounds need their room."""

    def __init__(self, codebooks: np.ndarray, metric: str) -> None:
        faiss = faiss_module()
        m, _, sub = codebooks.shape
        self.codebooks = codebooks
        self.quantizer = faiss.IndexFlatL2(m * sub)  # never searched: the caller says which lists each query scans
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.IndexIVFPQFastScan(self.quantizer, m * sub, PQ4_SLOTS, m, 4, faiss_metric, 32)
        self.index.by_residual = False
        faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(), self.index.pq.centroids)
        self.index.is_trained = True
        self.lists = faiss.downcast_InvertedLists(self.index.invlists)
        # id(codes) -> (slot, codes, ids, bytes), least recently scanned first
        self.slots: OrderedDict[Hashable, tuple[int, weakref.ref, weakref.ref, int]] = OrderedDict()
        self.free = list(range(PQ4_SLOTS - 1, -1, -1))
        self.held = 0

    def slot(self, ids: np.ndarray, codes: np.ndarray, scanning: set[int], key: Hashable = None) -> int:
        """The slot holding (ids, codes), under the caller's `key` or else the arrays' identity, filled now if
        need be; -1 when every slot is in `scanning` (the slots of the scan under way, never evicted: one
        scan may exceed PQ4_SLOT_BYTES, not PQ4_SLOTS)."""
        from kernels.pq import pq4_blocks

        name = id(codes) if key is None else ("key", key)
        hit = self.slots.get(name)
        if hit is not None and (key is not None or (hit[1]() is codes and hit[2]() is ids)):
            self.slots.move_to_end(name)
            return hit[0]
        if hit is not None:  # an evicted array's id, reused, or the codes with other ids
            self._evict(name)
        blocks = pq4_blocks(codes)
        while self.slots and (not self.free or self.held + blocks.nbytes > PQ4_SLOT_BYTES):
            oldest = next(iter(self.slots))
            if self.slots[oldest][0] in scanning:
                break
            self._evict(oldest)
        if not self.free:
            return -1
        slot = self.free.pop()
        self.lists.add_entries(slot, len(codes), _ptr(np.ascontiguousarray(ids).view(np.int64)), _ptr(blocks))
        self.slots[name] = (slot, weakref.ref(codes), weakref.ref(ids), blocks.nbytes)
        self.held += blocks.nbytes
        return slot

    def _evict(self, key: Hashable) -> None:
        slot, _, _, size = self.slots.pop(key)
        self.lists.resize(slot, 0)
        self.free.append(slot)
        self.held -= size


_pq4_pool: dict[tuple[int, str], list[_Pq4Scanner]] = {}
_pq4_lock = threading.Lock()
_PQ4_POOL_KEYS = 8


@atexit.register
def _drop_pq4_scanners() -> None:
    with _pq4_lock:
        _pq4_pool.clear()


@contextlib.contextmanager
def _pq4_scanner(codebooks: np.ndarray, metric: str) -> Iterator[_Pq4Scanner]:
    """A scanner for these codebooks to use alone: one from the pool (scans running at once each take their
    own, so a faiss index is never changed while another thread searches it), or a new one. The pool keeps
    the scanners of the last _PQ4_POOL_KEYS codebook arrays (one per index version an executor serves)."""
    key = (id(codebooks), metric)
    with _pq4_lock:
        idle = _pq4_pool.get(key, [])
        while idle and idle[-1].codebooks is not codebooks:  # an older array's id, reused
            idle.pop()
        scanner = idle.pop() if idle else None
    if scanner is None:
        scanner = _Pq4Scanner(codebooks, metric)
    try:
        yield scanner
    finally:
        with _pq4_lock:
            _pq4_pool.setdefault(key, []).append(scanner)
            _pq4_pool[key] = _pq4_pool.pop(key)  # most recently used last
            while len(_pq4_pool) > _PQ4_POOL_KEYS:
                _pq4_pool.pop(next(iter(_pq4_pool)))


def scan_pq4_lists(queries: np.ndarray, lists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                   k: int, codebooks: np.ndarray, metric: str, keys: Sequence[Hashable] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Top k over 4-bit PQ lists (ids, `pq4_pack`ed codes, the query rows that scan the list or None for all),
    metric l2 or dot: (ids uint64 [nq, k], distances float32 [nq, k], rows that need the numpy kernel), or
    None when faiss cannot take the input (codebooks other than [m, 16, d/m], codes of another width).
    `keys` (one a list, or None): the lists' lasting names, by which their prepared blocks are found again.

    faiss's fast-scan sums the query's lookup tables rounded to uint8 (per query: a = 255 / the widest
    sub-space's spread of table entries, b the sum of each sub-space's least entry; an entry is off by at
    most 0.5 / a) with SIMD over blocks of 32 rows, keeps the k + PQ4_EXTRA best of those sums and returns
    b + sum / a. So a distance returned is its row's ADC distance (`pq_distances`) within m / (2a), rows
    come in (distance, id) order, and a row left out is nearer than the kth by at most m / a (the property
    tests hold the scan to these bounds); the numpy kernel computes the ADC distances exactly."""
    nq, dim = queries.shape
    m, ksub, sub = codebooks.shape
    if ksub != 16 or m * sub != dim or not np.isfinite(codebooks).all():
        return None
    width = (m + 1) // 2
    slots = np.empty(len(lists), np.int64)
    with _pq4_scanner(codebooks, metric) as scanner:
        held, scanning = scanner.slots, set()
        for j, (ids, codes, _) in enumerate(lists):
            key = None if keys is None else keys[j]
            name = id(codes) if key is None else ("key", key)
            hit = held.get(name)
            if hit is not None and (key is not None or (hit[1]() is codes and hit[2]() is ids)):
                held.move_to_end(name)
                slot = hit[0]
            else:
                if codes.ndim != 2 or codes.shape[1] != width or codes.dtype != np.uint8:
                    return None
                slot = scanner.slot(ids, codes, scanning, key)
                if slot < 0:
                    return None
            slots[j] = slot
            scanning.add(slot)
        sizes = np.array([len(ids) for ids, _, _ in lists], np.int64)
        if all(rows is None for _, _, rows in lists):
            assigned = np.broadcast_to(slots, (nq, len(slots)))
            reach = np.full(nq, sizes.sum())
        else:  # each query's slots, in list order, padded with -1 (no list)
            rows_of = [np.arange(nq) if rows is None else rows for _, _, rows in lists]
            query = np.concatenate(rows_of)
            order = np.argsort(query, kind="stable")
            counts = [len(rows) for rows in rows_of]
            query, slot_of = query[order], np.repeat(slots, counts)[order]
            reach = np.bincount(query, weights=np.repeat(sizes, counts)[order], minlength=nq)
            rank = np.arange(len(query)) - np.searchsorted(query, np.arange(nq))[query]
            assigned = np.full((nq, int(rank.max(initial=0)) + 1), -1, np.int64)
            assigned[query, rank] = slot_of
        assigned = np.ascontiguousarray(assigned)
        scanner.index.nprobe = assigned.shape[1]
        raw, labels = scanner.index.search_preassigned(queries, k + PQ4_EXTRA, assigned,
                                                       np.zeros(assigned.shape, np.float32))
    real = labels != -1  # ids from 2**63 up are negative as faiss's int64 labels
    distances = _distances(raw, metric)
    # faiss's tables are undefined when every entry is equal (a = 255 / 0): its sums come back NaN, and such
    # rows, like any that come back short of the rows they reach, go to the numpy kernel
    unsure = (real & ~np.isfinite(distances)).any(axis=1) | (real.sum(axis=1) < np.minimum(reach, k))
    distances[~real] = np.nan
    found = labels.view(np.uint64)
    order = _order(distances, found)[:, :k]
    out_d = np.take_along_axis(distances, order, axis=1)
    out_i = np.take_along_axis(found, order, axis=1)
    padding = np.isnan(out_d)
    out_i[padding], out_d[padding] = np.iinfo(np.uint64).max, np.inf
    return out_i, out_d, np.flatnonzero(unsure)
