"""Exact pairwise distances between query and data vectors.

The metric definitions follow Lance/LanceDB (l2 is *squared* Euclidean, cosine and dot are "1 minus a
similarity"), so that scores this appliance returns agree with what a Lance index over the same table
would report, and results from the two can be compared or merged directly.
"""

from __future__ import annotations

import numpy as np

from kernels.backend import module_of

METRICS = ("l2", "cosine", "dot")


def _as_matrix(name: str, array: np.ndarray) -> np.ndarray:
    # Converting once here keeps the BLAS call on the float32 path even when a caller hands us float64
    # or a strided view; a copy only happens when one is needed.
    matrix = module_of(array).ascontiguousarray(array, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape [rows, dim], got shape {matrix.shape}")
    return matrix


def _inverse_norms(matrix: np.ndarray) -> np.ndarray:
    # A zero vector gets inverse norm 0 rather than inf, so its cosine similarity with anything is 0
    # (distance 1), as in Lance, instead of NaN.
    xp = module_of(matrix)
    norms = xp.sqrt(xp.einsum("ij,ij->i", matrix, matrix))
    return xp.where(norms > 0, np.float32(1) / xp.where(norms > 0, norms, np.float32(1)), np.float32(0))


def pairwise_distances(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Distances from every query to every vector, float32 [nq, n].

    Everything is phrased as one matrix product so the cost is a single BLAS sgemm; l2 is expanded as
    |q|^2 - 2 q.x + |x|^2 for that reason, and clamped at 0 because the expansion can round slightly
    negative for near-identical vectors.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    q = _as_matrix("queries", queries)
    x = _as_matrix("vectors", vectors)
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"dimension mismatch: queries have dim {q.shape[1]}, vectors have dim {x.shape[1]}")

    xp = module_of(q)
    products = q @ x.T
    if metric == "l2":
        products *= np.float32(-2)
        products += xp.einsum("ij,ij->i", q, q)[:, None]
        products += xp.einsum("ij,ij->i", x, x)[None, :]
        # maximum (not fmax) so a NaN from bad input stays visible instead of becoming distance 0.
        return xp.maximum(products, np.float32(0), out=products)
    if metric == "cosine":
        products *= _inverse_norms(q)[:, None]
        products *= _inverse_norms(x)[None, :]
    return xp.subtract(np.float32(1), products, out=products)
