"""The tiered cache: segmented LRU, byte bounds under concurrency, pinning, single flight, corruption, restarts."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import kernels
from appliance.cache import ARRAYS, CacheDirInUse, TieredCache, cache_folder, disk_budget, ram_budget
from appliance.cache.disk import DiskTier
from appliance.executor.runner import TaskRunner
from appliance.index import IndexStore
from appliance.planner.plan import FRAGMENT, Task, fragment_key
from appliance.query.admin import cache_table, fleet_cache_stats
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import rows_to_table
from appliance.storage.tables import fragment_cache_key

ENTRY = 108  # RAM bytes of one test value: one uint64 id and 25 float32


def value(key: str, n: int = 25) -> dict[str, np.ndarray]:
    """A deterministic value per key, so a refetch can be checked for correctness."""
    seed = sum(key.encode())
    return {"ids": np.arange(seed, seed + 1, dtype=np.uint64),
            "vectors": np.full((1, n), seed, dtype=np.float32)}


class Loads:
    """A loader factory that counts how often each key reached 'object storage'."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: Counter[str] = Counter()
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, key: str, n: int = 25) -> Callable[[], dict[str, np.ndarray]]:
        def load() -> dict[str, np.ndarray]:
            with self._lock:
                self.calls[key] += 1
            time.sleep(self.delay)
            return value(key, n)
        return load


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture
def make(tmp_path: Path):
    opened: list[TieredCache] = []

    def make(ram: int, disk: int, folder: Path | None = None) -> TieredCache:
        cache = TieredCache(ram, folder or tmp_path / "cache", disk)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


def test_ram_tier_evicts_least_recently_used(make) -> None:
    cache, loads = make(ram=3 * ENTRY, disk=0), Loads()
    for key in "abc":
        cache.get(key, loads(key))
    cache.get("a", loads("a"))  # a is now the most recently used; b the least
    cache.get("d", loads("d"))  # evicts b
    for key in "acd":
        cache.get(key, loads(key))
    assert loads.calls == Counter("abcd")
    cache.get("b", loads("b"))  # read twice: not cached in place of a, read three times (the first victim)
    assert loads.calls["b"] == 2
    ram = cache.stats()["ram"]
    assert ram["evictions"] == 1 and ram["declined"] == 1 and ram["entries"] == 3 and ram["bytes"] == 3 * ENTRY
    cache.get("b", loads("b"))  # read three times now: as often as a, so it takes a's place
    assert loads.calls["b"] == 3 and cache.stats()["ram"]["evictions"] == 2
    cache.get("b", loads("b"))
    assert loads.calls["b"] == 3


def test_ram_tier_keeps_entries_hit_again_through_a_pass_larger_than_it(make) -> None:
    """Segmented LRU: an IVF search reads more partitions than a small RAM tier holds; a pass over them
    read once must not push out the partitions that queries keep coming back to (plain LRU keeps none)."""
    cache, loads = make(ram=10 * ENTRY, disk=0), Loads()
    for _ in range(2):  # hot: hit again after it came in
        for key in ("h1", "h2", "h3"):
            cache.get(key, loads(key))
    for i in range(30):  # a scan three times the tier, each key read once
        cache.get(f"s{i}", loads(f"s{i}"))
    for key in ("h1", "h2", "h3"):
        cache.get(key, loads(key))
    assert loads.calls["h1"] == loads.calls["h2"] == loads.calls["h3"] == 1
    ram = cache.stats()["ram"]
    assert ram["bytes"] <= ram["budget"] and ram["entries"] == 10


def test_ram_tier_keeps_the_most_read_entries_when_every_query_reads_more_than_it_holds(make) -> None:
    """IVF queries each probe more partitions than a small RAM tier holds, and every partition comes back
    sooner or later: recency keeps nothing (each is evicted before its next read); counting reads keeps the
    partitions most queries probe."""
    cache, loads = make(ram=10 * ENTRY, disk=0), Loads()
    warm = [f"w{i:02d}" for i in range(35)]
    for round_ in range(20):  # each read: 5 hot keys and 15 of the 35 others, in key order as a scan reads them
        keys = sorted([f"h{i}" for i in range(5)] + [warm[(round_ * 15 + j) % 35] for j in range(15)])
        for key in keys:
            cache.get(key, loads(key))
    assert sum(loads.calls[f"h{i}"] for i in range(5)) <= 5 * 4  # read 20 times each, loaded a few times
    ram = cache.stats()["ram"]
    assert ram["bytes"] <= ram["budget"] and ram["declined"] > 0

def test_reads_fill_the_tiers_they_missed(make) -> None:
    cache, loads = make(ram=ENTRY, disk=10_000), Loads()
    cache.get("a", loads("a"))  # storage -> NVMe and RAM
    cache.get("b", loads("b"))  # evicts a from RAM; NVMe keeps both
    assert same(cache.get("a", loads("a")), value("a"))  # from NVMe, back into RAM
    stats = cache.stats()
    assert loads.calls == Counter("ab")
    assert stats["nvme"]["hits"] == 1 and stats["nvme"]["entries"] == 2
    assert stats["storage"]["fetches"] == 2 and stats["storage"]["fetch_seconds"]["count"] == 2
    assert cache.get("a", loads("a")) is not None and cache.stats()["ram"]["hits"] == 1


def test_pinned_entries_are_not_evicted_and_the_budget_holds(make) -> None:
    cache, loads = make(ram=2 * ENTRY, disk=0), Loads()
    with cache.pinned("a", loads("a")), cache.pinned("b", loads("b")):
        with cache.pinned("c", loads("c")) as c:  # no room beside two pins: served, not cached
            assert same(c, value("c"))
        ram = cache.stats()["ram"]
        assert ram["rejected"] == 1 and ram["entries"] == 2 and ram["pinned"] == 2
        assert ram["bytes"] <= ram["budget"]
        cache.get("a", loads("a"))
        cache.get("b", loads("b"))
        assert loads.calls == Counter("abc")
    cache.get("c", loads("c"))  # unpinned now: c evicts the least recently used (a)
    assert cache.stats()["ram"]["pinned"] == 0
    cache.get("b", loads("b"))
    assert loads.calls == Counter("abcc")


def test_byte_bounds_are_never_exceeded_under_concurrent_load(make, tmp_path: Path) -> None:
    ram_budget_, disk_budget_ = 2_000, 5_000
    cache, loads = make(ram=ram_budget_, disk=disk_budget_), Loads()
    sizes = {f"k{i}": random.Random(i).randrange(1, 120) for i in range(60)}
    stop, seen, errors = threading.Event(), [], []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                key = rng.choice(list(sizes))
                with cache.pinned(key, loads(key, sizes[key])) as got:
                    assert same(got, value(key, sizes[key]))
                    time.sleep(rng.random() / 2000)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def monitor() -> None:
        while not stop.is_set():
            s = cache.stats()
            seen.append((s["ram"]["bytes"], s["nvme"]["bytes"]))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    watcher = threading.Thread(target=monitor)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not errors, errors
    assert seen and max(r for r, _ in seen) <= ram_budget_ and max(d for _, d in seen) <= disk_budget_
    stats = cache.stats()
    assert stats["ram"]["evictions"] > 0 and stats["nvme"]["evictions"] > 0
    assert stats["ram"]["pinned"] == 0
    assert sum(p.stat().st_size for p in files(tmp_path / "cache")) == stats["nvme"]["bytes"] <= disk_budget_


def test_concurrent_misses_on_one_key_fetch_once(make) -> None:
    cache, loads = make(ram=10_000, disk=10_000), Loads(delay=0.2)
    results: list[dict[str, np.ndarray]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("hot", loads("hot")))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads.calls["hot"] == 1
    assert len(results) == 8 and all(same(r, value("hot")) for r in results)
    assert cache.stats()["coalesced"] >= 1


def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached(make) -> None:
    cache, calls, errors = make(ram=10_000, disk=10_000), [], []

    def failing() -> dict[str, np.ndarray]:
        calls.append(1)
        time.sleep(0.1)
        raise OSError("object storage is down")

    def reader() -> None:
        try:
            cache.get("k", failing)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(errors) == 4
    assert cache.stats()["storage"]["errors"] == 1
    assert same(cache.get("k", Loads()("k")), value("k"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupt_truncated_or_missing_files_are_refetched_never_served(make, tmp_path: Path, damage: str) -> None:
    cache, loads = make(ram=0, disk=10_000), Loads()  # no RAM tier: every read goes to NVMe
    cache.get("frag", loads("frag", 400))
    (path,) = files(tmp_path / "cache")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-7]))
    else:
        path.unlink()
    assert same(cache.get("frag", loads("frag", 400)), value("frag", 400))
    assert loads.calls["frag"] == 2
    nvme = cache.stats()["nvme"]
    assert nvme["corrupt"] == (0 if damage == "delete" else 1)
    assert same(cache.get("frag", loads("frag", 400)), value("frag", 400))  # rewritten and served from NVMe
    assert loads.calls["frag"] == 2 and cache.stats()["nvme"]["hits"] == 1


def test_a_vanished_cache_folder_is_made_again_and_counted(make, tmp_path: Path) -> None:
    """`rm -rf cache_dir/*` under a running executor (tmp/ included): the next write makes the folders
    again, so the tier keeps caching instead of writing nothing until a restart."""
    import shutil

    from appliance.metrics import cache_metrics

    cache, loads = make(ram=0, disk=100_000), Loads()  # no RAM tier: every read goes to NVMe
    cache.get("a", loads("a", 400))
    folder = tmp_path / "cache"
    for child in folder.iterdir():
        if child.name != ".lock":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    assert not (folder / "tmp").exists() and files(folder) == []
    assert same(cache.get("b", loads("b", 400)), value("b", 400))  # a miss, loaded and written to NVMe
    assert len(files(folder)) == 1 and (folder / "tmp").is_dir()
    assert same(cache.get("b", loads("b", 400)), value("b", 400))
    nvme = cache.stats()["nvme"]
    assert loads.calls["b"] == 1 and nvme["hits"] == 1, "the rewritten entry is read back from NVMe"
    assert nvme["recreated"] == 1 and nvme["write_errors"] == 0
    assert nvme["entries"] == 1 and nvme["bytes"] == files(folder)[0].stat().st_size  # "a" is forgotten
    assert same(cache.get("a", loads("a", 400)), value("a", 400)) and loads.calls["a"] == 2
    recreated = [m for m in cache_metrics(cache.stats)() if m.name == "appliance_cache_dir_recreated"]
    assert recreated and recreated[0].samples[0].value == 1


def test_an_entry_that_verifies_but_does_not_decode_is_dropped(make) -> None:
    class Raw:
        def encode(self, v: bytes) -> bytes:
            return v

        def decode(self, data: bytes) -> bytes:
            return data

        def nbytes(self, v: bytes) -> int:
            return len(v)

    cache, loads = make(ram=0, disk=10_000), Loads()
    cache.get("k", lambda: b"not a frame", Raw())
    assert same(cache.get("k", loads("k")), value("k"))
    assert loads.calls["k"] == 1 and cache.stats()["nvme"]["corrupt"] == 1


def test_warm_restart_indexes_files_without_reading_them(make, tmp_path: Path, monkeypatch) -> None:
    folder, loads = tmp_path / "warm", Loads()
    first = make(ram=10_000, disk=10_000, folder=folder)
    for key in "abc":
        first.get(key, loads(key))
        time.sleep(0.01)
    first.get("a", loads("a"))  # a RAM hit does not touch the file: a stays the oldest on disk
    first.close()
    size = files(folder)[0].stat().st_size
    (folder / "tmp" / "leftover-of-a-crash").write_bytes(b"half")

    reads = []
    original = DiskTier._read_verified
    monkeypatch.setattr(DiskTier, "_read_verified", lambda self, *a: reads.append(a) or original(self, *a))
    second = make(ram=10_000, disk=2 * size + size // 2, folder=folder)  # room for two: the oldest (a) goes
    assert reads == []
    nvme = second.stats()["nvme"]
    assert nvme["entries"] == 2 and nvme["evictions"] == 1
    assert not (folder / "tmp" / "leftover-of-a-crash").exists()
    for key in "bc":
        assert same(second.get(key, loads(key)), value(key))
    assert len(reads) == 2 and loads.calls == Counter("abc")


def test_one_process_owns_a_cache_folder(make, tmp_path: Path) -> None:
    make(ram=100, disk=100, folder=tmp_path / "owned")
    with pytest.raises(CacheDirInUse):
        TieredCache(100, tmp_path / "owned", 100)


def test_an_entry_larger_than_a_tier_is_served_uncached(make, tmp_path: Path) -> None:
    cache, loads = make(ram=50, disk=50), Loads()
    assert same(cache.get("big", loads("big")), value("big"))
    cache.get("big", loads("big"))
    stats = cache.stats()
    assert loads.calls["big"] == 2 and stats["ram"]["rejected"] == 2 and stats["nvme"]["entries"] == 0
    assert files(tmp_path / "cache") == []


def test_arrays_codec_round_trips_fragments_and_empty_arrays() -> None:
    fragment = {"ids": np.array([3, 9, 2**63], np.uint64), "vectors": np.random.rand(3, 8).astype(np.float32)}
    empty = {"ids": np.empty(0, np.uint64), "vectors": np.empty((0, 8), np.float32)}
    for v in (fragment, empty):
        back = ARRAYS.decode(ARRAYS.encode(v))
        assert same(back, v) and all(back[k].dtype == v[k].dtype for k in v)
    assert ARRAYS.nbytes(fragment) == 3 * 8 + 3 * 8 * 4


def test_defaults_come_from_the_machine(tmp_path: Path) -> None:
    assert ram_budget(123, 4) == 123 and disk_budget(456, tmp_path, 4) == 456
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < ram_budget(0, 2) <= memory // 8 + 1
    assert 0 < disk_budget(0, tmp_path / "d", 2) <= os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert cache_folder("", 8181).name == "executor-8181"
    assert cache_folder(str(tmp_path), 8182) == tmp_path / "executor-8182"


def test_the_executor_scans_fragments_through_the_cache_under_immutable_keys(make, tmp_path: Path) -> None:
    root = StorageRoot.parse(str(tmp_path / "root"))
    store = TableStore(root)
    store.create("t", 4, "l2", {"n": "int64"})
    vectors = np.random.default_rng(0).random((40, 4)).astype(np.float32)
    schema = store.snapshot("t").dataset.schema
    for start in (0, 20):
        store.append("t", rows_to_table([{"vector": v.tolist(), "n": start + i}
                                         for i, v in enumerate(vectors[start:start + 20])], schema))
    runner = TaskRunner(store, IndexStore(root), make(ram=10**6, disk=10**6))
    queries = vectors[:3] + 0.01

    def search(predicate: str | None = None, min_row_id: int = 0) -> np.ndarray:
        snap = store.snapshot("t")
        tasks = [Task(FRAGMENT, fragment_key("t", f), "t", snap.version, fragment_id=f, min_row_id=min_row_id)
                 for f in snap.fragment_ids()]
        return runner.run(tasks, queries, 5, "l2", predicate)[0]

    def exact(rows: np.ndarray) -> np.ndarray:
        return kernels.search_block(queries, vectors[rows], rows.astype(np.uint64), "l2", 5)[0]

    def fetches() -> int:
        return runner.cache.stats()["storage"]["fetches"]

    def keys() -> list[str]:
        ds = store.snapshot("t").dataset
        return [fragment_cache_key("t", ds.get_fragment(f)) for f in store.snapshot("t").fragment_ids()]

    assert np.array_equal(search(), exact(np.arange(40)))
    assert np.array_equal(search("n >= 30"), exact(np.arange(30, 40)))  # the cached rows, masked
    assert np.array_equal(search(min_row_id=25), exact(np.arange(25, 40)))
    assert np.array_equal(search("n >= 30"), exact(np.arange(30, 40)))
    assert fetches() == 4  # each fragment's rows and its ids matching the filter, each read once

    before = keys()
    store.delete("t", "n = 7")  # a new deletion file for fragment 0 only: a new key for it alone
    after = keys()
    assert after[0] != before[0] and after[1] == before[1]
    assert np.array_equal(search(), exact(np.delete(np.arange(40), 7)))
    assert fetches() == 5


def test_the_query_node_sums_the_executors_and_reports_the_unreachable(make) -> None:
    cache, loads = make(ram=10_000, disk=10_000), Loads()
    for key in "aab":
        cache.get(key, loads(key))
    stats = cache.stats()
    doc = fleet_cache_stats([{"url": "http://e1", "stats": stats}, {"url": "http://e2", "stats": stats},
                             {"url": "http://e3", "error": "ConnectionError"}])
    assert (doc["ram"]["hits"], doc["ram"]["misses"], doc["nvme"]["misses"]) == (2, 4, 4)
    assert doc["ram"]["hit_rate"] == pytest.approx(1 / 3) and doc["hit_rate"] == pytest.approx(1 / 3)
    assert doc["ram"]["budget"] == 20_000 and doc["storage"]["fetches"] == 4
    table = cache_table(doc)
    assert "unreachable (ConnectionError)" in table and table.count("http://e1") == 2
    assert "33.3%" in table and "19.5 KiB" in table
