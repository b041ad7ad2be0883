"""Finishing an IVF plan's candidates on the query node: drop deleted rows, post-filter, refine, keep k."""

from __future__ import annotations

import numpy as np

import kernels
from appliance.planner.plan import SearchPlan
from appliance.storage.tables import TableSnapshot
from kernels.refine import candidate_distances


def finish_candidates(snapshot: TableSnapshot, plan: SearchPlan, queries: np.ndarray, ids: np.ndarray,
                      dists: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The top k (ids, distances) per query, and whether some query came up short while more candidates
    may exist (its candidate list was full), in which case the caller should fetch wider."""
    valid = ids != kernels.NO_ID
    full = valid[:, -1]
    candidates = np.unique(ids[valid])
    keep = np.ones(len(candidates), bool)
    alive_ids = vectors = None
    if plan.refine_factor > 0 or plan.verify_alive:
        alive_ids, vectors = snapshot.vectors_of(candidates)
        order = np.argsort(alive_ids)
        alive_ids, vectors = alive_ids[order], vectors[order]
        keep &= np.isin(candidates, alive_ids)
    if plan.postfilter and plan.filter is not None:
        keep &= np.isin(candidates, snapshot.matching_row_ids(plan.filter))
    mask = valid & np.isin(ids, candidates[keep])
    if plan.refine_factor > 0 and alive_ids is not None and vectors is not None and len(alive_ids):
        positions = np.clip(np.searchsorted(alive_ids, ids), 0, len(alive_ids) - 1)
        exact = candidate_distances(queries, vectors[positions], plan.metric)
        dists = np.where(mask, exact, np.inf).astype(np.float32)
    ids = np.where(mask, ids, kernels.NO_ID)
    dists = np.where(mask, dists, np.inf).astype(np.float32)
    ids, dists = kernels.merge_topk([(ids, dists)], plan.k)
    short = ((ids != kernels.NO_ID).sum(axis=1) < plan.k) & full
    return ids, dists, bool(short.any())
