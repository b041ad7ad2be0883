"""The query node's cache of payload columns: what a search returns besides row ids and distances.

Every search ends by reading the payload columns of its k results from the pinned table version. Lance
reads them row by row (`_take_rows`: about 1 ms for 10 rows on a local folder, range GETs on S3), for
rows that the next searches ask for again. This cache keeps, per fragment, the fragment's live row ids
(sorted) and the requested columns in that order, and answers from them with a binary search.

A fragment's rows are immutable under its cache key (`storage.tables.fragment_cache_key`: its data files,
its deletion file and overlays, each a new file on any change), so nothing is ever invalidated: an
update, delete or compaction makes new keys, and old entries age out of the byte-bounded LRU. A fragment
whose columns would take more than a share of the budget is never cached; its rows are read with Lance as
before.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa

from appliance.cache.ram import RamTier
from appliance.lru import Lru
from appliance.storage.tables import TableSnapshot, fragment_cache_key

MAX_SHARE = 8
"""A fragment's columns are cached only when they take at most 1 / MAX_SHARE of the budget."""


class PayloadCache:
    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self._ram = RamTier(self.budget)
        self._lock = threading.Lock()
        self._too_large: Lru[bool] = Lru(4096)  # keys measured once and found too large: not read again
        self._keys: Lru[dict[int, str]] = Lru(256)  # per table version (its identity): fragment id -> key

    def take(self, snapshot: TableSnapshot, row_ids: np.ndarray, columns: list[str]) -> dict[int, dict[str, Any]]:
        """`snapshot.take(row_ids, columns)`, from the cache where it can: payload per live row id."""
        if not self.budget or not columns or not len(row_ids):
            return snapshot.take(row_ids, columns)
        wanted = np.unique(np.asarray(row_ids, dtype=np.uint64))
        found: dict[int, dict[str, Any]] = {}
        uncached = []
        for fragment_id, (lo, hi) in snapshot.fragment_row_ranges().items():
            inside = wanted[(wanted >= lo) & (wanted <= hi)]
            if not len(inside):
                continue
            block = self._fragment(snapshot, fragment_id, columns)
            if block is None:
                uncached.append(inside)
                continue
            ids, table = block
            at = np.minimum(np.searchsorted(ids, inside), max(len(ids) - 1, 0))
            hit = ids[at] == inside if len(ids) else np.zeros(len(inside), bool)
            found.update(zip(inside[hit].tolist(), table.take(pa.array(at[hit])).to_pylist(), strict=True))
        if uncached:
            found.update(snapshot.take(np.concatenate(uncached), columns))
        return found

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._ram.stats()

    def _fragment(self, snapshot: TableSnapshot, fragment_id: int, columns: list[str]
                  ) -> tuple[np.ndarray, pa.Table] | None:
        """(sorted live row ids, the columns in that order) of one fragment, or None when too large."""
        key = f"{self._fragment_key(snapshot, fragment_id)}?columns={','.join(columns)}"
        with self._lock:
            known, value = self._ram.get(key, pin=False)
        if known:
            return value
        if self._too_large.get(key):
            return None
        table = snapshot.dataset.get_fragment(fragment_id).to_table(columns=columns, with_row_id=True)
        ids = table.column("_rowid").to_numpy().astype(np.uint64)
        order = np.argsort(ids, kind="stable")
        value = (ids[order], table.select(columns).take(pa.array(order)))
        nbytes = value[0].nbytes + value[1].nbytes
        if nbytes * MAX_SHARE > self.budget:
            self._too_large.put(key, True)
            return None
        with self._lock:
            self._ram.put(key, value, nbytes, pin=False)
        return value

    def _fragment_key(self, snapshot: TableSnapshot, fragment_id: int) -> str:
        """The fragment's cache key, worked out once per table version (it reads the fragment's metadata)."""
        identity = snapshot.identity()
        keys = self._keys.get(identity) if identity else None
        if keys is None:
            keys = {}
            if identity:
                self._keys.put(identity, keys)
        key = keys.get(fragment_id)
        if key is None:
            key = keys[fragment_id] = fragment_cache_key(snapshot.name, snapshot.dataset.get_fragment(fragment_id))
        return key
