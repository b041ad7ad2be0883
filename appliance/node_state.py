"""State shared by the gunicorn workers of one node: the drain flag, each worker's requests in flight, and a
write counter per table.

A node may run several gunicorn worker processes (setting `query_workers`). What a client sees must not
depend on which worker answers: `POST /admin/drain` on any worker drains them all and `GET /admin/drain`
counts the in-flight requests of all (appliance/drain.py), and a write acknowledged by one worker is seen
by the next search on any other (the table version cache of appliance/storage/tables.py compares the
table's write counter here before trusting its cached version).

The gunicorn master creates the state before it forks its workers (`on_starting` in
appliance/gunicorn_hooks.py, which the launcher passes with `-c python:appliance.gunicorn_hooks`): memory
mapped shared, so the workers (and any worker gunicorn starts again later) inherit the mapping and
nothing is left behind whatever way the node ends. With several workers it is a small file in /dev/shm
(the temp folder where there is none), unlinked at once, whose POSIX record lock serialises updates
across the workers (the kernel releases it if a worker dies holding it); within a worker, a thread lock.
A process not started that way (a test's in-process app) gets a private state: the same code, one
process.

Layout (little-endian): draining (u64), draining since (f64), then WORKER_SLOTS slots of (pid i64,
in flight i64), then TABLE_SLOTS write counters (u64) indexed by crc32(table name).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator

WORKER_SLOTS = 64
TABLE_SLOTS = 1024
_HEAD = struct.Struct("<Qd")
_SLOT = struct.Struct("<qq")
_COUNTER = struct.Struct("<Q")
_SLOTS_AT = _HEAD.size
_COUNTERS_AT = _SLOTS_AT + WORKER_SLOTS * _SLOT.size
SIZE = _COUNTERS_AT + TABLE_SLOTS * _COUNTER.size
SHM = "/dev/shm"


def shm_dir() -> str:
    """/dev/shm where it is a writable folder (memory, never the disk), else the system temp folder."""
    return SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else tempfile.gettempdir()


class NodeState:
    def __init__(self, shared: bool, workers: int = 1) -> None:
        """`shared`: backed by a file lockable across processes (made before the workers fork) for
        `workers` worker processes. With one, the lock across processes is skipped: a thread lock is
        enough (the record lock's two system calls per use were ~5% of a query node's CPU samples)."""
        self._fd = -1
        self.workers = workers
        if shared and workers > 1:
            fd, path = tempfile.mkstemp(prefix="appliance-node-", dir=shm_dir())
            os.unlink(path)
            os.ftruncate(fd, SIZE)
            self._fd = fd
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        else:
            self._map = mmap.mmap(-1, SIZE)
        self._thread_lock = threading.Lock()
        self._slot = -1
        self._slot_pid = 0

    @property
    def shared(self) -> bool:
        """Whether other processes share this state (and so are polled, not woken, when waited for)."""
        return self._fd >= 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd >= 0:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if self._fd >= 0:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # --- drain ---------------------------------------------------------------------------------------------

    def draining(self) -> tuple[bool, float]:
        flag, since = _HEAD.unpack_from(self._map, 0)
        return bool(flag), since

    def set_draining(self, on: bool) -> None:
        """Call with the lock held."""
        flag, since = _HEAD.unpack_from(self._map, 0)
        if on and not flag:
            _HEAD.pack_into(self._map, 0, 1, time.time())
        elif not on:
            _HEAD.pack_into(self._map, 0, 0, 0.0)

    def add_in_flight(self, delta: int) -> None:
        """This process's count of requests in flight, plus `delta`. Call with the lock held."""
        at = _SLOTS_AT + self._my_slot() * _SLOT.size
        pid, count = _SLOT.unpack_from(self._map, at)
        _SLOT.pack_into(self._map, at, pid, count + delta)

    def in_flight(self) -> int:
        """Requests in flight in every live worker of the node (a dead worker's count is not waited for)."""
        total = 0
        for i in range(WORKER_SLOTS):
            pid, count = _SLOT.unpack_from(self._map, _SLOTS_AT + i * _SLOT.size)
            if pid and count and (pid == os.getpid() or _alive(pid)):
                total += count
        return total

    def _my_slot(self) -> int:
        """This process's slot, claimed on first use (a forked worker claims its own). Lock held."""
        pid = os.getpid()
        if self._slot >= 0 and self._slot_pid == pid:
            return self._slot
        free = None
        for i in range(WORKER_SLOTS):
            owner, _ = _SLOT.unpack_from(self._map, _SLOTS_AT + i * _SLOT.size)
            if owner == pid:
                free = i
                break
            if free is None and (owner == 0 or not _alive(owner)):
                free = i
        if free is None:
            raise RuntimeError(f"more than {WORKER_SLOTS} worker processes share one node state")
        _SLOT.pack_into(self._map, _SLOTS_AT + free * _SLOT.size, pid, 0)
        self._slot, self._slot_pid = free, pid
        return free

    # --- table write counters -------------------------------------------------------------------------------

    def table_counter(self, table: str) -> int:
        """A number that changes whenever a worker of this node commits a write to `table` (or to another
        table sharing its slot): cheap to read, no lock."""
        return _COUNTER.unpack_from(self._map, _table_at(table))[0]

    def table_written(self, table: str) -> None:
        """Tell every worker of the node that `table` changed (before the write is acknowledged)."""
        at = _table_at(table)
        with self.locked():
            _COUNTER.pack_into(self._map, at, _COUNTER.unpack_from(self._map, at)[0] + 1)


def _table_at(table: str) -> int:
    return _COUNTERS_AT + (zlib.crc32(table.encode()) % TABLE_SLOTS) * _COUNTER.size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_node: NodeState | None = None


def create_shared(workers: int) -> NodeState:
    """Called by the gunicorn master before it forks its `workers` workers: the state they will share."""
    global _node
    _node = NodeState(shared=True, workers=workers)
    return _node


def node_state() -> NodeState:
    """The state the gunicorn master made for its workers; else a new private one (a process not started
    by gunicorn with the hooks, such as a test's in-process app, has its own per app)."""
    return _node if _node is not None else NodeState(shared=False)
