"""Cross-request batching: concurrent searches that differ only in their query vectors run as one batch.

Every search pays a fixed price on the query node and per executor (snapshot, plan, one HTTP hop per
executor, the payload read) that does not grow with the number of query vectors, and the executors scan
a partition probed by several queries with one matrix product. So under load the query node gathers the
searches that arrive while earlier ones are running into one batch and runs it once.

No request waits for company: one that finds fewer than `max_inflight` batches of its kind running leads
a batch of its own at once, so a lone client sees no added latency. Requests arriving while the limit is
reached queue; whenever a batch finishes, the queue (up to `max_rows` query vectors) becomes the next
batch, led by its first request's thread. Each batch pins its table version only once its members are
fixed, after every member arrived, so read-your-writes holds for every member.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
RunBatch = Callable[[Hashable, list[Item]], list[Result]]  # (key, items) -> one result per item, in order


@dataclass
class _Member(Generic[Item, Result]):
    item: Item
    rows: int
    ready: threading.Event = field(default_factory=threading.Event)
    batch: list[_Member[Item, Result]] | None = None  # set on the member chosen to lead a queued batch
    result: Result | None = None
    error: BaseException | None = None


@dataclass
class _Kind(Generic[Item, Result]):
    running: int = 0
    queue: list[_Member[Item, Result]] = field(default_factory=list)


class Coalescer(Generic[Item, Result]):
    """Runs `run_batch(key, items)` for items submitted concurrently under equal keys."""

    def __init__(self, run_batch: RunBatch, max_rows: int, max_inflight: int = 1) -> None:
        if max_rows < 1 or max_inflight < 1:
            raise ValueError("max_rows and max_inflight must be >= 1")
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._max_inflight = max_inflight
        self._kinds: dict[Hashable, _Kind[Item, Result]] = {}
        self._lock = threading.Lock()
        self.batches = 0  # batches run, and the items they held: the mean batch size, for /metrics
        self.items = 0

    def submit(self, key: Hashable, item: Item, rows: int = 1) -> Result:
        """`item`'s result, computed in a batch with whatever else of equal key is queued; raises what the
        batch raised. `rows` is the item's share of `max_rows` (its number of query vectors)."""
        me: _Member[Item, Result] = _Member(item, rows)
        with self._lock:
            kind = self._kinds.setdefault(key, _Kind())
            if kind.running < self._max_inflight and not kind.queue:
                kind.running += 1
                me.batch = [me]
            else:
                kind.queue.append(me)
        if me.batch is None:
            me.ready.wait()
        if me.batch is not None:  # leading: run it, then hand the queue to the next leader
            self._lead(key, me.batch)
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _lead(self, key: Hashable, batch: list[_Member[Item, Result]]) -> None:
        try:
            results = self._run_batch(key, [m.item for m in batch])
            for member, result in zip(batch, results, strict=True):
                member.result = result
        except BaseException as exc:  # noqa: BLE001 - every member gets it, not just this thread
            for member in batch:
                member.error = exc  # the same instance: a copy could not be made of every exception type
        finally:
            nxt = self._finish(key, len(batch))
            for member in batch[1:]:
                member.ready.set()
            if nxt:
                nxt[0].batch = nxt
                nxt[0].ready.set()

    def _finish(self, key: Hashable, size: int) -> list[_Member[Item, Result]]:
        """Count a batch done and take the next one off the queue (it is counted running at once)."""
        with self._lock:
            kind = self._kinds[key]
            kind.running -= 1
            self.batches += 1
            self.items += size
            nxt: list[_Member[Item, Result]] = []
            rows = 0
            while kind.queue and (not nxt or rows + kind.queue[0].rows <= self._max_rows):
                member = kind.queue.pop(0)
                nxt.append(member)
                rows += member.rows
            if nxt:
                kind.running += 1
            elif not kind.running:
                del self._kinds[key]
            return nxt
