"""Top-k over an encoded block of rows (one IVF partition), whatever its codec."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kernels.codecs import fp16_decode, sq8_decode
from kernels.distance import pairwise_distances
from kernels.pq import pq_distances
from kernels.topk import search_block, topk

CODECS = ("flat", "fp16", "sq8", "pq")


def code_distances(queries: np.ndarray, codes: np.ndarray, *, codec: str, params: Mapping[str, np.ndarray],
                   metric: str) -> np.ndarray:
    """Distances float32 [nq, n] of every query to every encoded row: what a caller scanning many small
    blocks (IVF partitions) concatenates before one top-k, instead of a top-k and a merge per block."""
    if codec == "pq":
        return pq_distances(queries, codes, params["pq_codebooks"], metric, device="cpu")
    if codec == "sq8" and metric == "dot":
        return _sq8_dot_distances(queries, codes, params["sq8_lo"], params["sq8_scale"])
    return pairwise_distances(queries, _decoded(codes, codec, params), metric)


def _sq8_dot_distances(queries: np.ndarray, codes: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """1 - q.x for x = lo + code * scale, without decoding x: q.x = q.lo + (q * scale).code. A partition
    then costs one uint8 -> float32 conversion and one matrix product over a quarter of flat's bytes,
    where decoding first took three passes over the float32 rows (about half the time of a flat scan on
    debian-minilm partitions, against slightly more than a flat scan)."""
    q = np.asarray(queries, dtype=np.float32)
    products = (q * scale) @ np.asarray(codes, dtype=np.float32).T
    products += (q @ lo)[:, None]
    return np.subtract(np.float32(1), products, out=products)


def _decoded(codes: np.ndarray, codec: str, params: Mapping[str, np.ndarray]) -> np.ndarray:
    if codec == "flat":
        return codes
    if codec == "fp16":
        return fp16_decode(codes)
    if codec == "sq8":
        return sq8_decode(codes, params["sq8_lo"], params["sq8_scale"])
    raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")


def search_codes(queries: np.ndarray, codes: np.ndarray, ids: np.ndarray, k: int, *, codec: str,
                 params: Mapping[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids uint64 [nq, k], distances float32 [nq, k]) of the k nearest encoded rows, ordered like `topk`.

    Scalar codes are decoded and scanned exactly (a partition is small, and decoding costs less than the
    distance product); PQ codes are scanned through lookup tables without decoding. `params` holds the
    codec's trained arrays: `sq8_lo`/`sq8_scale`, or `pq_codebooks`.
    """
    if codec == "pq":
        return topk(code_distances(queries, codes, codec=codec, params=params, metric=metric), ids, k)
    return search_block(queries, _decoded(codes, codec, params), ids, metric, k)
