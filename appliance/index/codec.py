"""The partition codecs: training their parameters, encoding vectors, and scanning encoded partitions.

For cosine, every codec stores L2-normalised vectors and scans normalised queries, so the cosine distance
1 - cos is the dot distance 1 - q.x of the unit vectors: one matrix product per partition, with no norms
recomputed on every scan (they were most of a partition's scan time). PQ scans unit vectors with squared
L2, which is 2 - 2cos; halving it gives the same cosine distance. A zero vector stays zero, so its
distance to anything is 1, as Lance defines it.

The graph codecs (hnsw_flat, hnsw_sq) keep one faiss HNSW graph per partition (`kernels.hnsw`), over the
same stored form (unit vectors for cosine, searched with dot): a full build encodes rows as flat vectors,
then turns each partition's rows into a graph (`graph`); rows a partial build adds stay flat delta objects
(`row_codec`), scanned exactly beside the graph until the next full build.
"""

from __future__ import annotations

import numpy as np

import kernels

PQ_CODECS = {"pq": 8, "pq4": 4}
"""PQ codec: bits per code. pq4's 4-bit codes are scanned with faiss's SIMD fast-scan on the CPU (twice the
sub-vectors of pq in as many bytes: the same recall after refine for a fraction of the scan; docs/BENCHMARKS.md)."""

GRAPH_CODECS = {"hnsw_flat": "flat", "hnsw_sq": "sq"}
"""Graph codec: the storage of its graphs' rows (`kernels.hnsw_build`)."""


def row_codec(codec: str) -> str:
    """The codec of objects that hold rows as codes (every object of a non-graph index; deltas of a graph
    index, which are flat)."""
    return "flat" if codec in GRAPH_CODECS else codec


def graph(codec: str, rows: np.ndarray, metric: str, m: int) -> np.ndarray:
    """One partition's HNSW graph (serialised, uint8) over its rows in stored form (`encode`'s output)."""
    return kernels.hnsw_build(rows, metric=_scan_metric(metric), m=m, storage=GRAPH_CODECS[codec])


def search_graph(index: kernels.hnsw.Graph, prepared: np.ndarray, ids: np.ndarray, k: int, ef: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Top k (ids, distances) of one partition's graph (`kernels.hnsw_load`) for queries from
    `prepare_queries`, in the index's metric (the graph's)."""
    return kernels.hnsw_search(index, prepared, k, ef=ef, ids=ids)


def _scan_metric(metric: str) -> str:
    return "dot" if metric == "cosine" else metric


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _stored_form(vectors: np.ndarray, metric: str) -> np.ndarray:
    return normalise(vectors) if metric == "cosine" else vectors


def train(codec: str, sample: np.ndarray, metric: str, pq_m: int, seed: int, iters: int) -> dict[str, np.ndarray]:
    """The codec's parameters, as named arrays stored in the centroids object."""
    data = _stored_form(sample, metric)
    if codec == "sq8":
        lo, scale = kernels.sq8_train(data)
        return {"sq8_lo": lo, "sq8_scale": scale}
    if codec in PQ_CODECS:
        return {"pq_codebooks": kernels.pq_train(data, pq_m, nbits=PQ_CODECS[codec], seed=seed, iters=iters)}
    return {}


def encode(codec: str, vectors: np.ndarray, params: dict[str, np.ndarray], metric: str) -> np.ndarray:
    data = _stored_form(vectors, metric)
    codec = row_codec(codec)
    if codec == "flat":
        return np.ascontiguousarray(data, dtype=np.float32)
    if codec == "fp16":
        return kernels.fp16_encode(data)
    if codec == "sq8":
        return kernels.sq8_encode(data, params["sq8_lo"], params["sq8_scale"])
    if codec == "pq":
        return kernels.pq_encode(data, params["pq_codebooks"])
    if codec == "pq4":  # two codes a byte, as faiss stores 4-bit PQ codes
        return kernels.pq4_pack(kernels.pq_encode(data, params["pq_codebooks"]))
    raise ValueError(f"unknown codec {codec!r}")


def prepare_queries(queries: np.ndarray, metric: str) -> np.ndarray:
    """Queries in the form `distances` expects, computed once per batch rather than once per partition."""
    return np.ascontiguousarray(_stored_form(queries, metric), dtype=np.float32)


def scan(codec: str, prepared: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
         params: dict[str, np.ndarray], metric: str, k: int, keys: list[str] | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Top k (ids, distances) [nq, k] over partitions given as (ids, codes, query rows or None for all),
    each scanned for its queries only (from `prepare_queries`): `kernels.scan_lists` in the scan metric.
    `keys`: the lists' object keys (pq4 keeps each object's fast-scan layout by its key)."""
    if metric != "cosine":
        return kernels.scan_lists(prepared, lists, k, codec=codec, params=params, metric=metric, keys=keys)
    if codec in PQ_CODECS:  # l2 of unit vectors is 2 - 2cos: halving is exact and keeps the order
        ids, dists = kernels.scan_lists(prepared, lists, k, codec=codec, params=params, metric="l2", keys=keys)
        return ids, dists / np.float32(2)
    return kernels.scan_lists(prepared, lists, k, codec=codec, params=params, metric="dot", keys=keys)


def distances(codec: str, prepared: np.ndarray, codes: np.ndarray, params: dict[str, np.ndarray],
              metric: str) -> np.ndarray:
    """Distances float32 [nq, n] of every query (from `prepare_queries`) to one partition's encoded rows."""
    if metric != "cosine":
        return kernels.code_distances(prepared, codes, codec=codec, params=params, metric=metric)
    if codec in PQ_CODECS:
        return kernels.code_distances(prepared, codes, codec=codec, params=params, metric="l2") / 2
    return kernels.code_distances(prepared, codes, codec=codec, params=params, metric="dot")
