"""Exact re-ranking of candidates: each query against its own candidate vectors."""

from __future__ import annotations

import numpy as np

from kernels.distance import METRICS


def candidate_distances(queries: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """Distances float32 [nq, m] of query i to candidates[i, j] (float32 [nq, m, d]).

    Refinement touches k x refine_factor vectors per query, far fewer than a scan, so one batched
    einsum beats building the full nq x (all candidates) product.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    q = np.asarray(queries, dtype=np.float32)
    c = np.asarray(candidates, dtype=np.float32)
    if c.ndim != 3 or q.ndim != 2 or c.shape[0] != q.shape[0] or c.shape[2] != q.shape[1]:
        raise ValueError(f"candidates must be [nq, m, d] for queries [nq, d]; got {c.shape} and {q.shape}")
    dots = np.einsum("nd,nmd->nm", q, c)
    if metric == "dot":
        return (1.0 - dots).astype(np.float32)
    c_norms = np.einsum("nmd,nmd->nm", c, c)
    q_norms = np.einsum("nd,nd->n", q, q)[:, None]
    if metric == "l2":
        return np.maximum(q_norms - 2 * dots + c_norms, 0).astype(np.float32)
    denom = np.sqrt(q_norms * c_norms)
    cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return (1.0 - cos).astype(np.float32)
