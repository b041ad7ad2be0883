"""The query node's view of published indexes: manifest and centroids, version-checked (only the query
node plans, so only it keeps one).

The pointer is re-read (one GET: IndexStore.pointer) at most every `refresh_seconds`; a slightly older
index version is still correct to plan with, because rows it does not cover are flat-scanned by the plan
and its objects stay readable until cleanup. Manifests and centroids are immutable per version, so they
are cached by it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from threading import Lock

import numpy as np

from appliance.index.manifest import IndexManifest
from appliance.index.store import IndexStore
from appliance.lru import Lru


@dataclass(frozen=True)
class LoadedIndex:
    manifest: IndexManifest
    centroids: np.ndarray


class IndexCatalog:
    def __init__(self, indexes: IndexStore, refresh_seconds: float = 0.5) -> None:
        self.indexes = indexes
        self._refresh = refresh_seconds
        self._pointers: dict[str, tuple[float, int | None]] = {}
        self._loaded: Lru[LoadedIndex] = Lru(64)
        self._lock = Lock()

    def current(self, table: str) -> LoadedIndex | None:
        version = self._current_version(table)
        if version is None:
            return None
        return self._loaded.get_or_load((table, version), lambda: self._load(table, version))

    def forget(self, table: str) -> None:
        """Drop the cached pointer, so the next query sees a just-published (or dropped) index."""
        with self._lock:
            self._pointers.pop(table, None)

    def _current_version(self, table: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            cached = self._pointers.get(table)
        if cached is not None and now - cached[0] < self._refresh:
            return cached[1]
        version = self.indexes.current_version(table)
        with self._lock:
            self._pointers[table] = (now, version)
        return version

    def _load(self, table: str, version: int) -> LoadedIndex:
        manifest = self.indexes.manifest(table, version)
        arrays, _ = self.indexes.get_object(manifest.centroids)
        return LoadedIndex(manifest, np.ascontiguousarray(arrays["centroids"], dtype=np.float32))
