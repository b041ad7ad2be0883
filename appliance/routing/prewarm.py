"""Prewarm before join: what a query node remembers so that a new executor can load its share first.

A new executor's cache is cold, so the searches the new ring would send it would each pay a read from object
storage. Before the query node swaps in that ring (appliance/routing/membership.py), it asks the newcomer
to load the routing groups the new ring gives it, as LanceDB Enterprise's prewarm does: the dispatcher
sends it, one group at a time, the tasks the query node last ran for that group with one query vector and
k = 1 (`Dispatcher.prewarm`), the ordinary search hop, so the executor loads through its cache exactly what
those searches will read (fragment rows, index partition objects, graphs), with nothing new on its side.

Which groups: the ones this query node searched lately (`RecentGroups`, the last `capacity` routing keys,
each with the tasks, metric and one query vector of its last search, and the keys that search routed
together), that the new ring would give the newcomer (`RecentGroups.owned_by`): placed as the dispatcher
places them, with bounded loads over the keys of that search, since a key can land past its first choice
when that one is full. The prewarm has a deadline (`membership_prewarm_seconds`); past it the
executor joins anyway, and the log says how far it got.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from appliance.routing.ring import HashRing, NoLiveNodes

if TYPE_CHECKING:
    from appliance.planner.plan import Task


@dataclass(frozen=True)
class Warmup:
    """One routing group to load: its key, the tasks of its last search, that search's metric, first query and
    payload columns (executors cache a fragment's columns per column set)."""

    key: str
    tasks: tuple[Task, ...]
    metric: str
    query: np.ndarray
    batch: tuple[str, ...]  # every key its search routed together (bounded loads place them as a set)
    columns: tuple[str, ...] = ()


@dataclass
class PrewarmReport:
    """How the prewarm of one joining executor went."""

    groups: int = 0  # groups the new ring gives it that this query node knew of
    warmed: int = 0  # of them, loaded before the deadline
    seconds: float = 0.0
    error: str = ""  # why it stopped early, if it did (the deadline, a failed batch)

    @property
    def complete(self) -> bool:
        return self.warmed == self.groups

    def to_json(self) -> dict[str, object]:
        return {"groups": self.groups, "warmed": self.warmed, "seconds": round(self.seconds, 3),
                "complete": self.complete, "error": self.error}


class RecentGroups:
    """The routing keys searched lately (at most `capacity`, least recently searched forgotten first), each
    with what it takes to load its group again. Shared by the search threads: one lock, two dict steps per
    key of a search."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._items: dict[str, Warmup] = {}
        self._lock = threading.Lock()

    def remember(self, by_key: dict[str, list[Task]], metric: str, queries: np.ndarray,
                 columns: Collection[str] = ()) -> None:
        if not by_key or len(queries) == 0:
            return
        query = np.array(queries[0], dtype=np.float32)  # a copy: the request's matrix is not kept alive
        batch = tuple(by_key)
        with self._lock:
            for key, tasks in by_key.items():
                self._items.pop(key, None)  # to the end: the most recently searched
                self._items[key] = Warmup(key, tuple(tasks), metric, query, batch, tuple(columns))
            while len(self._items) > self._capacity:
                del self._items[next(iter(self._items))]

    def __len__(self) -> int:
        return len(self._items)

    def owned_by(self, node: str, ring: HashRing, exclude: Collection[str] = (), eps: float = 0.25
                 ) -> list[Warmup]:
        """The remembered groups `ring` would send to `node` (members in `exclude` skipped), each placed as
        its last search's keys were, with bounded loads `eps`; most recently searched first."""
        with self._lock:
            items = list(self._items.values())
        placed: dict[tuple[str, ...], dict[str, str]] = {}  # a search's keys -> where each would go
        owned = []
        for warm in reversed(items):
            if warm.batch not in placed:
                try:
                    groups = ring.assign(list(warm.batch), eps=eps, exclude=exclude)
                except NoLiveNodes:
                    groups = {}
                placed[warm.batch] = {key: owner for owner, keys in groups.items() for key in keys}
            if placed[warm.batch].get(warm.key) == node:
                owned.append(warm)
        return owned

