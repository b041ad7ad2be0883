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
GHOST_BUDGETS = 8  # keys of evicted entries remembered, up to this many budgets of their bytes


class RamTier:
    """A segmented-LRU map bounded by the bytes of its values, whose pinned entries are never evicted.

    A new entry starts on probation; a hit moves it to the protected segment (at most PROTECTED_SHARE of the
    budget; its least recently used entries go back to probation). Eviction takes probation's least
    recently used first. The keys of evicted entries are remembered (up to GHOST_BUDGETS budgets of their
    bytes, keys only): one read again comes back protected, so an entry whose reuse distance is longer than
    probation (a partition probed again a few batches later) still earns its place.

    Plain LRU keeps nothing when the tier is smaller than what a query scans (an IVF search probing a sixth
    of a table four times the tier's size): every partition is evicted before any query probes it again.
    Here a pass over many partitions read once only churns probation, and the partitions that queries keep
    coming back to (dense regions of the data) stay.

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
        self._ghosts: OrderedDict[str, int] = OrderedDict()  # evicted keys -> their bytes, oldest first
        self._ghost_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rejected = 0  # values served without being cached: larger than the room the pins leave

    def _find(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        return entry if entry is not None else self._protected.get(key)

    def get(self, key: str, pin: bool) -> tuple[bool, Any]:
        """(found, value); a hit becomes the most recently used protected entry and is pinned when asked."""
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

    def _remember(self, key: str, nbytes: int) -> None:
        self._ghosts[key] = nbytes
        self._ghost_bytes += nbytes
        while self._ghost_bytes > GHOST_BUDGETS * self.budget and self._ghosts:
            self._ghost_bytes -= self._ghosts.popitem(last=False)[1]

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
        """Cache a value on probation (protected when its key was evicted recently), evicting unpinned entries,
        probation's oldest first, then the protected segment's; False (and nothing evicted) when it cannot fit
        beside the pinned ones."""
        if self._find(key) is not None:
            return self.pin(key) if pin else True
        pinned = sum(e.nbytes for segment in (self._entries, self._protected) for e in segment.values() if e.pins)
        if pinned + nbytes > self.budget:
            self.rejected += 1
            return False
        for segment in (self._entries, self._protected):
            for victim in [k for k, e in segment.items() if not e.pins]:
                if self.bytes + nbytes <= self.budget:
                    break
                evicted = segment.pop(victim)
                self.bytes -= evicted.nbytes
                self._protected_bytes -= evicted.nbytes if evicted.protected else 0
                self.evictions += 1
                self._remember(victim, evicted.nbytes)
        entry = _Entry(value, nbytes, int(pin))
        self.bytes += nbytes
        if key in self._ghosts:  # read again soon after it was evicted: protected straight away
            self._ghost_bytes -= self._ghosts.pop(key)
            self._protect(key, entry)
        else:
            self._entries[key] = entry
        return True

    def stats(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": hit_rate(self.hits, self.misses),
                "bytes": self.bytes, "budget": self.budget, "entries": len(self._entries) + len(self._protected),
                "evictions": self.evictions, "rejected": self.rejected,
                "pinned": sum(1 for segment in (self._entries, self._protected) for e in segment.values() if e.pins)}
