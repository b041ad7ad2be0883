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
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
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
    """uint8 codes [n, m] from our codebooks [m, 256, d/m] (faiss keeps its centroids in that layout), or
    None when faiss cannot take the input (values that are not finite, where the nearest is undefined).

    faiss.ProductQuantizer.compute_distance_tables gives every sub-vector's squared distance to each of its
    256 sub-centroids, computed directly ((x - c)^2, where numpy expands it), a block of rows at a time;
    numpy's argmin keeps the first of equal distances, so ties go to the lower code as in the numpy kernel.
    (faiss's own compute_codes takes the SIMD nearest, which breaks ties by lane: not the lower code.)"""
    m, ksub, sub = codebooks.shape
    data = np.ascontiguousarray(x, dtype=np.float32)
    if ksub != 256 or not np.isfinite(data).all() or not np.isfinite(codebooks).all():
        return None
    faiss = faiss_module()
    pq = faiss.ProductQuantizer(m * sub, m, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(), pq.centroids)
    codes = np.empty((len(data), m), np.uint8)
    block = max(1, _ENCODE_TABLE_FLOATS // (m * ksub))
    tables = np.empty((min(block, len(data)), m, ksub), np.float32)
    for start in range(0, len(data), block):
        rows = data[start : start + block]
        pq.compute_distance_tables(len(rows), _ptr(rows), _ptr(tables))
        codes[start : start + len(rows)] = tables[: len(rows)].argmin(axis=2)
    return codes
