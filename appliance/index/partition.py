"""Scanning one IVF partition on an executor: its objects (base and deltas) through a loader, then the codec."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        """(ids, distances) of one partition's top k for every query, and the rows scanned."""
        return self.scan_many(table, index_version, [(partition, None)], queries, k)

    def scan_many(self, table: str, index_version: int, work: list[tuple[int, Sequence[int] | None]],
                  queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Top k over several partitions at once, each scanned only for the queries that probe it (None:
        all): (ids, distances) [nq, k] and the rows scanned.

        A query probes tens of partitions of a few hundred rows each; a top-k and a merge per partition
        would cost more than the distances themselves. So each partition object's distances go into one
        [nq, rows] matrix (NaN where a query does not probe it) and a single top-k picks from it.
        """
        manifest = self.manifest(table, index_version)
        params = self._load(manifest.centroids)
        nq = len(queries)
        prepared = codec.prepare_queries(queries, manifest.metric)
        blocks, id_blocks, rows = [], [], 0
        for partition, subset in work:
            if not 0 <= partition < manifest.nlist:
                raise ValueError(f"index {table} v{index_version} has no partition {partition}")
            chosen = None if subset is None else np.asarray(subset, dtype=np.intp)
            for ref in manifest.partitions[partition]:
                obj = self._load(ref)
                if len(obj["ids"]) == 0:
                    continue
                probing = prepared if chosen is None else prepared[chosen]
                dists = codec.distances(manifest.codec, probing, obj["codes"], params, manifest.metric)
                if chosen is not None:
                    full = np.full((nq, dists.shape[1]), np.nan, dtype=np.float32)
                    full[chosen] = dists
                    dists = full
                blocks.append(dists)
                id_blocks.append(obj["ids"])
                rows += len(obj["ids"])
        if not blocks:
            return (np.full((nq, k), kernels.NO_ID, np.uint64), np.full((nq, k), np.inf, np.float32), 0)
        ids, dists = kernels.topk(np.concatenate(blocks, axis=1), np.concatenate(id_blocks), k)
        # NaN marks rows a query did not probe; a stored vector is finite, so its distance never is NaN.
        unprobed = np.isnan(dists)
        ids[unprobed], dists[unprobed] = kernels.NO_ID, np.inf
        return ids, dists, rows
