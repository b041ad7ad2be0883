"""The NVMe tier: one file per entry in a local folder, written crash-safely and verified on every read.

A file is `MAGIC | u32 key length | u64 payload length | 16-byte digest | key | payload`, where the digest
is xxh3-128 over the lengths, the key and the payload (about 30 GB/s, so checking a 12 MB fragment on every
read costs under a millisecond, where blake2b would cost 15). A flipped bit anywhere, a truncated file or
another key's file is therefore caught before a byte is decoded, and the entry is dropped and refetched.

Files are written under `tmp/`, fsynced, then renamed into `<2 hex>/<32 hex>`, so a crash leaves either
the whole entry or none of it (plus temporary files, removed at the next start). A folder that vanishes
under a running tier (an operator's `rm -rf cache_dir/*`, a tmpfs remounted) is made again by the next
write, which also forgets the entries whose files went with it (`recreated` counts it). The file name is a hash
of the key; the key inside the file guards against the (astronomically rare) collision. A restart rebuilds
the index from directory metadata alone (sizes, and modification times as the LRU order, since a hit
touches its file), so a warm restart stays warm without reading the entries.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any

import xxhash

from appliance.cache.stats import Latency, hit_rate

MAGIC = b"APCACHE1"
_HEAD = struct.Struct("<8sIQ16s")
_LENGTHS = struct.Struct("<IQ")
_MAX_KEY = 64 * 1024
_TMP = "tmp"
log = logging.getLogger("appliance.cache")


class CacheDirInUse(RuntimeError):
    """Another live process owns this cache folder: two owners would evict each other's files."""


@dataclass(frozen=True)
class CachedFile:
    name: str
    size: int
    mtime: float


def entry_name(key: str) -> str:
    return xxhash.xxh3_128_hexdigest(key.encode())


def _digest(key: bytes, payload: bytes) -> bytes:
    h = xxhash.xxh3_128(_LENGTHS.pack(len(key), len(payload)))
    h.update(key)
    h.update(payload)
    return h.digest()


def scan(directory: Path) -> Iterator[CachedFile]:
    """The entries in a cache folder, from directory metadata only."""
    for sub in os.scandir(directory) if directory.is_dir() else ():
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        for f in os.scandir(sub.path):
            if len(f.name) == 32 and f.name.startswith(sub.name) and f.is_file():
                st = f.stat()
                yield CachedFile(f.name, st.st_size, st.st_mtime)


class DiskTier:
    """Files of encoded entries under a folder this process owns, bounded by the bytes of the files.

    The bound counts every byte written, temporary files included: a write first reserves its size
    (evicting the least recently used files), so concurrent writers never push the folder past the budget.
    Readers need no pins: a file evicted while being read stays readable through the open handle, and one
    evicted just before being opened reads as a miss.
    """

    def __init__(self, directory: Path, budget: int) -> None:
        self.directory = directory
        self.budget = max(0, budget)
        directory.mkdir(parents=True, exist_ok=True)
        self._owner = _claim(directory)
        self._lock = Lock()
        self._index: OrderedDict[str, int] = OrderedDict()
        self._reserved = 0
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.corrupt = self.rejected = self.write_errors = 0
        self.recreated = 0  # times the folder (or tmp/) had vanished and was made again
        self.read_seconds = Latency()
        tmp = directory / _TMP
        tmp.mkdir(exist_ok=True)
        for leftover in tmp.iterdir():
            leftover.unlink(missing_ok=True)
        for f in sorted(scan(directory), key=lambda f: f.mtime):
            self._index[f.name] = f.size
            self.bytes += f.size
        with self._lock:
            self._make_room(0)

    def close(self) -> None:
        """Give up the folder (the lock on it), so another cache may open it."""
        self._owner.close()

    def _path(self, name: str) -> Path:
        return self.directory / name[:2] / name

    def read(self, key: str) -> bytes | None:
        """The entry's payload, verified; None on a miss, or when the file was corrupt (and is now gone)."""
        name = entry_name(key)
        with self._lock:
            if name not in self._index:
                self.misses += 1
                return None
            self._index.move_to_end(name)
        try:
            with self.read_seconds.timing():
                payload = self._read_verified(name, key.encode())
        except FileNotFoundError:
            payload = None  # evicted between the index lookup and the open: a plain miss
            self._forget(name, corrupt=False)
        except (OSError, ValueError) as exc:
            log.warning("dropping corrupt cache file for %s: %s", key, exc)
            payload = None
            self._forget(name, corrupt=True)
        if payload is None:
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        try:
            os.utime(self._path(name))  # the LRU order that survives a restart
        except OSError:
            pass
        return payload

    def _read_verified(self, name: str, key: bytes) -> bytes:
        with open(self._path(name), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(_HEAD.size)
            if len(head) != _HEAD.size:
                raise ValueError("truncated header")
            magic, key_len, payload_len, digest = _HEAD.unpack(head)
            if magic != MAGIC or key_len > _MAX_KEY or size != _HEAD.size + key_len + payload_len:
                raise ValueError("bad header or truncated file")
            stored_key = fh.read(key_len)
            payload = fh.read(payload_len)
        if len(payload) != payload_len or _digest(stored_key, payload) != digest:
            raise ValueError("checksum mismatch")
        if stored_key != key:
            raise ValueError("file holds another key")
        return payload

    def drop(self, key: str) -> None:
        """Remove an entry whose bytes verified but would not decode (written by another codec)."""
        self._forget(entry_name(key), corrupt=True)

    def _forget(self, name: str, corrupt: bool) -> None:
        with self._lock:
            size = self._index.pop(name, None)
            if size is not None:
                self.bytes -= size
                self._unlink(name)
            self.corrupt += corrupt

    def write(self, key: str, payload: bytes) -> bool:
        """Store an entry unless it is already there or cannot fit in the budget at all; a failed write
        (disk full, I/O error) only costs the caching, never the read that asked for it."""
        name, key_bytes = entry_name(key), key.encode()
        size = _HEAD.size + len(key_bytes) + len(payload)
        with self._lock:
            if name in self._index:
                return True
            if not self._make_room(size):
                self.rejected += 1
                return False
            self._reserved += size
        header = _HEAD.pack(MAGIC, len(key_bytes), len(payload), _digest(key_bytes, payload))
        try:
            try:
                self._write_file(name, header, key_bytes, payload)
            except FileNotFoundError:  # the folder or tmp/ was removed under us: make it again, once
                self._recreate()
                self._write_file(name, header, key_bytes, payload)
        except OSError as exc:
            log.warning("could not write cache file for %s: %s", key, exc)
            with self._lock:
                self._reserved -= size
                self.write_errors += 1
            return False
        with self._lock:
            self._reserved -= size
            self._index[name] = size
            self.bytes += size
        return True

    def _write_file(self, name: str, header: bytes, key_bytes: bytes, payload: bytes) -> None:
        tmp = self.directory / _TMP / f"{name}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(header)
                fh.write(key_bytes)
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            self._path(name).parent.mkdir(exist_ok=True)
            os.replace(tmp, self._path(name))
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _recreate(self) -> None:
        """Make the folder and tmp/ again, and index what is left in it: entries whose files went with
        the folder would otherwise count against the budget until a read missed on each of them."""
        with self._lock:
            (self.directory / _TMP).mkdir(parents=True, exist_ok=True)
            self._index.clear()
            self.bytes = 0
            for f in sorted(scan(self.directory), key=lambda f: f.mtime):
                self._index[f.name] = f.size
                self.bytes += f.size
            self.recreated += 1
        log.warning("cache folder %s had vanished; made it again (%d entries left in it)", self.directory,
                    len(self._index))

    def _make_room(self, size: int) -> bool:
        """Evict oldest files until `size` more bytes fit; the caller holds the lock. Unlinking under the
        lock keeps a slow unlink from deleting a newer file of the same key written meanwhile."""
        if self._reserved + size > self.budget:
            return False
        while self._index and self.bytes + self._reserved + size > self.budget:
            name, victim = self._index.popitem(last=False)
            self.bytes -= victim
            self.evictions += 1
            self._unlink(name)
        return True

    def _unlink(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove cache file %s: %s", name, exc)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counters = {"hits": self.hits, "misses": self.misses, "hit_rate": hit_rate(self.hits, self.misses),
                        "bytes": self.bytes, "budget": self.budget, "entries": len(self._index),
                        "evictions": self.evictions, "rejected": self.rejected, "corrupt": self.corrupt,
                        "write_errors": self.write_errors, "recreated": self.recreated}
        return {**counters, "read_seconds": self.read_seconds.snapshot(), "dir": str(self.directory)}


def _claim(directory: Path) -> Any:
    """Lock the folder for this process for as long as it lives (the lock dies with the process)."""
    owner = open(directory / ".lock", "a")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        owner.close()
        raise CacheDirInUse(f"cache folder {directory} is in use by another process") from exc
    return owner
