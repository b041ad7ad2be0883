"""The recall monitor: a query node re-runs a small sample of its live index searches exactly, in the background.

The search path only offers (`offer`): a sampled search's first query vector, k, filter and the ids it
answered go into a small bounded queue (full: the sample is dropped), at most `sample_rate` of searches and at
most `per_second` a second, and only while the re-runs keep within `budget`, their share of the time (a re-run
that took t seconds admits the next one t x (1/budget - 1) seconds later: an exact re-run scans the whole
table, so on a large table it is rare, and its cost stays a bounded share of the executors'). A daemon thread,
started on the first offer (so after gunicorn forks), runs each sample again with the index bypassed and
records recall@k, the share of the exact answer's rows the live answer had. A table's recall is the mean over
its last `window` samples; it is exported as the gauge `appliance_recall_at_k{table}` and in `GET
/api/v1/tables/T/index` (`recall_monitor`).

It also closes the loop: the build measured the probe count that reaches the index's `target_recall` on the
table's own rows (index/tuning.py), but live queries can be harder than rows (queries from another
distribution than the documents, where a graph's greedy walk also loses more than its partition recall
says). When the last `ADJUST_SAMPLES` samples taken at a table's current search breadth average below the
target, the breadth grows by `BREADTH_STEP` (at most `MAX_BREADTH`), and the planner multiplies the probe
count and a graph's ef by it (planner/plan.py `breadth`). It never shrinks for that index version (a level
that failed once is not tried again); a new index version starts at 1. Gauge `appliance_search_breadth`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily

import kernels
from appliance.query.request import SearchRequest

log = logging.getLogger(__name__)
QUEUE_SIZE = 8
ADJUST_SAMPLES = 20  # samples at one breadth whose mean decides whether it reaches the target
BREADTH_STEP = 1.5
MAX_BREADTH = 8.0  # probes and ef stay within their limits (appliance/limits.py) whatever the breadth
Exact = Callable[[str, SearchRequest], np.ndarray]
"""Runs a search exactly and returns its ids [nq, k] (NO_ID padding)."""


class RecallMonitor:
    def __init__(self, exact: Exact, sample_rate: float, per_second: float, window: int = 100,
                 budget: float = 1.0) -> None:
        self._exact = exact
        self.sample_rate = sample_rate
        self._interval = 1.0 / per_second if per_second > 0 else float("inf")
        self.window = window
        self._rest = 1.0 / budget - 1.0 if budget > 0 else float("inf")  # seconds idle per second of re-run
        self._next = 0.0
        self._quiet_until = 0.0  # set by the last re-run's duration (the budget)
        self._queue: queue.Queue[tuple[str, SearchRequest, np.ndarray, Breadth | None] | None] = queue.Queue(
            QUEUE_SIZE)
        self._samples: dict[str, deque[float]] = {}
        self._breadth: dict[str, Breadth] = {}  # per table, for its current index version
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def offer(self, name: str, request: SearchRequest, ids: np.ndarray, index_version: int | None = None,
              target: float | None = None, breadth: float = 1.0) -> None:
        """Maybe queue this search for an exact re-run; never blocks and never fails the search. With the
        index version it searched, that index's target recall and the breadth it ran at, the sample also
        steers the table's breadth."""
        if self.sample_rate <= 0 or request.bypass_index or len(ids) == 0:
            return
        now = time.monotonic()
        if now < self._next or now < self._quiet_until or random.random() >= self.sample_rate:
            return
        self._next = now + self._interval
        sample = dataclasses.replace(request, queries=request.queries[:1], columns=[], bypass_index=True,
                                     nprobes=None)
        try:
            steer = None if index_version is None or target is None else Breadth(index_version, target, breadth)
            self._queue.put_nowait((name, sample, np.array(ids[:1]), steer))
        except queue.Full:
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="recall-monitor", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                name, request, answered, steer = item
                started = time.monotonic()
                try:
                    exact = self._exact(name, request)
                finally:
                    ended = time.monotonic()
                    self._quiet_until = ended + (ended - started) * self._rest
                self._record(name, recall_at_k(answered[0], exact[0]), steer)
            except Exception:  # noqa: BLE001 - a failed sample (table dropped, executor down) is just skipped
                log.debug("recall sample failed", exc_info=True)
            finally:
                self._queue.task_done()

    def _record(self, name: str, recall: float | None, steer: Breadth | None = None) -> None:
        if recall is None:
            return
        with self._lock:
            self._samples.setdefault(name, deque(maxlen=self.window)).append(recall)
            if steer is None:
                return
            state = self._breadth.get(name)
            if state is None or state.index_version != steer.index_version:
                if state is not None and steer.index_version < state.index_version:
                    return  # a search of an index version already replaced
                state = self._breadth[name] = Breadth(steer.index_version, steer.target)
            if steer.value != state.value:
                return  # taken at a breadth already changed: says nothing of the current one
            state.samples.append(recall)
            if len(state.samples) < ADJUST_SAMPLES or state.value >= MAX_BREADTH:
                return
            mean = float(np.mean(state.samples))
            if mean < state.target:
                state.value = min(state.value * BREADTH_STEP, MAX_BREADTH)
                state.samples.clear()
                log.info("table %s: sampled recall@k %.3f is below the index's target %.3f; search breadth "
                         "raised to %.2f", name, mean, state.target, state.value)

    def breadth(self, name: str, index_version: int) -> float:
        """The factor the planner multiplies probes and ef by for `name`'s index `index_version`."""
        state = self._breadth.get(name)
        return state.value if state is not None and state.index_version == index_version else 1.0

    def recall(self, name: str) -> float | None:
        """Mean recall@k of the table's last `window` samples; None before the first."""
        with self._lock:
            samples = self._samples.get(name)
            return float(np.mean(samples)) if samples else None

    def describe(self, name: str) -> dict[str, Any]:
        with self._lock:
            samples = len(self._samples.get(name, ()))
        recall = self.recall(name)
        state = self._breadth.get(name)
        return {"recall_at_k": None if recall is None else round(recall, 4), "samples": samples,
                "window": self.window, "sample_rate": self.sample_rate,
                "breadth": 1.0 if state is None else round(state.value, 4),
                "breadth_index_version": None if state is None else state.index_version}

    def gauges(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("appliance_recall_at_k", "Recall@k of this query node's index searches, re-run "
                                  "exactly in the background: mean of the last samples, per table.", labels=["table"])
        with self._lock:
            names = sorted(self._samples)
        for name in names:
            recall = self.recall(name)
            if recall is not None:
                gauge.add_metric([name], recall)
        breadth = GaugeMetricFamily("appliance_search_breadth", "Factor this query node multiplies a table's "
                                    "probe count and graph ef by, raised while its sampled recall is below "
                                    "the index's target_recall.", labels=["table"])
        with self._lock:
            for name, state in sorted(self._breadth.items()):
                breadth.add_metric([name], state.value)
        return [gauge, breadth]

    def wait_idle(self, timeout: float) -> bool:
        """Whether every queued sample was processed within `timeout` seconds (for tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=1.0)
            except queue.Full:
                pass


@dataclasses.dataclass
class Breadth:
    """A table's search breadth for one index version, and the samples taken at it."""

    index_version: int
    target: float
    value: float = 1.0
    samples: deque[float] = dataclasses.field(default_factory=lambda: deque(maxlen=ADJUST_SAMPLES))


def recall_at_k(answered: np.ndarray, exact: np.ndarray) -> float | None:
    """The share of the exact answer's rows in the live answer; None when the exact answer is empty."""
    want = {int(i) for i in exact if i != kernels.NO_ID}
    if not want:
        return None
    return len(want & {int(i) for i in answered if i != kernels.NO_ID}) / len(want)
