"""IVF building blocks: k-means training, assignment of vectors to centroids, and probing.

All three are written against the array module (numpy or cupy), so an indexer host with a GPU trains and
assigns there and every other host runs the same code on the CPU through BLAS. Distances follow the
metric definitions in `kernels.distance`: for cosine the centroids are kept unit-length (spherical
k-means), for dot they are plain means ranked by inner product.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from kernels import cpu_faiss
from kernels.backend import array_module, resolve, to_host
from kernels.distance import METRICS, pairwise_distances
from kernels.topk import topk

KMEANS_TOL = 1e-4
"""k-means stops when an iteration improves the objective by less than this fraction (Lance's default):
on clustered data that is after 8-10 iterations, where the last 10 of 20 changed it by under 0.01 %."""
ASSIGN_BLOCK_ROWS = 32_768
"""Rows per distance block when assigning, so memory is block x centroids, not rows x centroids."""


def _check(x: np.ndarray, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if np.ndim(x) != 2:
        raise ValueError(f"vectors must be a 2-D array [rows, dim], got shape {np.shape(x)}")


def _unit_rows(xp: ModuleType, x: np.ndarray) -> np.ndarray:
    norms = xp.sqrt(xp.einsum("ij,ij->i", x, x))[:, None]
    return x / xp.where(norms > 0, norms, np.float32(1))


def _assign(xp: ModuleType, x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    labels = xp.empty(len(x), dtype=np.int64)
    dists = xp.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), ASSIGN_BLOCK_ROWS):
        block = pairwise_distances(x[start : start + ASSIGN_BLOCK_ROWS], centroids, metric)
        # argmin keeps the first of equal distances, so a tie goes to the lower centroid number.
        nearest = xp.argmin(block, axis=1)
        labels[start : start + len(block)] = nearest
        dists[start : start + len(block)] = xp.take_along_axis(block, nearest[:, None], axis=1)[:, 0]
    return labels, dists


def _initial_centroids(xp: ModuleType, x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k distinct rows picked by `seed` (rows repeat only when there are fewer than k)."""
    n = len(x)
    rng = np.random.default_rng(seed)
    picks = rng.permutation(n)[:k] if n >= k else np.resize(rng.permutation(n), k)
    return x[xp.asarray(picks)].copy()


def _update(xp: ModuleType, x: np.ndarray, labels: np.ndarray, dists: np.ndarray, centroids: np.ndarray,
            metric: str) -> np.ndarray:
    """New centroids as cluster means. An emptied cluster takes the point farthest from its own
    centroid, so k stays k and the worst-served region gets a centroid (faiss splits clusters instead;
    this is simpler and deterministic)."""
    k, dim = centroids.shape
    sums = xp.zeros((k, dim), dtype=np.float64)
    xp.add.at(sums, labels, x.astype(np.float64))
    counts = xp.bincount(labels, minlength=k)
    updated = (sums / xp.maximum(counts, 1)[:, None]).astype(np.float32)
    empty = to_host(xp.nonzero(counts == 0)[0])
    if len(empty):
        # With fewer rows than empty clusters (k > n) the clusters left over keep their centroid.
        updated[xp.asarray(empty)] = centroids[xp.asarray(empty)]
        refill = empty[: len(x)]
        farthest = xp.argsort(-dists, kind="stable")[: len(refill)]
        updated[xp.asarray(refill)] = x[farthest]
    return _unit_rows(xp, updated) if metric == "cosine" else updated


def kmeans(x: np.ndarray, k: int, *, metric: str = "l2", iters: int = 20, seed: int = 0, tol: float = KMEANS_TOL,
           device: str | None = None) -> np.ndarray:
    """k centroids float32 [k, dim] of `x` by Lloyd's algorithm from `seed`-chosen rows, at most `iters`
    iterations: it stops at the first iteration whose objective (the sum of distances to the nearest
    centroid) is within `tol` (relative) of the previous iteration's, as Lance's k-means does (its
    tolerance is 1e-4 too), and returns the centroids of that objective; tol 0 runs every iteration.

    On the CPU this is faiss.Clustering from the same rows (`kernels.cpu_faiss.kmeans`), except where faiss
    cannot take the input; the array-module code below is the CUDA path and the CPU fallback.

    With fewer rows than k, rows are repeated as centroids: the extra partitions stay empty, which an
    IVF index tolerates, and callers get the shape they asked for.
    """
    _check(x, metric)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(x) == 0:
        raise ValueError("k-means needs at least one vector")
    xp = array_module(resolve(device))
    data = xp.asarray(x, dtype=np.float32)
    if metric == "cosine":
        data = _unit_rows(xp, data)
    centroids = _initial_centroids(xp, data, k, seed)
    if xp is np and iters > 0 and cpu_faiss.enabled("kmeans"):
        trained = cpu_faiss.kmeans(data, centroids, iters, metric, tol)
        if trained is not None:
            return trained
    previous = None
    for _ in range(max(0, iters)):
        labels, dists = _assign(xp, data, centroids, metric)
        if tol > 0:
            objective = float(dists.sum(dtype=np.float64))
            if previous is not None and abs(previous - objective) <= tol * abs(previous):
                break
            previous = objective
        centroids = _update(xp, data, labels, dists, centroids, metric)
    return to_host(centroids).astype(np.float32, copy=False)


def assign(x: np.ndarray, centroids: np.ndarray, *, metric: str = "l2",
           device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row: (labels int64 [n], distances float32 [n]); ties go to the lower label."""
    _check(x, metric)
    _check(centroids, metric)
    if len(centroids) == 0:
        raise ValueError("assign needs at least one centroid")
    xp = array_module(resolve(device))
    if xp is np and cpu_faiss.enabled("assign") and np.shape(x)[1] == np.shape(centroids)[1]:
        found = cpu_faiss.assign(x, centroids, metric)
        if found is not None:
            return found
    labels, dists = _assign(xp, xp.asarray(x, dtype=np.float32), xp.asarray(centroids, dtype=np.float32), metric)
    return to_host(labels), to_host(dists)


def probe(queries: np.ndarray, centroids: np.ndarray, nprobes: int, *, metric: str = "l2") -> np.ndarray:
    """The `nprobes` nearest centroids of every query, nearest first: int64 [nq, min(nprobes, nlist)].

    Always on the CPU: a query batch against a few thousand centroids is far too small to pay a transfer.
    faiss searches the centroids (an index per centroid array, cached: do not modify the array in place
    after probing with it); rows faiss cannot decide (a tie at the last place) are ranked here.
    """
    _check(queries, metric)
    if nprobes < 1:
        raise ValueError(f"nprobes must be >= 1, got {nprobes}")
    nlist = len(centroids)
    width = min(nprobes, nlist)
    if np.shape(queries)[1] != np.shape(centroids)[1]:
        raise ValueError(f"dimension mismatch: queries have dim {np.shape(queries)[1]}, "
                         f"centroids have dim {np.shape(centroids)[1]}")
    if cpu_faiss.enabled("probe") and len(centroids):
        probed, unsure = cpu_faiss.probe(queries, centroids, width, metric)
        if len(unsure):
            probed[unsure] = _probe_numpy(np.asarray(queries)[unsure], centroids, width, metric)
        return probed
    return _probe_numpy(queries, centroids, width, metric)


def _probe_numpy(queries: np.ndarray, centroids: np.ndarray, width: int, metric: str) -> np.ndarray:
    ids, _ = topk(pairwise_distances(queries, centroids, metric), np.arange(len(centroids), dtype=np.uint64),
                  width)
    return ids.astype(np.int64)
