"""Latency figures of the cache's slow paths, cheap enough to record on every read."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock

import numpy as np


class Latency:
    """Seconds spent by one kind of read (object-storage fetch, NVMe read).

    Count and sum run since start; p50/p99 come from the most recent `window` samples, so memory stays flat
    and the percentiles describe the cache as it behaves now rather than as it did when it was cold.
    """

    def __init__(self, window: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._count = 0
        self._sum = 0.0
        self._lock = Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self._count += 1
            self._sum += seconds

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Record the duration of the block, only when it completes (a failed read has no meaningful latency)."""
        started = time.perf_counter()
        yield
        self.record(time.perf_counter() - started)

    def snapshot(self) -> dict[str, float | int | None]:
        with self._lock:
            samples = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
            count, total = self._count, self._sum
        p50, p99 = (np.percentile(samples, [50, 99]).tolist() if len(samples) else (None, None))
        return {"count": count, "sum": round(total, 6), "p50": p50, "p99": p99}


def hit_rate(hits: int, misses: int) -> float | None:
    """Hits over lookups; None before the first lookup, so an idle tier does not read as a 0% one."""
    lookups = hits + misses
    return hits / lookups if lookups else None
