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


PREFIX_COLUMNS = 2048
"""Columns whose kth value bounds a wide row's kth value from above (see `_select`)."""
FIRST_BLOCK_ROWS = 2048
"""Rows of the first chunk of `search_block`, whose top k bounds the chunks after it."""
MAX_CANDIDATE_SHARE = 16
"""A bound is used only while it leaves at most 1 / this share of the entries as candidates."""


def _bound_candidates(distances: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, cols), as `nonzero` lists them, of the entries that can be in the top k under a per-row upper
    bound on the kth distance ([nq, 1]; NaN: no bound, every entry of that row), or None when the bound
    leaves too many to sort cheaply."""
    xp = module_of(distances)
    open_rows = xp.isnan(bound[:, 0])
    mask = distances <= xp.where(open_rows[:, None], np.float32(np.inf), bound)
    if bool(open_rows.any()):
        mask[open_rows] = True
    return _sparse_nonzero(mask)


def _sparse_nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`nonzero` of a mostly-False contiguous 2-D mask, or None when more than 1 / MAX_CANDIDATE_SHARE of
    it is True. The 8-entry words holding a True are found first, then the entries in them."""
    xp = module_of(mask)
    flat = mask.reshape(-1)
    whole = flat.size // 8 * 8
    words = xp.nonzero(flat[:whole].view(np.uint64))[0]
    if len(words) * MAX_CANDIDATE_SHARE > flat.size:  # at least one candidate per word: too many already
        return None
    spots = xp.concatenate([(words[:, None] * 8 + xp.arange(8)).reshape(-1), xp.arange(whole, flat.size)])
    spots = spots[flat[spots]]
    if len(spots) * MAX_CANDIDATE_SHARE > flat.size:
        return None
    n = mask.shape[1]
    return spots // n, spots % n


def _pick(rows: np.ndarray, cand_distances: np.ndarray, cand_ids: np.ndarray, nq: int,
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first k candidates of each row by (distance, NaN last; id), from candidates given as flat
    (row, distance, id) triples, any order, at least k per row: stable sorts over all rows at once."""
    xp = module_of(cand_distances)
    # One sort usually does: (row, distance) packed into a uint64 whose order is theirs (-0.0 as 0.0, every
    # NaN equal and last). Only when two candidates of a row share a distance is the id needed as well.
    bits = (cand_distances + np.float32(0)).view(np.uint32)
    key = xp.where(bits >> np.uint32(31) == 1, ~bits, bits | np.uint32(0x80000000))
    key = xp.where(xp.isnan(cand_distances), np.uint32(0xFFFFFFFF), key).astype(np.uint64)
    key |= rows.astype(np.uint64) << np.uint64(32)
    order = xp.argsort(key, kind="stable")
    ordered = key[order]
    if bool((ordered[1:] == ordered[:-1]).any()):
        order = xp.argsort(cand_ids, kind="stable")
        order = order[xp.argsort(key[order], kind="stable")]
    # Sorted by row first, so row r's candidates start at the number of candidates in the rows before it.
    counts = xp.bincount(rows, minlength=nq)
    starts = xp.cumsum(counts) - counts
    chosen = order[starts[:, None] + xp.arange(k)]
    return cand_ids[chosen], cand_distances[chosen]


def _select(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k of each row of `distances`; `ids` is either shared [n] or per row [nq, n].

    argpartition alone cannot be used: among entries equal to the kth value it keeps an arbitrary
    subset, which would make the result depend on row order. So it only finds the kth value; every
    entry <= it (all entries if it is NaN, since NaNs tie with each other) is a candidate, and stable
    sorts over the candidates of all rows, keyed (row, distance, id), fix the order (`_pick`). Candidates
    are normally about nq * k entries, so the sorts stay small next to the [nq, n] distance matrix.

    On wide rows the kth value of the first PREFIX_COLUMNS columns is found instead: it is >= the kth
    value of the whole row (NaN, meaning all entries, when the prefix has fewer than k numbers), so the
    entries <= it still hold the top k, and the partition costs a fraction of one over the whole row.
    The result is the same; only the number of candidates sorted changes, and when the bound keeps
    too many (rows sorted worst first) the whole-row partition is used after all.
    Written against the array module of `distances`, so the same code selects on the GPU.
    """
    xp = module_of(distances)
    nq, n = distances.shape
    out_ids, out_distances = _padding(nq, k, xp)
    m = min(k, n)
    if nq == 0 or m == 0:
        return out_ids, out_distances

    candidates = None
    if m < n:
        prefix = max(PREFIX_COLUMNS, 4 * m)
        if 4 * prefix <= n:
            head = distances[:, :prefix]
            bound = xp.take_along_axis(head, xp.argpartition(head, m - 1, axis=1)[:, m - 1 : m], axis=1)
            candidates = _bound_candidates(distances, bound)
        if candidates is None:
            partitioned = xp.argpartition(distances, m - 1, axis=1)[:, m - 1 : m]
            kth = xp.take_along_axis(distances, partitioned, axis=1)
            candidates = xp.nonzero((distances <= kth) | xp.isnan(kth))
    else:
        candidates = xp.nonzero(xp.ones((nq, n), dtype=bool))

    rows, cols = candidates
    cand_ids = ids[rows, cols] if ids.ndim == 2 else ids[cols]
    out_ids[:, :m], out_distances[:, :m] = _pick(rows, distances[rows, cols], cand_ids, nq, m)
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

    Distances are computed up to `block_rows` rows at a time and folded into a running top k, so a
    fragment of any size needs only an [nq, block_rows] distance buffer, not [nq, n]. Only entries that
    can still enter the running top k are sorted (`_fold`; for dot, `_fold_dot` does not even form the
    distances of the others); the result is the same as `topk` over all rows at once.
    """
    _check_k(k)
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    ids = module_of(vectors).asarray(ids, dtype=np.uint64)
    n = len(vectors)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) to match vectors, got {ids.shape}")

    # The first chunk is computed even when the block is empty, so arguments are still validated and
    # the padded [nq, k] result comes out of the same path. It is kept small: its top k only has to bound
    # the rest, which is folded in by chunks that double up to block_rows, so no chunk is larger than the
    # rows its bound was taken from and the candidates per chunk stay few.
    start = min(block_rows, max(FIRST_BLOCK_ROWS, 4 * k))
    best = topk(pairwise_distances(queries, vectors[:start], metric), ids[:start], k)
    while start < n:
        stop = start + min(block_rows, start)
        if metric == "dot":
            best = _fold_dot(best, queries, vectors[start:stop], ids[start:stop], k)
        else:
            best = _fold(best, pairwise_distances(queries, vectors[start:stop], metric), ids[start:stop], k)
        start = stop
    return best


def _fold(best: tuple[np.ndarray, np.ndarray], distances: np.ndarray, ids: np.ndarray,
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """merge_topk([best, topk(distances, ids, k)], k), cheaper once `best` is full.

    A row whose running top k holds k real rows with numeric distances cannot gain an entry farther than
    its kth distance (nor a NaN), so only the chunk's entries <= that distance are candidates: usually a
    handful per row, found by one comparison instead of a partition of the chunk.
    """
    xp = module_of(distances)
    best_ids, best_distances = best
    if k == 0 or distances.shape[1] == 0:
        return best
    full = (best_ids[:, k - 1 : k] != NO_ID) & ~xp.isnan(best_distances[:, k - 1 : k])
    candidates = None
    if bool(full.any()):
        candidates = _bound_candidates(distances, xp.where(full, best_distances[:, k - 1 : k], np.float32(np.nan)))
    if candidates is None:
        return merge_topk([best, topk(distances, ids, k)], k)
    rows, cols = candidates
    return _merge_candidates(best, rows, distances[rows, cols], ids[cols], k)


def _merge_candidates(best: tuple[np.ndarray, np.ndarray], rows: np.ndarray, distances: np.ndarray,
                      ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top k merged with candidates given as (row, distance, id) triples."""
    xp = module_of(distances)
    best_ids, best_distances = best
    nq = len(best_ids)
    # The running top k joins the candidates with its padding slots as NaN, so they sort after every real
    # row (NaN-distance rows included), as in merge_topk; every row then has at least k candidates.
    kept = xp.where(best_ids == NO_ID, np.float32(np.nan), best_distances)
    out_ids, out_distances = _pick(
        xp.concatenate([rows, xp.repeat(xp.arange(nq), k)]),
        xp.concatenate([distances, kept.ravel()]),
        xp.concatenate([ids, best_ids.ravel()]),
        nq, k,
    )
    out_distances[out_ids == NO_ID] = np.inf
    return out_ids, out_distances


def _fold_dot(best: tuple[np.ndarray, np.ndarray], queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """`_fold` of the chunk's dot distances, without computing 1 - q.x for the whole chunk.

    The distance fl(1 - p) never increases as the product p grows, so every entry with distance <= the
    row's kth distance T has p >= 1 - T less a rounding margin; the products are compared against that
    (a slightly low threshold only adds candidates), and the candidates' distances, computed exactly as
    `pairwise_distances` computes them, are then held to <= T. Rows not yet full, or with an infinite
    kth distance, take the general route.
    """
    xp = module_of(vectors)
    best_ids, best_distances = best
    if k == 0 or len(vectors) == 0:
        return best
    kth = best_distances[:, k - 1 : k]
    if not (bool((best_ids[:, k - 1] != NO_ID).all()) and bool(xp.isfinite(kth).all())):
        return _fold(best, pairwise_distances(queries, vectors, "dot"), ids, k)
    # Same conversions and product as pairwise_distances, so the products (and distances) are identical.
    products = xp.ascontiguousarray(queries, dtype=np.float32) @ xp.ascontiguousarray(vectors, dtype=np.float32).T
    wide = kth.astype(np.float64)
    floor = ((1.0 - wide) - (xp.abs(wide) + 2.0) * 2.0**-20).astype(np.float32)
    candidates = _sparse_nonzero(products >= xp.nextafter(floor, np.float32(-np.inf)))
    if candidates is None:
        return _fold(best, xp.subtract(np.float32(1), products, out=products), ids, k)
    rows, cols = candidates
    distances = xp.subtract(np.float32(1), products[rows, cols])
    keep = distances <= kth[rows, 0]
    return _merge_candidates(best, rows[keep], distances[keep], ids[cols[keep]], k)
