"""Runs a batch of search tasks (fragment flat scans, IVF partition scans) and keeps the top k.

Everything a task scans comes through the executor's tiered cache, under keys that name immutable objects:
a fragment's data files and deletion file at the pinned version, an index object's id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from lance.fragment import LanceFragment

import kernels
from appliance.cache import TieredCache
from appliance.errors import InvalidInput
from appliance.index.manifest import ObjectRef
from appliance.index.partition import PartitionScanner
from appliance.index.store import CorruptIndexObject, IndexStore
from appliance.lru import Lru
from appliance.planner.plan import FRAGMENT, PARTITION, Task
from appliance.storage.tables import TableSnapshot, TableStore, fragment_cache_key, read_fragment_vectors

log = logging.getLogger("appliance.executor")


@dataclass
class BatchStats:
    tasks: int = 0
    rows_scanned: int = 0
    seconds: float = 0.0


class TaskRunner:
    """Runs each task kind with one small method; results of all tasks are merged here."""

    def __init__(self, store: TableStore, indexes: IndexStore, cache: TieredCache) -> None:
        self.cache = cache
        self._store = store
        self._indexes = indexes
        self._snapshots: Lru[TableSnapshot] = Lru(64)
        self._partitions = PartitionScanner(indexes, load=self._index_object)

    def run(
        self, tasks: list[Task], queries: np.ndarray, k: int, metric: str, predicate: str | None,
        check: Callable[[], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, BatchStats]:
        """Top-k over all tasks' rows, merged here so only nq x k results go back over the network.

        The filter applies to fragment tasks (exact prefilter); partition tasks return unfiltered
        candidates, which the query node post-filters. `check` runs before every task (and every index's
        partitions) and raises to stop the batch: its deadline passed, or the query node hung up.
        """
        check = check or _no_check
        started = time.perf_counter()
        stats = BatchStats()
        unknown = sorted({t.kind for t in tasks} - {FRAGMENT, PARTITION})
        if unknown:
            raise InvalidInput(f"this executor does not run {', '.join(map(repr, unknown))} tasks")
        parts = []
        for task in tasks:
            if task.kind == FRAGMENT:
                check()
                ids, dists, rows = self._fragment(task, queries, k, metric, predicate)
                parts.append((ids, dists))
                stats.rows_scanned += rows
        for (table, index_version), group in _by_index(tasks).items():
            check()
            ids, dists, rows = self._scan_partitions(table, index_version, group, queries, k)
            parts.append((ids, dists))
            stats.rows_scanned += rows
        stats.tasks = len(tasks)
        if not parts:
            parts.append(_no_rows(queries, metric, k))
        ids, dists = kernels.merge_topk(parts, k) if len(parts) > 1 else parts[0]
        stats.seconds = time.perf_counter() - started
        return ids, dists, stats

    def _scan_partitions(self, table: str, index_version: int, group: list[Task], queries: np.ndarray, k: int
                         ) -> tuple[np.ndarray, np.ndarray, int]:
        """One pass over the partitions of one index version. Manifests are cached by (table, version),
        which a dropped and rebuilt index can reuse (IndexStore numbers versions from 1 again once all
        are deleted): a cached manifest then names objects that are gone. So a missing object costs the
        cached manifests, and the scan runs once more on manifests read afresh."""
        work = [(t.partition, t.queries) for t in group]
        ef = max(t.ef for t in group)  # a plan gives all its partition tasks the same ef (0: the default)
        try:
            return self._partitions.scan_many(table, index_version, work, queries, k, ef)
        except CorruptIndexObject as exc:
            log.warning("index %s v%d: %s; reading its manifest again", table, index_version, exc.message)
            self._partitions = PartitionScanner(self._indexes, load=self._index_object)
            return self._partitions.scan_many(table, index_version, work, queries, k, ef)

    def _snapshot(self, table: str, version: int) -> TableSnapshot:
        return self._snapshots.get_or_load((table, version), lambda: self._store.snapshot(table, version))

    def _fragment(self, task: Task, queries: np.ndarray, k: int, metric: str, predicate: str | None
                  ) -> tuple[np.ndarray, np.ndarray, int]:
        """Flat scan of one fragment's live rows (those matching the filter, ids >= min_row_id).

        The cache holds the fragment's unfiltered rows, so every filter reuses them; a filter costs only the
        ids of its matching rows, read from the payload columns without the vectors and cached as well.
        """
        snapshot = self._snapshot(task.table, task.version)
        fragment = snapshot.dataset.get_fragment(task.fragment_id)
        if fragment is None:
            return (*_no_rows(queries, metric, k), 0)
        key = fragment_cache_key(task.table, fragment)

        def load() -> dict[str, np.ndarray]:
            ids, vectors = read_fragment_vectors(snapshot, task.fragment_id)
            return {"ids": ids, "vectors": vectors}

        with self.cache.pinned(key, load) as rows:
            ids, vectors = rows["ids"], rows["vectors"]
            keep = ids >= task.min_row_id if task.min_row_id else None
            if predicate is not None:
                matching = self.cache.get(f"{key}?filter={predicate}",
                                          lambda: {"ids": matching_row_ids(fragment, predicate)})["ids"]
                keep = np.isin(ids, matching) if keep is None else keep & np.isin(ids, matching)
            if keep is not None:
                ids, vectors = ids[keep], vectors[keep]
            found, dists = kernels.search_block(queries, vectors, ids, metric, k)
        return found, dists, len(ids)

    def _index_object(self, ref: ObjectRef) -> dict[str, np.ndarray]:
        """An index object (centroids, partition, delta) through the cache; its storage key is a fresh
        uuid per object, so it is immutable."""
        return self.cache.get(f"index/{ref.key}", lambda: self._indexes.get_object(ref)[0])


def _no_check() -> None:
    return None


def _by_index(tasks: list[Task]) -> dict[tuple[str, int], list[Task]]:
    """Partition tasks grouped by the index version they read: each group is scanned in one pass."""
    groups: dict[tuple[str, int], list[Task]] = {}
    for task in tasks:
        if task.kind == PARTITION:
            groups.setdefault((task.table, task.index_version), []).append(task)
    return groups


def _no_rows(queries: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (padding-only) top k of nothing, in the shape every part of a merge has."""
    return kernels.search_block(queries, np.empty((0, queries.shape[1]), np.float32), np.empty(0, np.uint64),
                                metric, k)


def matching_row_ids(fragment: LanceFragment, predicate: str) -> np.ndarray:
    """Ids of the fragment's live rows matching a filter, read from the columns the filter names only."""
    table = fragment.to_table(columns=[], filter=predicate, with_row_id=True)
    return table.column("_rowid").to_numpy().astype(np.uint64, copy=False)
