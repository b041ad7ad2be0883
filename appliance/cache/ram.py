"""The RAM tier: decoded values ready for the kernels, bounded by their bytes, evicted by segmented LRU."""

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
    protected: bool = False  # hit at least once since it came in (segmented LRU)


PROTECTED_SHARE = 0.8  # of the budget, at most, held by entries that were hit again after they came in
AGE_EVERY = 10  # lookups, per entry the tier holds, after which every access count is halved


class RamTier:
    """A segmented-LRU map bounded by the bytes of its values, whose pinned entries are never evicted.

    A new entry starts on probation; a hit moves it to the protected segment (at most PROTECTED_SHARE of the
    budget; its least recently used entries go back to probation). Eviction takes probation's least
    recently used first, and only for a value read at least as often lately as that victim (TinyLFU
    admission: a count of lookups per key, halved every AGE_EVERY lookups per entry held); a value not
    admitted is served uncached (`declined`).

    Plain LRU keeps nothing when the tier is smaller than what a query scans (an IVF search probing a sixth
    of a table four times the tier's size): every partition is evicted before any query probes it again.
    Recency alone cannot help there (segmented LRU, with or without remembered keys, still served 0% from
    RAM at 100k rows: every key comes back, just later than the tier lasts); counting keeps the partitions
    queries probe most (dense regions of the data), close to the best fixed set in a simulation of that
    workload (32% of reads vs 35%).

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
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # probation, least recently used first
        self._protected: OrderedDict[str, _Entry] = OrderedDict()
        self._protected_bytes = 0
        self._counts: dict[str, int] = {}  # lookups per key lately (TinyLFU), aged by halving
        self._lookups = 0
        self.declined = 0  # values served uncached: read less often lately than the entry they would evict
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rejected = 0  # values served without being cached: larger than the room the pins leave

    def _find(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        return entry if entry is not None else self._protected.get(key)

    def _count(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
        self._lookups += 1
        if self._lookups >= AGE_EVERY * max(16, len(self._entries) + len(self._protected)):
            self._counts = {k: n // 2 for k, n in self._counts.items() if n > 1}
            self._lookups = 0

    def get(self, key: str, pin: bool) -> tuple[bool, Any]:
        """(found, value); a hit becomes the most recently used protected entry and is pinned when asked."""
        self._count(key)
        entry = self._find(key)
        if entry is None:
            self.misses += 1
            return False, None
        self.hits += 1
        if entry.protected:
            self._protected.move_to_end(key)
        else:
            del self._entries[key]
            self._protect(key, entry)
        entry.pins += pin
        return True, entry.value

    def _protect(self, key: str, entry: _Entry) -> None:
        entry.protected = True
        self._protected[key] = entry
        self._protected_bytes += entry.nbytes
        while self._protected_bytes > PROTECTED_SHARE * self.budget and len(self._protected) > 1:
            demoted_key, demoted = self._protected.popitem(last=False)  # back to probation, newest there
            demoted.protected = False
            self._protected_bytes -= demoted.nbytes
            self._entries[demoted_key] = demoted


    def pin(self, key: str) -> bool:
        """Pin an entry another thread just added (not a lookup, so not counted); False when it is absent."""
        entry = self._find(key)
        if entry is None:
            return False
        entry.pins += 1
        return True

    def unpin(self, key: str) -> None:
        entry = self._find(key)
        if entry is not None and entry.pins:
            entry.pins -= 1

    def put(self, key: str, value: Any, nbytes: int, pin: bool) -> bool:
        """Cache a value on probation, evicting unpinned entries, probation's oldest first, then the protected
        segment's; False (and nothing evicted) when it cannot fit beside the pinned ones or is read less often
        lately than the first of them (`declined`)."""
        if self._find(key) is not None:
            return self.pin(key) if pin else True
        pinned = sum(e.nbytes for segment in (self._entries, self._protected) for e in segment.values() if e.pins)
        if pinned + nbytes > self.budget:
            self.rejected += 1
            return False
        if self.bytes + nbytes > self.budget:  # admission: only for a value read as often as the first victim
            victim = next((k for segment in (self._entries, self._protected) for k, e in segment.items()
                           if not e.pins), None)
            if victim is not None and self._counts.get(key, 0) < self._counts.get(victim, 0):
                self.declined += 1
                return False
        for segment in (self._entries, self._protected):
            for victim in [k for k, e in segment.items() if not e.pins]:
                if self.bytes + nbytes <= self.budget:
                    break
                evicted = segment.pop(victim)
                self.bytes -= evicted.nbytes
                self._protected_bytes -= evicted.nbytes if evicted.protected else 0
                self.evictions += 1
        self._entries[key] = _Entry(value, nbytes, int(pin))
        self.bytes += nbytes
        return True

    def stats(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": hit_rate(self.hits, self.misses),
                "bytes": self.bytes, "budget": self.budget, "entries": len(self._entries) + len(self._protected),
                "evictions": self.evictions, "rejected": self.rejected, "declined": self.declined,
                "pinned": sum(1 for segment in (self._entries, self._protected) for e in segment.values() if e.pins)}
