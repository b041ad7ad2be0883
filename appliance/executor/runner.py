"""Runs a batch of search tasks: read each fragment, compute exact distances, keep the top k."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from threading import Lock

import numpy as np

import kernels
from appliance.planner.plan import Task
from appliance.storage.tables import TableSnapshot, TableStore, read_fragment_vectors


@dataclass
class BatchStats:
    tasks: int = 0
    rows_scanned: int = 0
    seconds: float = 0.0
    per_task: list[dict[str, object]] = field(default_factory=list)


class SnapshotCache:
    """Open Lance dataset handles by (table, version); opening one reads a manifest from storage."""

    def __init__(self, store: TableStore, capacity: int = 64) -> None:
        self._store = store
        self._capacity = capacity
        self._entries: OrderedDict[tuple[str, int], TableSnapshot] = OrderedDict()
        self._lock = Lock()

    def get(self, table: str, version: int) -> TableSnapshot:
        key = (table, version)
        with self._lock:
            snap = self._entries.get(key)
            if snap is not None:
                self._entries.move_to_end(key)
                return snap
        snap = self._store.snapshot(table, version)
        with self._lock:
            self._entries[key] = snap
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return snap


class TaskRunner:
    def __init__(self, store: TableStore) -> None:
        self._snapshots = SnapshotCache(store)

    def run(
        self, tasks: list[Task], queries: np.ndarray, k: int, metric: str, predicate: str | None
    ) -> tuple[np.ndarray, np.ndarray, BatchStats]:
        """Top-k over all tasks' rows, merged here so only nq x k results go back over the network."""
        started = time.perf_counter()
        stats = BatchStats()
        parts = []
        for task in tasks:
            snap = self._snapshots.get(task.table, task.version)
            ids, vectors = read_fragment_vectors(snap, task.fragment_id, predicate)
            parts.append(kernels.search_block(queries, vectors, ids, metric, k))
            stats.tasks += 1
            stats.rows_scanned += len(ids)
        if not parts:
            parts.append(kernels.search_block(queries, np.empty((0, queries.shape[1]), np.float32),
                                              np.empty(0, np.uint64), metric, k))
        ids, dists = kernels.merge_topk(parts, k)
        stats.seconds = time.perf_counter() - started
        return ids, dists, stats
