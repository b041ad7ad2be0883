"""Deterministic top-k selection, merging of partial top-ks, and exact search over a block of rows.

Results from different fragments, executors and chunk sizes are merged and compared with each other, so
the order must not depend on how the work was split: rows are ordered by (distance, id) with NaN
distances last, and short results are padded with (NO_ID, +inf) to a fixed [nq, k] shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from kernels.backend import module_of
from kernels.distance import pairwise_distances

NO_ID = np.uint64(2**64 - 1)
"""Id of a padding slot. Reserved: real row ids must be smaller, since padding is recognised by it."""


def _padding(nq: int, k: int, xp: ModuleType = np) -> tuple[np.ndarray, np.ndarray]:
    return xp.full((nq, k), NO_ID, dtype=np.uint64), xp.full((nq, k), np.inf, dtype=np.float32)


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")


def _select(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k of each row of `distances`; `ids` is either shared [n] or per row [nq, n].

    argpartition alone cannot be used: among entries equal to the kth value it keeps an arbitrary
    subset, which would make the result depend on row order. So it only finds the kth value; every
    entry <= it (all entries if it is NaN, since NaNs tie with each other) is a candidate, and three
    stable sorts over the candidates of all rows, keyed (row, distance, id), fix the order. Candidates
    are normally about nq * k entries, so the sorts stay small next to the [nq, n] distance matrix.
    Written against the array module of `distances`, so the same code selects on the GPU.
    """
    xp = module_of(distances)
    nq, n = distances.shape
    out_ids, out_distances = _padding(nq, k, xp)
    m = min(k, n)
    if nq == 0 or m == 0:
        return out_ids, out_distances

    if m < n:
        partitioned = xp.argpartition(distances, m - 1, axis=1)[:, m - 1 : m]
        kth = xp.take_along_axis(distances, partitioned, axis=1)
        candidates = (distances <= kth) | xp.isnan(kth)
    else:
        candidates = xp.ones((nq, n), dtype=bool)

    rows, cols = xp.nonzero(candidates)
    cand_distances = distances[rows, cols]
    cand_ids = ids[rows, cols] if ids.ndim == 2 else ids[cols]
    order = xp.argsort(cand_ids, kind="stable")
    order = order[xp.argsort(cand_distances[order], kind="stable")]
    order = order[xp.argsort(rows[order], kind="stable")]

    # nonzero lists candidates row by row and every row has at least m of them, so row r's sorted
    # candidates start at the number of candidates in the rows before it.
    counts = candidates.sum(axis=1)
    starts = xp.cumsum(counts) - counts
    chosen = order[starts[:, None] + xp.arange(m)]
    out_ids[:, :m] = cand_ids[chosen]
    out_distances[:, :m] = cand_distances[chosen]
    return out_ids, out_distances


def topk(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of n rows for each query: (ids uint64 [nq, k], distances float32 [nq, k]).

    Ties are broken by the smaller id so that the answer is a function of the data alone, not of row
    order or of where argpartition happened to split.
    """
    _check_k(k)
    xp = module_of(distances)
    distances = xp.asarray(distances, dtype=np.float32)
    ids = xp.asarray(ids, dtype=np.uint64)
    if distances.ndim != 2:
        raise ValueError(f"distances must be 2-D [nq, n], got shape {distances.shape}")
    if ids.shape != (distances.shape[1],):
        raise ValueError(f"ids must have shape ({distances.shape[1]},) to match distances, got {ids.shape}")
    return _select(distances, ids, k)


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Combine (ids, distances) top-k results of the same queries over disjoint rows into one top k.

    Because each part holds its own top k under the same total order, the merged result equals the
    top k of all rows at once, however they were split. Padding slots are given distance NaN and id
    NO_ID while merging so that they sort after every real row, NaN-distance rows included.
    """
    _check_k(k)
    if not parts:
        raise ValueError("merge_topk needs at least one part (the number of queries comes from them)")
    xp = module_of(parts[0][1])
    part_ids = [xp.asarray(ids, dtype=np.uint64) for ids, _ in parts]
    part_distances = [xp.asarray(distances, dtype=np.float32) for _, distances in parts]
    for ids, distances in zip(part_ids, part_distances, strict=True):
        # Part 0 is checked first, so its shape[0] is only read once it is known to be 2-D.
        if ids.ndim != 2 or ids.shape != distances.shape or ids.shape[0] != part_ids[0].shape[0]:
            raise ValueError(
                f"every part must be (ids, distances) of one shape [nq, k_i] with the same nq; "
                f"got ids {ids.shape} and distances {distances.shape}"
            )

    ids = xp.concatenate(part_ids, axis=1)
    distances = xp.concatenate(part_distances, axis=1)
    distances[ids == NO_ID] = np.nan
    out_ids, out_distances = _select(distances, ids, k)
    out_distances[out_ids == NO_ID] = np.inf
    return out_ids, out_distances


def search_block(
    queries: np.ndarray,
    vectors: np.ndarray,
    ids: np.ndarray,
    metric: str,
    k: int,
    block_rows: int = 16384,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `vectors` for each query: (ids uint64 [nq, k], distances float32 [nq, k]).

    Distances are computed `block_rows` rows at a time and folded into a running top k, so a fragment
    of any size needs only an [nq, block_rows] distance buffer, not [nq, n].
    """
    _check_k(k)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    ids = module_of(vectors).asarray(ids, dtype=np.uint64)
    n = len(vectors)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) to match vectors, got {ids.shape}")

    # The first chunk is computed even when the block is empty, so arguments are still validated and
    # the padded [nq, k] result comes out of the same path.
    best = topk(pairwise_distances(queries, vectors[:block_rows], metric), ids[:block_rows], k)
    for start in range(block_rows, n, block_rows):
        stop = start + block_rows
        chunk = topk(pairwise_distances(queries, vectors[start:stop], metric), ids[start:stop], k)
        best = merge_topk([best, chunk], k)
    return best
