"""HNSW graphs (faiss's IndexHNSWFlat / IndexHNSWSQ) over one small set of vectors, e.g. one IVF partition.

A graph is built once, serialised to a uint8 array (`faiss.serialize_index`) so it can live in any array
store, and deserialised once per process by whoever searches it (`hnsw_load`; keep the result cached:
deserialising costs about as much as a few searches). Distances follow `kernels.distance` (Lance's
definitions): l2 is squared Euclidean, dot is 1 - q.x, cosine is dot over unit vectors (both sides
normalised here; callers that store unit vectors already can build with metric "dot" and skip that work).
The metric is chosen at build time and travels with the graph. "sq" graphs hold 8-bit
scalar-quantised rows (trained on the rows they index), so their distances are approximate.

Results come back in `topk`'s order: by distance, ties by the smaller id, padded with (NO_ID, inf) where a
query reaches fewer than k rows. The search visits at most `ef` candidates (faiss's efSearch, raised to k):
with ef >= rows on a connected graph it is exact for "flat" graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from kernels.distance import METRICS
from kernels.topk import NO_ID

HNSW_STORAGE = ("flat", "sq")
DEFAULT_EF_CONSTRUCTION = 80
_TRAILER = np.dtype([("norm2", "<f8"), ("metric", "<u4"), ("dim", "<u4")])  # after faiss's bytes
LANES = 8
"""Graph rows are padded with zeros to a multiple of this many dimensions: faiss's SIMD distance code needs
it (debian-minilm, 384 + 1 augmented dimensions: an SQ graph built 7.7x and searched 8x faster at 392)."""


@dataclass(frozen=True)
class Graph:
    """A deserialised graph: faiss's index over L2 and how its distances map back to `metric`."""

    index: faiss.Index
    metric: str
    norm2: float  # dot and cosine: the squared norm every augmented row has (see `hnsw_build`)
    dim: int  # of the vectors given to `hnsw_build` (the graph's rows are augmented and padded)

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)


_PARAMS: dict[int, faiss.SearchParametersHNSW] = {}


def _search_params(ef: int) -> faiss.SearchParametersHNSW:
    """faiss's search parameters for one ef, made once (making them costs a third of a small graph's
    search); faiss only reads them, so threads share them."""
    params = _PARAMS.get(ef)
    if params is None:
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef
        _PARAMS[ef] = params
    return params


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _matrix(name: str, x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, dim], got shape {x.shape}")
    return np.ascontiguousarray(_unit(x)) if metric == "cosine" else x


def _graph_rows(x: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
    """x [n, d] with the augmented column `extra` (dot, cosine) after it, zero-padded to LANES columns."""
    used = x.shape[1] + (extra is not None)
    out = np.zeros((len(x), -(-used // LANES) * LANES), dtype=np.float32)
    out[:, : x.shape[1]] = x
    if extra is not None:
        out[:, x.shape[1]] = extra
    return out


def hnsw_build(vectors: np.ndarray, *, metric: str = "l2", m: int = 16, storage: str = "flat",
               ef_construction: int = DEFAULT_EF_CONSTRUCTION) -> np.ndarray:
    """An HNSW graph over `vectors` (row i is position i), serialised: uint8 [bytes].

    Every graph is an L2 graph, where HNSW's greedy search is sound. Inner products (dot, and cosine as dot
    of unit vectors) are made L2 by the usual augmentation: each row x gets one more coordinate
    sqrt(M^2 - |x|^2), M the largest row norm, and queries get 0 there, so |q - x'|^2 = |q|^2 + M^2 - 2 q.x
    ranks rows as q.x does (faiss's own inner-product HNSW missed rows even with ef above the row count).
    """
    _check_metric(metric)
    if storage not in HNSW_STORAGE:
        raise ValueError(f"unknown HNSW storage {storage!r}; expected one of {', '.join(HNSW_STORAGE)}")
    if m < 2:
        raise ValueError(f"HNSW m must be >= 2, got {m}")
    x = _matrix("vectors", vectors, metric)
    norm2, extra, given = 0.0, None, x.shape[1]
    if metric != "l2":
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        norm2 = float(sq.max()) if len(x) else 0.0
        extra = np.sqrt(np.maximum(norm2 - sq, 0)).astype(np.float32)
    x = _graph_rows(x, extra)
    dim = x.shape[1]
    if storage == "flat":
        index = faiss.IndexHNSWFlat(dim, m)
    else:
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, m)
    index.hnsw.efConstruction = max(ef_construction, m)
    if storage == "sq" and len(x):
        index.train(x)
    if len(x):
        index.add(x)
    trailer = np.array([(norm2, METRICS.index(metric), given)], dtype=_TRAILER).view(np.uint8)
    return np.concatenate([faiss.serialize_index(index), trailer])


def hnsw_load(blob: np.ndarray) -> Graph:
    """The searchable graph of a `hnsw_build` result."""
    blob = np.ascontiguousarray(blob, dtype=np.uint8)
    if len(blob) <= _TRAILER.itemsize:
        raise ValueError(f"not a serialised HNSW graph ({len(blob)} bytes)")
    trailer = blob[-_TRAILER.itemsize:].copy().view(_TRAILER)[0]
    if int(trailer["metric"]) >= len(METRICS):
        raise ValueError("not a serialised HNSW graph (unknown metric)")
    index = faiss.deserialize_index(np.ascontiguousarray(blob[: -_TRAILER.itemsize]))
    return Graph(index, METRICS[int(trailer["metric"])], float(trailer["norm2"]), int(trailer["dim"]))


def hnsw_search(graph: Graph, queries: np.ndarray, k: int, *, ef: int,
                ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top k of the graph for every query, in the graph's metric: (ids uint64 [nq, k], distances float32
    [nq, k]); `ids` maps a graph position to its id (positions themselves when None). Thread-safe: ef goes
    with the call."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if ef < 1:
        raise ValueError(f"ef must be >= 1, got {ef}")
    metric = graph.metric
    q = _matrix("queries", queries, metric)
    nq = len(q)
    out_ids = np.full((nq, k), NO_ID, dtype=np.uint64)
    out_d = np.full((nq, k), np.inf, dtype=np.float32)
    n = graph.rows
    width = min(k, n)
    if nq == 0 or width == 0:
        return out_ids, out_d
    if q.shape[1] != graph.dim:
        raise ValueError(f"dimension mismatch: queries have dim {q.shape[1]}, the graph has dim {graph.dim}")
    qn = np.einsum("ij,ij->i", q, q, dtype=np.float64)[:, None] if metric != "l2" else None
    q = _graph_rows(q, np.zeros(nq, np.float32) if metric != "l2" else None)
    dists, pos = graph.index.search(q, width, params=_search_params(max(int(ef), width)))
    if qn is not None:  # |q - x'|^2 = |q|^2 + M^2 - 2 q.x, and the distance is 1 - q.x
        dists = 1 - (qn + graph.norm2 - dists.astype(np.float64)) / 2
    found = pos >= 0
    dists = np.where(found, dists, np.inf).astype(np.float32)
    id_map = np.arange(n, dtype=np.uint64) if ids is None else np.asarray(ids, dtype=np.uint64)
    found_ids = np.where(found, id_map[np.where(found, pos, 0)], NO_ID)
    # faiss orders by distance only; ties go to the smaller id here, as everywhere in kernels.
    order = np.lexsort((found_ids, dists), axis=1)
    out_ids[:, :width] = np.take_along_axis(found_ids, order, axis=1)
    out_d[:, :width] = np.take_along_axis(dists, order, axis=1)
    return out_ids, out_d
