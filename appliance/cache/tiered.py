"""The executor's cache of object storage: RAM tier -> NVMe tier -> the loader (the source of truth).

Keys name immutable objects (a fragment's data and deletion files, an index object's id), so an entry is
never stale and nothing is ever invalidated; a changed table produces new keys and the old entries age out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from threading import Lock
from typing import Any, TypeVar

from appliance.cache.codec import ARRAYS, Codec
from appliance.cache.disk import DiskTier
from appliance.cache.ram import RamTier
from appliance.cache.stats import Latency

V = TypeVar("V")
log = logging.getLogger("appliance.cache")


class TieredCache:
    """Reads through RAM, then NVMe, then the caller's loader, filling the tiers that missed.

    Concurrent misses on one key fetch it once (single flight): the first caller loads, the others wait
    for its value, so a burst of queries over a cold fragment costs one object-storage read.
    """

    def __init__(self, ram_bytes: int, disk_dir: Path, disk_bytes: int) -> None:
        self._ram = RamTier(ram_bytes)
        self._disk = DiskTier(disk_dir, disk_bytes)
        self._lock = Lock()
        self._inflight: dict[str, Future[Any]] = {}
        self._coalesced = 0
        self._fetch_errors = 0
        self._fetch_seconds = Latency()

    def close(self) -> None:
        self._disk.close()

    def get(self, key: str, loader: Callable[[], V], codec: Codec[V] = ARRAYS) -> V:
        """The value of `key`, loading it on a miss; nothing pins it, so prefer `pinned` while computing
        on the value for a long time."""
        with self.pinned(key, loader, codec) as value:
            return value

    @contextmanager
    def pinned(self, key: str, loader: Callable[[], V], codec: Codec[V] = ARRAYS) -> Iterator[V]:
        """The value of `key`, kept in the RAM tier (if it is cached there) until the block exits."""
        value, pinned = self._acquire(key, loader, codec)
        try:
            yield value
        finally:
            if pinned:
                with self._lock:
                    self._ram.unpin(key)

    def _acquire(self, key: str, loader: Callable[[], V], codec: Codec[V]) -> tuple[V, bool]:
        with self._lock:
            found, value = self._ram.get(key, pin=True)
            if found:
                return value, True
            flight = self._inflight.get(key)
            leading = flight is None
            if flight is None:
                flight = self._inflight[key] = Future()
            else:
                self._coalesced += 1
        if not leading:
            value = flight.result()
            with self._lock:
                return value, self._ram.pin(key)
        try:
            value = self._fill(key, loader, codec)
        except BaseException as exc:
            with self._lock:
                del self._inflight[key]
            flight.set_exception(exc)
            raise
        with self._lock:
            pinned = self._ram.put(key, value, codec.nbytes(value), pin=True)
            del self._inflight[key]
        flight.set_result(value)
        return value, pinned

    def _fill(self, key: str, loader: Callable[[], V], codec: Codec[V]) -> V:
        """The value from the NVMe tier, else from the loader (written to NVMe on the way)."""
        payload = self._disk.read(key)
        if payload is not None:
            try:
                return codec.decode(payload)
            except ValueError as exc:
                log.warning("dropping undecodable cache entry %s: %s", key, exc)
                self._disk.drop(key)
        try:
            with self._fetch_seconds.timing():
                value = loader()
        except BaseException:
            with self._lock:
                self._fetch_errors += 1
            raise
        if codec.nbytes(value) <= self._disk.budget:  # else the encoding would only be thrown away
            self._disk.write(key, codec.encode(value))
        return value

    def stats(self) -> dict[str, Any]:
        """Per tier: hits, misses, hit rate, bytes, budget, entries, evictions; and read latencies."""
        with self._lock:
            ram = self._ram.stats()
            coalesced, errors = self._coalesced, self._fetch_errors
        fetch = self._fetch_seconds.snapshot()
        return {
            "ram": ram,
            "nvme": self._disk.stats(),
            "storage": {"fetches": fetch["count"], "errors": errors, "fetch_seconds": fetch},
            "coalesced": coalesced,
        }
