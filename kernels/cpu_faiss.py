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

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from types import ModuleType

import numpy as np

OPS: dict[str, tuple[str, str]] = {
    # op: (CPU backend, why), decided by `bench/bench_kernels.py --quick` at 1 thread on debian-minilm
    "probe": ("faiss", "IndexFlat over the centroids, cached per centroid array: 1 query x 256 centroids "
                       "0.012 ms against 0.108 ms (most of numpy's time was its general top-k)"),
    "kmeans": ("faiss", "faiss.Clustering from the same seeded rows: 30,000 x 384, 256 centroids, 5 iterations "
                        "0.38 s against 1.22 s"),
    "scan_lists/flat": ("faiss", "knn per probed list on the cached arrays (no copy), one merge of the heaps"),
    "assign": ("numpy", "BLAS sgemm + argmin is level with faiss's IndexFlat k=1 search (0.17 s vs 0.16 s for "
                        "61,666 x 384 to 256), and keeps ties to the lower label exact"),
    "scan_lists/sq8,fp16,pq": ("numpy", "one matrix product (SQ8: on the codes) or lookup-table gather per "
                                        "list; faiss has no batched scan of codes it does not own"),
    "search_block": ("numpy", "exact top-k over a fragment already beats faiss IndexFlat.search"),
    "topk/merge_topk": ("numpy", "deterministic selection; faiss's heaps break ties arbitrarily"),
    "pq_train/pq_encode/pq_distances": ("numpy", "pq_train runs k-means per sub-space, so on faiss through "
                                                 "kmeans; encoding keeps ties to the lower code exact"),
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


def kmeans(data: np.ndarray, initial: np.ndarray, iters: int, metric: str) -> np.ndarray | None:
    """Lloyd's k-means by faiss.Clustering from `initial` (the rows `kernels.kmeans` picks with its seed):
    float32 [k, dim], or None when faiss cannot take the input (fewer rows than centroids, or values that
    are not finite) and the numpy kernel is to run. `data` is already unit rows for cosine; cosine is
    spherical (centroids renormalised after each update) and assigns by inner product, as does dot. An
    emptied cluster is refilled by splitting a large one (faiss's rule; the numpy kernel moves the
    farthest row instead)."""
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
    clustering.train(np.ascontiguousarray(data, dtype=np.float32), index)
    return faiss.vector_to_array(clustering.centroids).reshape(k, dim).astype(np.float32, copy=False)


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
