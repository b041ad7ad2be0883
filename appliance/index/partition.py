"""Scanning one IVF partition on an executor: its objects (base and deltas) through a loader, then the codec."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import kernels
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
        """(ids, distances) of the partition's top k for every query, and the rows scanned."""
        manifest = self.manifest(table, index_version)
        if not 0 <= partition < manifest.nlist:
            raise ValueError(f"index {table} v{index_version} has no partition {partition}")
        params = self._load(manifest.centroids)
        parts, rows = [], 0
        for ref in manifest.partitions[partition]:
            obj = self._load(ref)
            parts.append(codec.scan(manifest.codec, queries, obj["codes"], obj["ids"], k, params, manifest.metric))
            rows += len(obj["ids"])
        if not parts:
            return (np.full((len(queries), k), kernels.NO_ID, np.uint64),
                    np.full((len(queries), k), np.inf, np.float32), 0)
        ids, dists = kernels.merge_topk(parts, k)
        return ids, dists, rows
