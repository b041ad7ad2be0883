"""Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, 2017).

Executors cache what they have searched, so a routing key (a group of a table's partitions or fragments,
planner/plan.py; many tasks share one) should keep landing on the same executor: plain consistent hashing
gives that, and when an executor joins or leaves only about 1/N of the keys move.
But one batch of keys can hash unevenly, and the slowest executor sets the latency of the whole query. The
bounded-load variant caps every executor at ceil((1+eps) x mean) keys of a batch; a key whose executor is
full walks on clockwise to the next one with room, so locality is given up only where balance demands it.

The hash is blake2b rather than Python's `hash()`, whose per-process salt would make every query node route
differently (and break every cache) after each restart.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Collection, Iterable, Iterator, Sequence

MEMO_KEYS = 65_536
"""Keys whose node order a ring remembers (all forgotten when full): far more than the partition and
fragment groups of the tables one query node serves, small next to its memory."""


REPLICA_MARK = "#"
"""`KEY#r` (r >= 1) names replica r of KEY: the r-th live node after KEY's owner in KEY's own order, so a
hot group's replicas sit on distinct ring successors (table names never hold a "#")."""


def replica_key(key: str, replica: int) -> str:
    return key if replica <= 0 else f"{key}{REPLICA_MARK}{replica}"


class NoLiveNodes(RuntimeError):
    """Every member of the ring is excluded (or it has none): there is nowhere to send work."""


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """An immutable ring of `vnodes` points per node; to add or remove a node, build a new ring.

    Many virtual nodes per node even out the arc each node owns (with 128, a node's share of the keys is
    typically within about 10% of the mean rather than off by a factor of several), and since a point's
    position depends only on its node's name, two rings over the same names are identical whatever order
    the names came in.
    """

    def __init__(self, nodes: Iterable[str], vnodes: int = 128) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        self._nodes = tuple(sorted(set(nodes)))
        self._vnodes = vnodes
        # Ties between equal hashes (astronomically rare) break on the name, so ring order stays total.
        points = sorted((_hash64(f"{node}#{i}"), node) for node in self._nodes for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [node for _, node in points]
        self._orders: dict[str, tuple[int, tuple[str, ...]]] = {}

    @property
    def nodes(self) -> tuple[str, ...]:
        return self._nodes

    def __repr__(self) -> str:
        return f"HashRing({list(self._nodes)!r}, vnodes={self._vnodes})"

    def _walk(self, key: str, excluded: frozenset[str]) -> Iterator[str]:
        """Distinct live nodes clockwise from the key's hash. Excluding nodes keeps the others' order, so
        this filters the key's full order, which is computed once per key: the same keys (a table's
        routing groups) come back with every query."""
        return (node for node in self._order(key)[1] if node not in excluded)

    def _order(self, key: str) -> tuple[int, tuple[str, ...]]:
        """(hash, every node clockwise from it) of a key, from a bounded memo."""
        known = self._orders.get(key)
        if known is None:
            hashed = _hash64(key)
            base, mark, replica = key.rpartition(REPLICA_MARK)
            # replica r (ASCII digits: int() refuses some other isdigit() characters, such as '¹'): the base
            # key's order, turned by r
            if mark and replica.isascii() and replica.isdigit() and self._nodes:
                nodes = self._order(base)[1]
                shift = int(replica) % len(nodes)
                order = [*nodes[shift:], *nodes[:shift]]
            else:
                start = bisect.bisect_left(self._hashes, hashed)
                size = len(self._hashes)
                order = list(dict.fromkeys(self._owners[(start + i) % size] for i in range(size)))
            known = (hashed, tuple(order))
            if len(self._orders) >= MEMO_KEYS:
                self._orders.clear()  # one atomic step, safe beside other threads' lookups
            self._orders[key] = known
        return known

    def preference(self, key: str, exclude: Collection[str] = ()) -> list[str]:
        """Every live node once, in the order that should take `key`: its owner first, then who fails over.

        Excluding a node leaves the relative order of the others unchanged, so when an executor dies only
        its own keys move, each to the next live node, and they come back when it recovers.
        """
        return list(self._walk(key, frozenset(exclude)))

    def assign(self, keys: Sequence[str], eps: float = 0.25, exclude: Collection[str] = ()) -> dict[str, list[str]]:
        """Split a batch among the live nodes, none taking more than ceil((1+eps) x mean) keys.

        Keys are placed in order of their hash, not the order given, so the answer depends only on the set
        of members, the keys, eps and exclude: every query node computes the same split, and a retry of a
        batch lands where the first attempt did. Each node's keys keep the order they were given in; only
        nodes that got keys appear, in name order.
        """
        if eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        excluded = frozenset(exclude)
        live = [node for node in self._nodes if node not in excluded]
        if not live:
            raise NoLiveNodes(f"all {len(self._nodes)} nodes of the ring are excluded" if self._nodes
                              else "the ring has no nodes")
        # live * capacity >= len(keys), so every key finds room before its walk runs out of nodes.
        capacity = math.ceil((1 + eps) * len(keys) / len(live))
        load = dict.fromkeys(live, 0)
        owner: list[str] = [""] * len(keys)
        for index in sorted(range(len(keys)), key=lambda i: (self._order(keys[i])[0], keys[i])):
            node = next(n for n in self._walk(keys[index], excluded) if load[n] < capacity)
            load[node] += 1
            owner[index] = node
        groups: dict[str, list[str]] = {node: [] for node in live if load[node]}
        for key, node in zip(keys, owner, strict=True):
            groups[node].append(key)
        return groups
