"""The RAM tier: decoded values ready for the kernels, bounded by their bytes, least recently used out first."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from appliance.cache.stats import hit_rate


@dataclass
class _Entry:
    value: Any
    nbytes: int
    pins: int = 0


class RamTier:
    """An LRU map bounded by the bytes of its values, whose pinned entries are never evicted.

    A running task pins what it scans: evicting it from under the task would not free the memory (the task
    still holds it) but would let a second copy in, so the real footprint would outgrow the budget. When
    the pinned entries leave no room for a new value, the value is not cached at all, so the budget holds
    even when every entry is in use.

    Not thread-safe on purpose: `TieredCache` calls it under the one lock that also guards single flight,
    so a lookup and the registration of a fetch are a single atomic step.
    """

    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rejected = 0  # values served without being cached: larger than the room the pins leave

    def get(self, key: str, pin: bool) -> tuple[bool, Any]:
        """(found, value); a hit becomes the most recently used entry and is pinned when asked."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return False, None
        self.hits += 1
        self._entries.move_to_end(key)
        entry.pins += pin
        return True, entry.value

    def pin(self, key: str) -> bool:
        """Pin an entry another thread just added (not a lookup, so not counted); False when it is absent."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        entry.pins += 1
        return True

    def unpin(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pins:
            entry.pins -= 1

    def put(self, key: str, value: Any, nbytes: int, pin: bool) -> bool:
        """Cache a value, evicting unpinned entries oldest first; False (and nothing evicted) when it cannot
        fit beside the pinned ones."""
        if key in self._entries:
            return self.pin(key) if pin else True
        pinned = sum(e.nbytes for e in self._entries.values() if e.pins)
        if pinned + nbytes > self.budget:
            self.rejected += 1
            return False
        for victim in [k for k, e in self._entries.items() if not e.pins]:
            if self.bytes + nbytes <= self.budget:
                break
            self.bytes -= self._entries.pop(victim).nbytes
            self.evictions += 1
        self._entries[key] = _Entry(value, nbytes, int(pin))
        self.bytes += nbytes
        return True

    def stats(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": hit_rate(self.hits, self.misses),
                "bytes": self.bytes, "budget": self.budget, "entries": len(self._entries),
                "evictions": self.evictions, "rejected": self.rejected,
                "pinned": sum(1 for e in self._entries.values() if e.pins)}
