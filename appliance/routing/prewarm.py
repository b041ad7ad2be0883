"""Prewarm before join: what a query node remembers so that a new executor can load its share first.

A new executor's cache is cold, so the searches the new ring would send it would each pay a read from object
storage. Before the query node swaps in that ring (appliance/routing/membership.py), it asks the newcomer
to load the routing groups the new ring gives it, as LanceDB Enterprise's prewarm does: the dispatcher
sends it, one group at a time, the tasks the query node last ran for that group with one query vector and
k = 1 (`Dispatcher.prewarm`), the ordinary search hop, so the executor loads through its cache exactly what
those searches will read (fragment rows, index partition objects, graphs), with nothing new on its side.

Which groups: the ones this query node searched lately (`RecentGroups`, the last `capacity` routing keys,
each with the tasks, metric and one query vector of its last search), whose owner on the new ring is the
newcomer (`RecentGroups.owned_by`). The prewarm has a deadline (`membership_prewarm_seconds`); past it the
executor joins anyway, and the log says how far it got.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from appliance.routing.ring import HashRing

if TYPE_CHECKING:
    from appliance.planner.plan import Task


@dataclass(frozen=True)
class Warmup:
    """One routing group to load: its key, the tasks of its last search, that search's metric and first query."""

    key: str
    tasks: tuple[Task, ...]
    metric: str
    query: np.ndarray


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

    def remember(self, by_key: dict[str, list[Task]], metric: str, queries: np.ndarray) -> None:
        if not by_key or len(queries) == 0:
            return
        query = np.array(queries[0], dtype=np.float32)  # a copy: the request's matrix is not kept alive
        with self._lock:
            for key, tasks in by_key.items():
                self._items.pop(key, None)  # to the end: the most recently searched
                self._items[key] = Warmup(key, tuple(tasks), metric, query)
            while len(self._items) > self._capacity:
                del self._items[next(iter(self._items))]

    def __len__(self) -> int:
        return len(self._items)

    def owned_by(self, node: str, ring: HashRing, exclude: Collection[str] = ()) -> list[Warmup]:
        """The remembered groups whose owner on `ring` (members in `exclude` skipped) is `node`, most
        recently searched first."""
        with self._lock:
            items = list(self._items.values())
        return [w for w in reversed(items) if _owner(ring, w.key, exclude) == node]


def _owner(ring: HashRing, key: str, exclude: Collection[str]) -> str | None:
    order = ring.preference(key, exclude)
    return order[0] if order else None


def prewarm_tasks(tasks: Iterable[Task]) -> list[Task]:
    """The tasks of a group as one query vector runs them: a partition task names the batch's queries that
    probe it, and the prewarm sends one query, which must probe every partition."""
    return [t if t.queries is None else replace(t, queries=None) for t in tasks]
