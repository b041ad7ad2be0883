"""Scanning one IVF partition on an executor: its objects (base and deltas) through a loader, then the codec."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from appliance.index import codec
from appliance.index.manifest import IndexManifest, ObjectRef
from appliance.index.store import IndexStore
from appliance.lru import Lru

Loader = Callable[[ObjectRef], dict[str, np.ndarray]]


class PartitionScanner:
    """Reads manifests (small, immutable, kept in a bounded LRU) and partition objects through `load`,
    which the executor backs with its RAM/NVMe cache."""

    def __init__(self, indexes: IndexStore, load: Loader | None = None, manifests: int = 64) -> None:
        self._indexes = indexes
        self._load: Loader = load or (lambda ref: indexes.get_object(ref)[0])
        self._manifests: Lru[IndexManifest] = Lru(manifests)

    def manifest(self, table: str, index_version: int) -> IndexManifest:
        return self._manifests.get_or_load((table, index_version),
                                           lambda: self._indexes.manifest(table, index_version))

    def scan(self, table: str, index_version: int, partition: int, queries: np.ndarray, k: int
             ) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids, distances) of one partition's top k for every query, and the rows scanned."""
        return self.scan_many(table, index_version, [(partition, None)], queries, k)

    def scan_many(self, table: str, index_version: int, work: list[tuple[int, Sequence[int] | None]],
                  queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Top k over several partitions at once, each scanned only for the queries that probe it (None:
        all): (ids, distances) [nq, k] and the rows scanned.

        A query probes tens of partitions of a few hundred rows each; `kernels.scan_lists` scans each
        object's rows for its queries only and picks the top k of all of them at once.
        """
        manifest = self.manifest(table, index_version)
        params = self._load(manifest.centroids)
        lists: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        for partition, subset in work:
            if not 0 <= partition < manifest.nlist:
                raise ValueError(f"index {table} v{index_version} has no partition {partition}")
            chosen = None if subset is None else np.asarray(subset, dtype=np.intp)
            lists += [(obj["ids"], obj["codes"], chosen) for obj in map(self._load, manifest.partitions[partition])
                      if len(obj["ids"])]
        rows = sum(len(ids) for ids, _, _ in lists)
        prepared = codec.prepare_queries(queries, manifest.metric)
        ids, dists = codec.scan(manifest.codec, prepared, lists, params, manifest.metric, k)
        return ids, dists, rows
