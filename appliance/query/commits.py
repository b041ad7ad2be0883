"""Group commit: the concurrent writes of one table on a query node become one Lance commit per round.

Every write is a Lance commit: a new manifest that must name the version after the latest. Writers that
commit at once race for that version; Lance rebases the losers and tries again, and under 8 or more
concurrent writers some give up ("Commit conflict for version N", "Too many concurrent writers"), while
every commit costs a manifest write and a version whether it carries 1 row or 10,000. So a query node
commits the writes of one table one round at a time, as a database's group commit does:

- A write that finds no round of its table running starts one at once (a lone writer waits for no one).
- Writes that arrive while a round runs queue. When the round ends, the queue's head decides the next
  round: if it is an append, every queued append joins it (up to `max_rows` rows) and they commit as ONE
  append, one version; any other write (delete, update, merge_insert, overwrite, restore, a schema
  change) is a round of its own, in arrival order. Queued writes are concurrent (none was acknowledged),
  so committing the appends together before a later-queued update is a valid order.
- Each write is acknowledged only after its round committed, with the version that holds its rows.
- Appends are conformed to the table's schema (and so validated) before they join a round, so a bad
  request fails alone; if a combined append is still refused (its schema changed meanwhile, Lance
  refuses a value), each member commits alone and only the bad one fails.
- Conflicts that remain (other query nodes, the indexers' compaction writing the same table) are retried
  here with jittered exponential backoff for up to `retry_seconds`; then the write fails with 409
  RetryableConflict (a commit conflict) or 503 Overloaded (too many writers), both with Retry-After,
  which the lancedb client and other HTTP clients retry. Never 400: the request was fine.

A round is led by the thread of its first member, like the search batches of service.Coalescer.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from appliance.errors import ApplianceError, Overloaded, RetryableConflict
from appliance.storage import lance_errors

T = TypeVar("T")
CommitAppends = Callable[[str, list[pa.Table]], int]  # (table, conformed parts) -> the committed version

FIRST_BACKOFF = 0.02
MAX_BACKOFF = 1.0


@dataclass
class _Write:
    rows: pa.Table | None  # an append's conformed rows; None for any other write
    operation: Callable[[], Any] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    round: list[_Write] | None = None  # set on the member chosen to lead a queued round
    result: Any = None
    error: BaseException | None = None


@dataclass
class _Table:
    running: bool = False
    queue: list[_Write] = field(default_factory=list)


class GroupCommitter:
    """Commits the writes submitted concurrently for one table in rounds (see the module's docstring)."""

    def __init__(self, commit_appends: CommitAppends, max_rows: int, retry_seconds: float,
                 on_commit: Callable[[str], None] | None = None) -> None:
        """`on_commit(table)` runs after every round, committed or not (a failed round may have committed
        part), before its writes are acknowledged: the table version cache of the node's searches
        (TableStore.written) learns of the write there, so the next search sees it."""
        if max_rows < 1 or retry_seconds < 0:
            raise ValueError("max_rows must be >= 1 and retry_seconds >= 0")
        self._commit_appends = commit_appends
        self._on_commit = on_commit
        self._max_rows = max_rows
        self.retry_seconds = retry_seconds
        self._tables: dict[str, _Table] = {}
        self._lock = threading.Lock()
        self.rounds = 0  # commit rounds run and the writes they held, for /metrics and tests
        self.writes = 0
        self.retries = 0

    def append(self, table: str, rows: pa.Table) -> int:
        """Commit conformed rows with whatever else is queued for the table; the committed version."""
        return self._submit(table, _Write(rows))

    def run(self, table: str, operation: Callable[[], T]) -> T:
        """Run a write that is not a plain append (it commits by itself) in its own round, in order with
        the table's other writes, retrying commit conflicts; its result."""
        return self._submit(table, _Write(None, operation))

    def _submit(self, table: str, me: _Write) -> Any:
        with self._lock:
            state = self._tables.setdefault(table, _Table())
            if not state.running and not state.queue:
                state.running = True
                me.round = [me]
            else:
                state.queue.append(me)
        if me.round is None:
            me.ready.wait()
        if me.round is not None:  # leading: commit the round, then hand the queue to the next leader
            self._lead(table, me.round)
        if me.error is not None:
            raise me.error
        return me.result

    def _lead(self, table: str, members: list[_Write]) -> None:
        try:
            if members[0].rows is None:
                op = members[0].operation
                assert op is not None
                self._settle(members, lambda: self.retrying(op))
            else:
                self._append_round(table, members)
        finally:
            if self._on_commit is not None:
                self._on_commit(table)
            nxt = self._next_round(table, len(members))
            for member in members[1:]:
                member.ready.set()
            if nxt:
                nxt[0].round = nxt
                nxt[0].ready.set()

    def _append_round(self, table: str, members: list[_Write]) -> None:
        parts = [m.rows for m in members]
        try:
            version = self.retrying(lambda: self._commit_appends(table, parts))  # type: ignore[arg-type]
        except ApplianceError as exc:
            if len(members) == 1 or exc.status >= 500 or isinstance(exc, RetryableConflict):
                _fail(members, exc)
                return
            for member in members:  # refused as a whole: each alone, so only a bad one fails
                self._settle([member], lambda m=member: self.retrying(
                    lambda: self._commit_appends(table, [m.rows])))
            return
        except BaseException as exc:  # noqa: BLE001 - every member gets it, not just this thread
            _fail(members, exc)
            return
        for member in members:
            member.result = version

    def _settle(self, members: list[_Write], work: Callable[[], Any]) -> None:
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the member's own thread
            _fail(members, exc)
            return
        for member in members:
            member.result = result

    def _next_round(self, table: str, size: int) -> list[_Write]:
        """Count a round done and take the next off the queue (it is counted running at once)."""
        with self._lock:
            state = self._tables[table]
            self.rounds += 1
            self.writes += size
            nxt: list[_Write] = []
            if state.queue and state.queue[0].rows is None:
                nxt.append(state.queue.pop(0))
            elif state.queue:
                rows, rest = 0, []
                for member in state.queue:
                    if member.rows is not None and (not nxt or rows + member.rows.num_rows <= self._max_rows):
                        nxt.append(member)
                        rows += member.rows.num_rows
                    else:
                        rest.append(member)
                state.queue = rest
            if nxt:
                state.running = True
            else:
                state.running = False
                del self._tables[table]
            return nxt

    def retrying(self, work: Callable[[], T]) -> T:
        """`work()`, run again after commit conflicts with jittered exponential backoff for up to
        `retry_seconds`; then RetryableConflict (409) or Overloaded (503), both with Retry-After."""
        deadline = time.monotonic() + self.retry_seconds
        delay = FIRST_BACKOFF
        while True:
            try:
                return work()
            except BaseException as exc:
                error = commit_contention(exc)
                if error is None:
                    raise
                pause = delay * (0.5 + random.random())
                if time.monotonic() + pause > deadline:
                    if error is exc:
                        raise
                    raise error from exc
                self.retries += 1
                time.sleep(pause)
                delay = min(MAX_BACKOFF, delay * 2)


def commit_contention(exc: BaseException) -> ApplianceError | None:
    """The retryable error (RetryableConflict 409, Overloaded 503) for a commit lost to other writers, as
    the storage boundary (lance_errors.py) classifies it; None for any other error (not retried here)."""
    mapped = lance_errors.classify(exc, by_type=False)
    return mapped if isinstance(mapped, RetryableConflict | Overloaded) else None


def _fail(members: list[_Write], exc: BaseException) -> None:
    for member in members:
        member.error = exc  # the same instance: a copy could not be made of every exception type
