"""Top-k over an encoded block of rows (one IVF partition), whatever its codec."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kernels.codecs import fp16_decode, sq8_decode
from kernels.pq import pq_distances
from kernels.topk import search_block, topk

CODECS = ("flat", "fp16", "sq8", "pq")


def search_codes(queries: np.ndarray, codes: np.ndarray, ids: np.ndarray, k: int, *, codec: str,
                 params: Mapping[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids uint64 [nq, k], distances float32 [nq, k]) of the k nearest encoded rows, ordered like `topk`.

    Scalar codes are decoded and scanned exactly (a partition is small, and decoding costs less than the
    distance product); PQ codes are scanned through lookup tables without decoding. `params` holds the
    codec's trained arrays: `sq8_lo`/`sq8_scale`, or `pq_codebooks`.
    """
    if codec == "flat":
        return search_block(queries, codes, ids, metric, k)
    if codec == "fp16":
        return search_block(queries, fp16_decode(codes), ids, metric, k)
    if codec == "sq8":
        return search_block(queries, sq8_decode(codes, params["sq8_lo"], params["sq8_scale"]), ids, metric, k)
    if codec == "pq":
        return topk(pq_distances(queries, codes, params["pq_codebooks"], metric, device="cpu"), ids, k)
    raise ValueError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
