"""Top-k over an encoded block of rows (one IVF partition), whatever its codec."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from kernels import cpu_faiss
from kernels.codecs import fp16_decode, sq8_decode
from kernels.distance import pairwise_distances
from kernels.pq import pq4_unpack, pq_distances
from kernels.topk import NO_ID, search_block, topk

CODECS = ("flat", "fp16", "sq8", "pq", "pq4")


def code_distances(queries: np.ndarray, codes: np.ndarray, *, codec: str, params: Mapping[str, np.ndarray],
                   metric: str) -> np.ndarray:
    """Distances float32 [nq, n] of every query to every encoded row: what a caller scanning many small
    blocks (IVF partitions) concatenates before one top-k, instead of a top-k and a merge per block."""
    if codec == "pq":
        return pq_distances(queries, codes, params["pq_codebooks"], metric, device="cpu")
    if codec == "pq4":  # rows of `pq4_pack`ed codes
        codebooks = params["pq_codebooks"]
        return pq_distances(queries, pq4_unpack(codes, len(codebooks)), codebooks, metric, device="cpu")
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
    distance product); PQ codes (8-bit, or 4-bit `pq4_pack`ed) are scanned through lookup tables without
    decoding. `params` holds the codec's trained arrays: `sq8_lo`/`sq8_scale`, or `pq_codebooks`.
    """
    if codec in ("pq", "pq4"):
        return topk(code_distances(queries, codes, codec=codec, params=params, metric=metric), ids, k)
    return search_block(queries, _decoded(codes, codec, params), ids, metric, k)


ListScan = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
"""One list of an IVF scan: (ids uint64 [n], codes [n, ...], the query rows that scan it, or None for all)."""


def scan_lists(queries: np.ndarray, lists: Sequence[ListScan], k: int, *, codec: str,
               params: Mapping[str, np.ndarray], metric: str, keys: Sequence[Hashable] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Top k over many small encoded lists (the probed IVF partitions), each scanned only for the queries
    that probe it: (ids uint64 [nq, k], distances float32 [nq, k]) in `topk`'s order, padded with
    (NO_ID, inf) where a query reaches fewer than k rows. The rows must be finite.

    flat lists with l2 or dot run on faiss (`cpu_faiss.scan_flat_lists`: a heap per list on the list's
    own array, one merge), SQ8 and PQ lists on faiss's IVF scanners (`cpu_faiss.scan_coded_lists`), 4-bit
    PQ lists on faiss's fast-scan (`cpu_faiss.scan_pq4_lists`: its uint8 lookup tables' top k, within their
    rounding of the ADC distances); fp16, and rows faiss leaves undecided, run `_scan_lists_numpy`.

    `keys`, one a list (or None), name each list's content for good (an immutable object's key): a backend
    that keeps lists prepared between scans (pq4's block layout) finds them by key, however the arrays
    were read; without keys it goes by the arrays' identity.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries must be a 2-D array [nq, dim], got shape {q.shape}")
    if keys is not None and len(keys) != len(lists):
        raise ValueError(f"{len(keys)} keys for {len(lists)} lists")
    lists = [(np.asarray(ids, dtype=np.uint64), codes, None if rows is None else np.asarray(rows, dtype=np.intp))
             for ids, codes, rows in lists]
    scanned = [len(ids) and (rows is None or len(rows)) for ids, _, rows in lists]
    keys = None if keys is None else [key for key, scan in zip(keys, scanned, strict=True) if scan]
    lists = [entry for entry, scan in zip(lists, scanned, strict=True) if scan]
    if codec == "flat" and metric in ("l2", "dot") and cpu_faiss.enabled("scan_lists/flat") and lists and k and len(q) \
            and np.isfinite(q).all():
        flat = [(ids, np.ascontiguousarray(codes, dtype=np.float32), rows) for ids, codes, rows in lists]
        if all(vectors.ndim == 2 and vectors.shape[1] == q.shape[1] for _, vectors, _ in flat):
            out_ids, out_distances, unsure = cpu_faiss.scan_flat_lists(q, flat, k, metric)
            if len(unsure):
                again = _scan_lists_numpy(q[unsure], _restricted(lists, unsure), k, codec, params, metric)
                out_ids[unsure], out_distances[unsure] = again
            return out_ids, out_distances
    if codec in ("sq8", "pq") and metric in ("l2", "dot") and cpu_faiss.enabled(f"scan_lists/{codec}") and lists \
            and k and len(q) and np.isfinite(q).all():
        found = cpu_faiss.scan_coded_lists(q, lists, k, codec, params, metric)
        if found is not None:
            out_ids, out_distances, unsure = found
            if len(unsure):
                again = _scan_lists_numpy(q[unsure], _restricted(lists, unsure), k, codec, params, metric)
                out_ids[unsure], out_distances[unsure] = again
            return out_ids, out_distances
    if codec == "pq4" and metric in ("l2", "dot") and cpu_faiss.enabled("scan_lists/pq4") and lists and k and len(q) \
            and np.isfinite(q).all():
        found = cpu_faiss.scan_pq4_lists(q, lists, k, np.asarray(params["pq_codebooks"]), metric, keys)
        if found is not None:
            out_ids, out_distances, unsure = found
            if len(unsure):
                again = _scan_lists_numpy(q[unsure], _restricted(lists, unsure), k, codec, params, metric)
                out_ids[unsure], out_distances[unsure] = again
            return out_ids, out_distances
    return _scan_lists_numpy(q, lists, k, codec, params, metric)


def _restricted(lists: Sequence[ListScan], rows: np.ndarray) -> list[ListScan]:
    """The lists as scanned by the queries `rows` only, renumbered 0..len(rows)-1."""
    position = np.full(int(rows.max()) + 1, -1, np.intp)
    position[rows] = np.arange(len(rows))
    out = []
    for ids, codes, scanning in lists:
        chosen = rows if scanning is None else scanning[scanning <= rows.max()]
        chosen = position[chosen]
        out.append((ids, codes, chosen[chosen >= 0]))
    return out


def _scan_lists_numpy(q: np.ndarray, lists: Sequence[ListScan], k: int, codec: str,
                      params: Mapping[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """A query probes tens of lists of a few hundred rows each; a top-k and a merge per list would cost
    more than the distances themselves. So each list's distances go into one [nq, rows] matrix (NaN where
    a query does not scan the list) and a single top-k picks from it; NaN, which a finite row's distance
    never is, then marks padding."""
    nq = len(q)
    rows = sum(len(ids) for ids, _, _ in lists)
    if not rows:
        return np.full((nq, k), NO_ID, np.uint64), np.full((nq, k), np.inf, np.float32)
    dists = np.full((nq, rows), np.nan, dtype=np.float32)
    all_ids = np.empty(rows, dtype=np.uint64)
    start = 0
    for ids, codes, chosen in lists:
        block = slice(start, start + len(ids))
        all_ids[block] = ids
        if chosen is None:
            dists[:, block] = code_distances(q, codes, codec=codec, params=params, metric=metric)
        elif len(chosen):
            dists[chosen, block] = code_distances(q[chosen], codes, codec=codec, params=params, metric=metric)
        start = block.stop
    out_ids, out_distances = topk(dists, all_ids, k)
    unprobed = np.isnan(out_distances)
    out_ids[unprobed], out_distances[unprobed] = NO_ID, np.inf
    return out_ids, out_distances
