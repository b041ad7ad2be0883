"""Product quantization: codebook training, encoding, decoding and asymmetric distance scans.

A vector of dimension d is cut into m sub-vectors of d/m dimensions; each is replaced by the number of the
nearest of 256 sub-centroids (8-bit codes, the `pq` codec: a row costs m bytes) or of 16 (4-bit codes, the
`pq4` codec: two codes a byte, m/2 bytes a row, scanned with faiss's SIMD fast-scan on the CPU). A scan
computes, once per query, a lookup table of the query's distance to every sub-centroid ([m, 256] or
[m, 16]) and sums m table entries per row: no vector is decoded, which is what makes PQ partitions cheap
to scan (asymmetric distance computation).

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
NBITS = (4, 8)
"""Bits per code: 8 (256 sub-centroids per sub-space) or 4 (16: the fast-scan codes)."""
TRAIN_ROWS_PER_CODE = 64
"""Training rows per sub-centroid of an 8-bit codebook; more adds time, not accuracy (faiss warns below 39).
4-bit codebooks train on as many rows (16 centroids of 1,024 rows' worth would be cheap but coarse)."""
PQ4_BLOCK = 32
"""Rows per block of faiss's fast-scan layout (`pq4_blocks`)."""
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
    """Codebooks float32 [m, 2**nbits, d/m]: k-means (l2) of each sub-space, one seed per sub-space, on at
    most 256 x TRAIN_ROWS_PER_CODE rows drawn by `seed`."""
    if nbits not in NBITS:
        raise ValueError(f"PQ codes have {' or '.join(map(str, NBITS))} bits, got nbits={nbits}")
    parts = _split(x, m)
    if len(parts) == 0:
        raise ValueError("PQ training needs at least one vector")
    limit = CODES_PER_SUBSPACE * TRAIN_ROWS_PER_CODE
    if len(parts) > limit:
        parts = parts[np.sort(np.random.default_rng(seed).choice(len(parts), limit, replace=False))]
    return np.stack([
        kmeans(parts[:, j, :], 1 << nbits, metric="l2", iters=iters, seed=seed + j, device=device)
        for j in range(m)
    ])


def pq_encode(x: np.ndarray, codebooks: np.ndarray, *, device: str | None = None) -> np.ndarray:
    """uint8 codes [n, m], one a byte (4-bit codes too: `pq4_pack` packs them): the nearest sub-centroid of
    each sub-vector (ties to the lower code). On the CPU this is faiss's ProductQuantizer
    (`kernels.cpu_faiss.pq_encode`) where it can take the input."""
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


def pq4_pack(codes: np.ndarray) -> np.ndarray:
    """4-bit codes [n, m] (values < 16) as faiss stores them: uint8 [n, ceil(m/2)], code 2j in the low nibble
    of byte j and code 2j + 1 in its high nibble (0 past an odd m)."""
    c = np.asarray(codes, dtype=np.uint8)
    if c.ndim != 2:
        raise ValueError(f"codes must be a 2-D array [rows, m], got shape {c.shape}")
    if c.shape[1] % 2:
        c = np.concatenate([c, np.zeros((len(c), 1), np.uint8)], axis=1)
    return np.ascontiguousarray(c[:, 0::2] | (c[:, 1::2] << 4))


def pq4_unpack(packed: np.ndarray, m: int) -> np.ndarray:
    """The codes [n, m] of `pq4_pack`'s output."""
    p = np.asarray(packed, dtype=np.uint8)
    return np.stack([p & 15, p >> 4], axis=2).reshape(len(p), 2 * p.shape[1])[:, :m]


_PQ4_PERM = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15], np.intp)


def pq4_blocks(packed: np.ndarray) -> np.ndarray:
    """`pq4_pack`'s rows in faiss's fast-scan layout (faiss `pq4_pack_codes`, 32 rows a block): uint8
    [ceil(n/32), 32 x bytes a row (rounded up to even sub-spaces)]. Per block and pair of sub-spaces, 32
    bytes: the low nibbles of the pair's first code for rows perm(j) and perm(j) + 16, then the second code's
    likewise; rows past n are code 0 (faiss masks them out by the list's size)."""
    p = np.asarray(packed, dtype=np.uint8)
    n, width = p.shape
    blocks = -(-n // PQ4_BLOCK)
    padded = np.zeros((blocks * PQ4_BLOCK, width), np.uint8)
    padded[:n] = p
    columns = padded.reshape(blocks, PQ4_BLOCK, width).transpose(0, 2, 1)  # [blocks, byte, row in block]
    out = np.empty((blocks, width, PQ4_BLOCK), np.uint8)
    for half, nibble in ((0, columns & 15), (16, columns >> 4)):
        out[:, :, half : half + 16] = nibble[:, :, _PQ4_PERM] | (nibble[:, :, _PQ4_PERM + 16] << 4)
    return out.reshape(blocks, width * PQ4_BLOCK)


def _lookup_tables(xp: ModuleType, queries: np.ndarray, codebooks: np.ndarray, metric: str) -> np.ndarray:
    """[nq, m, 256 or 16]: per query and sub-space, the distance term of each sub-centroid."""
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
