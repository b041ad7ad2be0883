"""The build-time rule that picks an index's probe count: measure recall on the table's own rows.

A full build draws `SAMPLE_QUERIES` rows of the table (seeded by the build's seed) and uses their vectors as
queries. While the build streams over the table to assign rows to partitions, `RecallProbe.observe` folds
each batch into every sample query's exact top k (the query's own row excluded) and remembers the partition
each neighbour was filed under. After the pass, the recall of an IVF search probing n partitions is the share
of those exact neighbours whose partition is among the query's n nearest centroids (a neighbour in a probed
partition is always found: nothing outside the exact top k can outrank it there). So the smallest n that
reaches a target is a quantile of the neighbours' partition ranks, found exactly, with no trial searches.

That is the recall of the partitioning, which is what nprobes controls; SQ8/FP16 rarely change a top 10
and PQ is re-ranked (params.py), so the served recall is close to it.

Rows used as queries are easier than unseen queries (a row sits where the data is dense, and its own
neighbourhood was clustered with it), so the sample must reach a higher bar than the table's target:
`sample_target` = target + (1 - target) / 2 (0.975 for the default 0.95), i.e. half the allowed misses.

Graph codecs (hnsw_flat, hnsw_sq) lose recall inside a partition too: a graph's walk visits `ef` candidates and
may miss a true neighbour. So their full build also measures the breadth: each partition's graph, once built,
is searched for the sample queries that probe it (at the measured probe count) at every ef of `EF_LADDER`
(`observe_graph`), and `tune_ef` picks the smallest ef whose recall@k on the sample reaches the same
`sample_target`. Where no ef reaches it (hnsw_sq's 8-bit codes lose a little that no breadth buys back), it
picks the smallest ef within `EF_PLATEAU` of the best the ladder measured: past it, more breadth buys nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

import kernels
from appliance.storage.schema import VECTOR_COLUMN, vectors_to_numpy
from appliance.storage.tables import TableSnapshot

SAMPLE_QUERIES = 200
K = 10
EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
EF_PLATEAU = 0.0025  # 5 of the sample's 2,000 neighbours: below it, a wider walk is noise, not recall


def sample_target(target: float) -> float:
    """The recall the row sample must reach so unseen queries reach `target` (see the module docstring)."""
    return target + (1.0 - target) / 2


class RecallProbe:
    """Exact top-k neighbours of sampled rows, and their partitions, gathered batch by batch."""

    def __init__(self, queries: np.ndarray, query_ids: np.ndarray, metric: str, k: int = K) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.query_ids = np.asarray(query_ids, dtype=np.uint64)
        self.metric = metric
        self.k = k
        nq = len(self.queries)
        self._ids = np.full((nq, k + 1), kernels.NO_ID, dtype=np.uint64)
        self._dists = np.full((nq, k + 1), np.inf, dtype=np.float32)
        self._label_of: dict[int, int] = {}
        self._probing: list[np.ndarray] | None = None  # per partition, the sample queries that probe it
        self._graph_top: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per ef: merged top k + 1 so far

    @classmethod
    def sample(cls, snap: TableSnapshot, rows: int, seed: int, metric: str, n: int = SAMPLE_QUERIES,
               k: int = K) -> RecallProbe | None:
        """A probe of `n` rows drawn with `seed`; None when the table is too small to measure anything."""
        if rows < k + 2:
            return None
        rng = np.random.default_rng([seed, 0x7EC])  # not the training sample's stream
        picks = np.sort(rng.choice(rows, size=min(n, rows), replace=False))
        table = snap.dataset.take(picks, columns=[VECTOR_COLUMN, "_rowid"])
        return cls(vectors_to_numpy(table.column(VECTOR_COLUMN)), table.column("_rowid").to_numpy(), metric, k)

    def observe(self, ids: np.ndarray, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Fold one batch of the table (row ids, vectors, the partition each was assigned to)."""
        ids = np.asarray(ids, dtype=np.uint64)
        best_ids, best_d = kernels.search_block(self.queries, vectors, ids, self.metric, self.k + 1)
        found = best_ids[best_ids != kernels.NO_ID]
        if len(found):
            position = np.searchsorted(ids, found) if _ascending(ids) else None
            if position is None:
                index = {int(i): j for j, i in enumerate(ids)}
                position = np.array([index[int(i)] for i in found])
            for row_id, label in zip(found.tolist(), labels[position].tolist(), strict=True):
                self._label_of[row_id] = label
        self._ids, self._dists = kernels.merge_topk([(self._ids, self._dists), (best_ids, best_d)], self.k + 1)

    def neighbour_labels(self) -> np.ndarray:
        """[nq, k] partitions of each query's exact k nearest other rows (-1 where fewer exist)."""
        out = np.full((len(self.queries), self.k), -1, dtype=np.int64)
        for q, (row, own) in enumerate(zip(self._ids, self.query_ids, strict=True)):
            others = self._others(row, own)
            out[q, : len(others)] = [self._label_of[i] for i in others]
        return out

    def tune(self, centroids: np.ndarray, target: float) -> dict[str, Any]:
        """The smallest nprobes whose recall@k on the sample reaches `sample_target(target)`, with the
        recall it measures there."""
        nlist = len(centroids)
        labels = self.neighbour_labels()
        order = kernels.probe(self.queries, centroids, nlist, metric=self.metric)
        rank_of = np.empty_like(order)
        np.put_along_axis(rank_of, order, np.arange(nlist)[None, :].repeat(len(order), 0), axis=1)
        valid = labels >= 0
        ranks = np.sort(np.take_along_axis(rank_of, np.where(valid, labels, 0), axis=1)[valid])
        goal = sample_target(target)
        if len(ranks) == 0:
            nprobes, recall = 1, 1.0
        else:
            need = min(len(ranks), max(1, math.ceil(goal * len(ranks) - 1e-9)))
            nprobes = min(nlist, int(ranks[need - 1]) + 1)
            recall = float(np.count_nonzero(ranks < nprobes) / len(ranks))
        return {"target_recall": target, "sample_target": round(goal, 6), "nprobes": nprobes,
                "sample_recall": round(recall, 4), "sample_queries": len(self.queries), "k": self.k}


    def probe_graphs(self, centroids: np.ndarray, nprobes: int) -> None:
        """Before the graphs are searched (`observe_graph`): which sample queries probe which partition, at
        `nprobes` (the probe count searches use)."""
        nlist = len(centroids)
        order = kernels.probe(self.queries, centroids, min(nprobes, nlist), metric=self.metric)
        self._probing = [np.flatnonzero((order == p).any(axis=1)) for p in range(nlist)]
        empty = (np.full((len(self.queries), self.k + 1), kernels.NO_ID, dtype=np.uint64),
                 np.full((len(self.queries), self.k + 1), np.inf, dtype=np.float32))
        self._graph_top = dict.fromkeys(EF_LADDER, empty)

    def observe_graph(self, partition: int, search: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]
                      ) -> None:
        """Search one partition's graph for the sample queries that probe it, at every ef of the ladder;
        `search(queries, k, ef)` answers (ids, distances) [nq, k] (`codec.search_graph` over the graph)."""
        if self._probing is None:
            raise RuntimeError("probe_graphs must come before observe_graph")
        rows = self._probing[partition]
        if not len(rows):
            return
        for ef, (ids, dists) in self._graph_top.items():
            got_ids, got_d = search(self.queries[rows], self.k + 1, ef)
            part_ids = np.full_like(ids, kernels.NO_ID)
            part_d = np.full_like(dists, np.inf)
            part_ids[rows], part_d[rows] = got_ids, got_d
            self._graph_top[ef] = kernels.merge_topk([(ids, dists), (part_ids, part_d)], self.k + 1)

    def tune_ef(self, target: float) -> dict[str, Any]:
        """The smallest ef of the ladder whose recall@k on the sample, through the graphs observed, reaches
        `sample_target(target)` (or, where none does, comes within EF_PLATEAU of the best one), with the
        recall of every ef measured."""
        truth = [self._others(row, own) for row, own in zip(self._ids, self.query_ids, strict=True)]
        total = sum(len(t) for t in truth)
        recalls = {}
        for ef, (ids, _) in self._graph_top.items():
            hits = sum(len(set(self._others(row, own)) & set(t))
                       for row, own, t in zip(ids, self.query_ids, truth, strict=True))
            recalls[ef] = hits / total if total else 1.0
        goal = sample_target(target)
        reach = min(goal, max(recalls.values()) - EF_PLATEAU)
        ef = min(e for e, r in recalls.items() if r >= reach)
        return {"ef": ef, "ef_sample_recall": round(recalls[ef], 4),
                "ef_recalls": [[e, round(r, 4)] for e, r in sorted(recalls.items())]}

    def _others(self, row: np.ndarray, own: int) -> list[int]:
        """A top k + 1 row's first k ids that are not the query's own row."""
        return [int(i) for i in row if i != own and i != kernels.NO_ID][: self.k]


def _ascending(ids: np.ndarray) -> bool:
    return len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1]))
