"""The partition codecs: training their parameters, encoding vectors, and scanning encoded partitions.

For cosine, PQ encodes L2-normalised vectors and scans with squared L2, which on unit vectors is
2 - 2cos; halving it gives the cosine distance (1 - cos) the other codecs report.
"""

from __future__ import annotations

import numpy as np

import kernels


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def train(codec: str, sample: np.ndarray, metric: str, pq_m: int, seed: int, iters: int) -> dict[str, np.ndarray]:
    """The codec's parameters, as named arrays stored in the centroids object."""
    if codec == "sq8":
        lo, scale = kernels.sq8_train(sample)
        return {"sq8_lo": lo, "sq8_scale": scale}
    if codec == "pq":
        data = normalise(sample) if metric == "cosine" else sample
        return {"pq_codebooks": kernels.pq_train(data, pq_m, seed=seed, iters=iters)}
    return {}


def encode(codec: str, vectors: np.ndarray, params: dict[str, np.ndarray], metric: str) -> np.ndarray:
    if codec == "flat":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    if codec == "fp16":
        return kernels.fp16_encode(vectors)
    if codec == "sq8":
        return kernels.sq8_encode(vectors, params["sq8_lo"], params["sq8_scale"])
    if codec == "pq":
        data = normalise(vectors) if metric == "cosine" else vectors
        return kernels.pq_encode(data, params["pq_codebooks"])
    raise ValueError(f"unknown codec {codec!r}")


def scan(codec: str, queries: np.ndarray, codes: np.ndarray, ids: np.ndarray, k: int,
         params: dict[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, distances) of one partition's encoded rows for every query."""
    if codec == "pq" and metric == "cosine":
        found, dists = kernels.search_codes(normalise(queries), codes, ids, k, codec="pq", params=params,
                                            metric="l2")
        return found, dists / 2
    return kernels.search_codes(queries, codes, ids, k, codec=codec, params=params, metric=metric)
