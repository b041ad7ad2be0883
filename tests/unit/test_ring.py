from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.routing import HashRing, NoLiveNodes
from appliance.routing.ring import replica_key


def urls(n: int, first_port: int = 8181) -> list[str]:
    return [f"http://127.0.0.1:{first_port + i}" for i in range(n)]


def fragment_keys(n: int, table: str = "table") -> list[str]:
    return [f"{table}/v3/fragment/{i}" for i in range(n)]


def owners(ring: HashRing, keys: list[str], exclude: frozenset[str] = frozenset()) -> list[str]:
    return [ring.preference(key, exclude)[0] for key in keys]


MANY_KEYS = fragment_keys(20_000)

node_counts = st.integers(2, 8)
tables = st.sampled_from(["docs", "images", "t"])
key_batches = st.lists(  # the planner's routing keys: partition and fragment groups (planner/plan.py)
    st.one_of(st.builds("{}/index/v{}/group/{}".format, tables, st.integers(1, 5), st.integers(0, 10_000)),
              st.builds("{}/fragments/group/{}".format, tables, st.integers(0, 10_000))),
    max_size=300,
)


@settings(deadline=None)
@given(n=node_counts, keys=key_batches, eps=st.floats(0.0, 2.0), down=st.data())
def test_no_node_exceeds_the_load_bound(n: int, keys: list[str], eps: float, down: st.DataObject) -> None:
    ring = HashRing(urls(n))
    exclude = set(down.draw(st.lists(st.sampled_from(ring.nodes), max_size=n - 1, unique=True)))
    live = n - len(exclude)
    capacity = math.ceil((1 + eps) * len(keys) / live)
    groups = ring.assign(keys, eps=eps, exclude=exclude)

    assert sorted(k for ks in groups.values() for k in ks) == sorted(keys)
    assert not exclude & groups.keys()
    assert all(0 < len(ks) <= capacity for ks in groups.values())
    # A key leaves its first choice only for a reason: every node it passed over was full.
    where = {k: node for node, ks in groups.items() for k in ks}
    for key in keys:
        pref = ring.preference(key, exclude)
        assert all(len(groups[skipped]) == capacity for skipped in pref[: pref.index(where[key])])


@settings(deadline=None)
@given(n=node_counts, keys=key_batches)
def test_locality_is_kept_when_there_is_room(n: int, keys: list[str]) -> None:
    ring = HashRing(urls(n))
    groups = ring.assign(keys, eps=float(n))  # capacity >= len(keys): nothing can overflow
    assert {k: node for node, ks in groups.items() for k in ks} == {k: ring.preference(k)[0] for k in keys}


@pytest.mark.parametrize("n", range(2, 9))
def test_adding_an_executor_moves_about_one_nth_of_the_keys_all_to_it(n: int) -> None:
    before = owners(HashRing(urls(n)), MANY_KEYS)
    newcomer = urls(n + 1)[-1]
    after = owners(HashRing(urls(n + 1)), MANY_KEYS)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    fraction = len(moved) / len(MANY_KEYS)
    print(f"add: {n} -> {n + 1} executors moved {fraction:.4f} of keys (expected 1/(N+1) = {1 / (n + 1):.4f})")
    assert 0.5 / n <= fraction <= 1.6 / n
    assert all(new == newcomer for _, new in moved)


@pytest.mark.parametrize("n", range(2, 9))
def test_removing_an_executor_moves_only_its_keys(n: int) -> None:
    full = HashRing(urls(n))
    victim = full.nodes[n // 2]
    before = owners(full, MANY_KEYS)
    after = owners(HashRing([u for u in urls(n) if u != victim]), MANY_KEYS)
    moved = [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]
    fraction = len(moved) / len(MANY_KEYS)
    print(f"remove: {n} -> {n - 1} executors moved {fraction:.4f} of keys (1/N = {1 / n:.4f})")
    assert 0.5 / n <= fraction <= 1.6 / n
    assert {before[i] for i in moved} == {victim}
    assert before.count(victim) == len(moved)
    # Excluding a dead member routes exactly as a ring built without it, so failover keeps the others' caches.
    assert owners(full, MANY_KEYS, frozenset({victim})) == after


@settings(deadline=None)
@given(nodes=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True),
       keys=st.lists(st.text(max_size=20), max_size=100), eps=st.floats(0.0, 1.0), seed=st.integers(0, 2**32))
def test_assignment_is_a_pure_function_of_its_inputs(nodes: list[str], keys: list[str], eps: float,
                                                     seed: int) -> None:
    shuffled_nodes, shuffled_keys = nodes[:], keys[:]
    random.Random(seed).shuffle(shuffled_nodes)
    random.Random(seed).shuffle(shuffled_keys)
    ring, other = HashRing(nodes), HashRing(shuffled_nodes)

    assert ring.nodes == other.nodes == tuple(sorted(nodes))
    groups = ring.assign(keys, eps=eps)
    assert other.assign(keys, eps=eps) == groups
    for key in keys:
        assert other.preference(key) == ring.preference(key)
    reordered = other.assign(shuffled_keys, eps=eps)
    assert {node: sorted(ks) for node, ks in reordered.items()} == {node: sorted(ks) for node, ks in groups.items()}


def test_routing_is_the_same_in_every_process() -> None:
    # Pinned values: a salted per-process hash (Python's hash()) or any other function would route differently,
    # and query nodes would disagree about where each fragment is cached.
    ring = HashRing(urls(4))
    assert ring.preference("table/v3/fragment/7") == [
        "http://127.0.0.1:8184", "http://127.0.0.1:8182", "http://127.0.0.1:8183", "http://127.0.0.1:8181"]
    assert {node: len(ks) for node, ks in ring.assign(fragment_keys(100)).items()} == {
        "http://127.0.0.1:8181": 26, "http://127.0.0.1:8182": 22, "http://127.0.0.1:8183": 29,
        "http://127.0.0.1:8184": 23}


@settings(deadline=None)
@given(n=st.integers(1, 8), key=st.text(max_size=30), down=st.data())
def test_preference_lists_every_live_node_once_in_ring_order(n: int, key: str, down: st.DataObject) -> None:
    ring = HashRing(urls(n))
    exclude = set(down.draw(st.lists(st.sampled_from(ring.nodes), unique=True)))
    full = ring.preference(key)
    assert sorted(full) == list(ring.nodes)
    pref = ring.preference(key, exclude)
    assert sorted(pref) == sorted(set(ring.nodes) - exclude)
    assert pref == [node for node in full if node not in exclude]


def test_no_live_nodes() -> None:
    ring = HashRing(urls(3))
    assert ring.preference("k", exclude=ring.nodes) == []
    with pytest.raises(NoLiveNodes):
        ring.assign(["k"], exclude=ring.nodes)
    with pytest.raises(NoLiveNodes):
        HashRing([]).assign(["k"])
    assert issubclass(NoLiveNodes, RuntimeError)


def test_unknown_excluded_nodes_are_ignored_and_bad_arguments_rejected() -> None:
    ring = HashRing(urls(3))
    keys = fragment_keys(50)
    assert ring.assign(keys, exclude={"http://elsewhere:1"}) == ring.assign(keys)
    with pytest.raises(ValueError):
        ring.assign(keys, eps=-0.1)
    with pytest.raises(ValueError):
        HashRing(urls(3), vnodes=0)


def test_vnodes_balance_ownership() -> None:
    ring = HashRing(urls(4), vnodes=128)
    counts = Counter(owners(ring, MANY_KEYS))
    shares = {node: counts[node] / len(MANY_KEYS) for node in ring.nodes}
    print(f"ownership shares over 4 nodes: {sorted(round(s, 4) for s in shares.values())}")
    assert all(0.15 <= share <= 0.35 for share in shares.values())


@settings(deadline=None)
@given(n=st.integers(1, 8), replica=st.integers(1, 20), down=st.data())
def test_a_replica_key_is_owned_by_a_successor_of_its_groups_owner(n: int, replica: int, down: st.DataObject) -> None:
    """`KEY#r` goes to the r-th node after KEY's owner in KEY's own order, so R replicas of a group sit on R
    distinct executors (while there are that many) and fail over like any other key."""
    ring = HashRing(urls(n))
    key = "docs/index/v3/group/7"
    base = ring.preference(key)
    turned = replica % n
    assert ring.preference(replica_key(key, replica)) == [*base[turned:], *base[:turned]]
    assert replica_key(key, 0) == key
    if replica < n:
        owners_of = {ring.preference(replica_key(key, r))[0] for r in range(replica + 1)}
        assert len(owners_of) == replica + 1
    exclude = set(down.draw(st.lists(st.sampled_from(ring.nodes), max_size=n - 1, unique=True)))
    assert sorted(ring.preference(replica_key(key, replica), exclude)) == sorted(set(ring.nodes) - exclude)
