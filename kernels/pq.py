"""Product quantization: codebook training, encoding, decoding and asymmetric distance scans.

A vector of dimension d is cut into m sub-vectors of d/m dimensions; each is replaced by the number of the
nearest of 256 sub-centroids, so a row costs m bytes. A scan computes, once per query, a lookup table of
the query's distance to every sub-centroid ([m, 256]) and sums m table entries per row: no vector is
decoded, which is what makes PQ partitions cheap to scan (asymmetric distance computation).

PQ is defined for the l2 and dot metrics; cosine is handled by callers as l2 over unit vectors.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from kernels import cpu_faiss
from kernels.backend import array_module, resolve, to_host
from kernels.ivf import assign as assign_nearest
from kernels.ivf import kmeans

CODES_PER_SUBSPACE = 256
TRAIN_ROWS_PER_CODE = 64
"""Training rows per sub-centroid; more adds time, not accuracy (faiss warns below 39)."""
PQ_METRICS = ("l2", "dot")
SCAN_QUERIES = 32
"""Queries per block of a lookup-table scan (their running sums are revisited once per sub-space)."""


def _split(x: np.ndarray, m: int) -> np.ndarray:
    """[n, d] -> [n, m, d/m]."""
    matrix = np.asarray(x, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array [rows, dim], got shape {matrix.shape}")
    if m < 1 or matrix.shape[1] % m:
        raise ValueError(f"dimension {matrix.shape[1]} is not divisible into {m} PQ sub-vectors")
    return matrix.reshape(len(matrix), m, matrix.shape[1] // m)


def pq_train(x: np.ndarray, m: int, *, nbits: int = 8, iters: int = 20, seed: int = 0,
             device: str | None = None) -> np.ndarray:
    """Codebooks float32 [m, 256, d/m]: k-means (l2) of each sub-space, one seed per sub-space, on at most
    256 x TRAIN_ROWS_PER_CODE rows drawn by `seed`."""
    if nbits != 8:
        raise ValueError(f"only 8-bit PQ codes are supported, got nbits={nbits}")
    parts = _split(x, m)
    if len(parts) == 0:
        raise ValueError("PQ training needs at least one vector")
    limit = CODES_PER_SUBSPACE * TRAIN_ROWS_PER_CODE
    if len(parts) > limit:
        parts = parts[np.sort(np.random.default_rng(seed).choice(len(parts), limit, replace=False))]
    return np.stack([
        kmeans(parts[:, j, :], CODES_PER_SUBSPACE, metric="l2", iters=iters, seed=seed + j, device=device)
        for j in range(m)
    ])


def pq_encode(x: np.ndarray, codebooks: np.ndarray, *, device: str | None = None) -> np.ndarray:
    """uint8 codes [n, m]: the nearest sub-centroid of each sub-vector (ties to the lower code). On the CPU
    this is faiss's ProductQuantizer (`kernels.cpu_faiss.pq_encode`) where it can take the input."""
    m = len(codebooks)
    parts = _split(x, m)
    if resolve(device) == "cpu" and len(parts) and cpu_faiss.enabled("pq_encode"):
        codes = cpu_faiss.pq_encode(parts.reshape(len(parts), -1), np.asarray(codebooks, dtype=np.float32))
        if codes is not None:
            return codes
    codes = np.empty((len(parts), m), dtype=np.uint8)
    for j in range(m):
        labels, _ = assign_nearest(parts[:, j, :], codebooks[j], metric="l2", device=device)
        codes[:, j] = labels
    return codes


def pq_decode(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """float32 [n, d]: each code replaced by its sub-centroid."""
    codes = np.asarray(codes, dtype=np.intp)
    m, _, sub = codebooks.shape
    return codebooks[np.arange(m)[None, :], codes].reshape(len(codes), m * sub)


def _lookup_tables(xp: ModuleType, queries: np.ndarray, codebooks: np.ndarray, metric: str) -> np.ndarray:
    """[nq, m, 256]: per query and sub-space, the distance term of each sub-centroid."""
    q = queries.reshape(len(queries), codebooks.shape[0], codebooks.shape[2])
    products = xp.einsum("qms,mcs->qmc", q, codebooks)
    if metric == "dot":
        return -products
    q_norms = xp.einsum("qms,qms->qm", q, q)[:, :, None]
    c_norms = xp.einsum("mcs,mcs->mc", codebooks, codebooks)[None, :, :]
    return q_norms - 2 * products + c_norms


def pq_distances(queries: np.ndarray, codes: np.ndarray, codebooks: np.ndarray, metric: str,
                 device: str | None = None) -> np.ndarray:
    """Approximate distances float32 [nq, n] of every query to every encoded row (l2: squared; dot: 1 - q.x)."""
    if metric not in PQ_METRICS:
        raise ValueError(f"PQ scans support {PQ_METRICS}, got {metric!r}")
    xp = array_module(resolve(device))
    q = xp.asarray(_split(queries, len(codebooks)), dtype=np.float32)
    tables = _lookup_tables(xp, q, xp.asarray(codebooks, dtype=np.float32), metric)
    c = xp.asarray(codes, dtype=np.intp)
    m = c.shape[1] if c.ndim == 2 else len(codebooks)
    # tables[:, j, codes[:, j]] gathered per sub-space and summed in order j = 0..m-1: [nq, n]. The codes
    # are transposed once so each gather reads one contiguous row of indices, and queries go SCAN_QUERIES
    # at a time so the running sums stay in cache across the m passes (same additions, same order).
    by_subspace = xp.ascontiguousarray(c.T)
    sums = xp.zeros((len(q), len(c)), dtype=np.float32)
    for start in range(0, len(q), SCAN_QUERIES):
        block, block_tables = sums[start : start + SCAN_QUERIES], tables[start : start + SCAN_QUERIES]
        for j in range(m):
            block += xp.take(block_tables[:, j, :], by_subspace[j], axis=1)
    if metric == "dot":
        sums += np.float32(1)
    else:
        sums = xp.maximum(sums, np.float32(0))
    return to_host(sums)
