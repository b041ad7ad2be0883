"""The indexer process: an APScheduler loop that receives events, works on tables, and idles to zero.

Jobs (a background scheduler, three threads):
- `poll`: receive one event (long-polling up to a second) and handle it to the end. One at a time
  (`max_instances=1`), since a build already uses the indexer's whole thread budget.
- `heartbeat`: while an event is being handled, keep its message hidden (`extend`) and refresh the
  table's status report. The message's visibility is the table lease: if this process dies, the
  heartbeat stops, the message reappears after the visibility timeout, and another indexer redoes the work.
- `idle`: with nothing handled for `idle_timeout` seconds and nothing pending in the queue, stop: the
  process exits 0 (scale to zero). `appliance up` (or an autoscaling group on queue depth) starts a
  new one when events arrive.

The process lowers its own priority (`nice`) and caps BLAS/faiss threads, so a build on a host shared with
executors slows queries as little as possible.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from appliance.config import Settings
from appliance.errors import Conflict
from appliance.events import Delivery, EventQueue, open_queue
from appliance.events.status import IDLE, IndexerStatus
from appliance.indexer.policy import Policy
from appliance.indexer.worker import LeaseLost, TableWorker

log = logging.getLogger("appliance.indexer")
POLL_WAIT = 1.0


class Indexer:
    def __init__(self, settings: Settings, queue: EventQueue | None = None) -> None:
        self.settings = settings
        self.queue = queue or open_queue(settings.events, settings.data, settings.event_visibility_timeout,
                                         settings.event_max_receives)
        root = settings.storage_root()
        self.status = IndexerStatus(root)
        self.worker = TableWorker(root, Policy.from_settings(settings), settings.indexer_cleanup_grace,
                                  settings.indexer_threads, on_step=self._step)
        self.idle_timeout = settings.indexer_idle_timeout
        self.handled = 0
        self._current: Delivery | None = None
        self._held = True  # whether the current delivery is still ours (the last heartbeat's answer)
        self._last_activity = time.monotonic()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(3)},
                                              job_defaults={"coalesce": True, "max_instances": 1})
        logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: already running" is normal here

    def run(self) -> int:
        """Serve until idle (exit code 0) or a signal."""
        lower_priority(self.settings.indexer_nice, self.settings.indexer_threads)
        beat = max(0.2, self.settings.event_visibility_timeout / 3)
        self._scheduler.add_job(self._poll, "interval", seconds=0.05, id="poll")
        self._scheduler.add_job(self._heartbeat, "interval", seconds=beat, id="heartbeat")
        self._scheduler.add_job(self._check_idle, "interval", seconds=0.25, id="idle")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._done.set())
        self._scheduler.start()
        log.info("indexer %d started (idle timeout %.0fs)", os.getpid(), self.idle_timeout)
        self._done.wait()
        with self._lock:
            current = self._current
        if current is not None:  # stopped by a signal mid-work: hand the table to the next indexer now
            self.queue.release(current)
            self._scheduler.shutdown(wait=False)
            log.info("indexer %d stopped mid-work; its event was released", os.getpid())
            os._exit(0)  # the work thread cannot be interrupted; its partial objects are garbage for cleanup
        self._scheduler.shutdown(wait=True)
        self.queue.close()
        log.info("indexer %d exiting after %d events", os.getpid(), self.handled)
        return 0

    def stop(self) -> None:
        self._done.set()

    def _poll(self) -> None:
        if self._done.is_set():
            return
        for delivery in self.queue.receive(max_messages=1, wait=POLL_WAIT):
            self._handle(delivery)

    def _handle(self, delivery: Delivery) -> None:
        event = delivery.event
        with self._lock:
            self._current, self._held = delivery, True
            self._last_activity = time.monotonic()
            self.status.write(event.table, "working", event=_event_summary(delivery), started_at=time.time())
        try:
            report = self.worker.handle(event, lambda: self._held)
        except LeaseLost as exc:
            log.warning("%s", exc.message)
            self._finish(delivery, last_error=exc.message, last_error_at=time.time())
            return
        except Conflict as exc:  # the index changed under the build (a drop, an overwrite): again, from it
            log.warning("table %s: %s; handling the event again", event.table, exc.message)
            self._finish(delivery, last_error=exc.message, last_error_at=time.time())
            self.queue.release(delivery)
            return
        except Exception as exc:  # any failure: the event comes back later, and dead-letters after N tries
            log.exception("handling %s of table %s failed (delivery %d)", event.kind, event.table, delivery.receives)
            self._finish(delivery, last_error=f"{type(exc).__name__}: {exc}", last_error_at=time.time())
            self.queue.release(delivery, delay=min(30.0, 2.0 ** delivery.receives))
            return
        self._finish(delivery, last_report=report, last_error=None, finished_at=time.time())
        log.info("table %s: %s", event.table, report.get("work"))
        if not self.queue.ack(delivery):
            log.warning("event %s of table %s was redelivered before it was acknowledged", event.id, event.table)

    def _finish(self, delivery: Delivery, **report: Any) -> None:
        """Report the table idle and forget the delivery, atomically with respect to the heartbeat (which
        would otherwise write a stale "working" over the final report)."""
        with self._lock:
            self.status.write(delivery.event.table, IDLE, **report)
            self._current = None
            self._last_activity = time.monotonic()
            self.handled += 1

    def _step(self, step: str) -> None:
        with self._lock:
            if self._current is not None:
                self.status.write(self._current.event.table, step, step_started_at=time.time())

    def _heartbeat(self) -> None:
        with self._lock:
            current = self._current
        if current is None:
            return
        held = self.queue.extend(current, self.settings.event_visibility_timeout)
        with self._lock:
            if self._current is not current:
                return
            self._held = held
            if held:
                doc = self.status.read(current.event.table) or {}
                self.status.write(current.event.table, doc.get("state", "working"))

    def _check_idle(self) -> None:
        with self._lock:
            busy = self._current is not None
            quiet = time.monotonic() - self._last_activity
        if busy or quiet < self.idle_timeout:
            return
        if self.queue.stats().pending == 0:
            self._done.set()
        else:
            with self._lock:
                self._last_activity = time.monotonic()  # events wait (held elsewhere, or delayed): stay up


def lower_priority(nice: int, threads: int) -> None:
    """Yield the CPU to query serving: a higher niceness, and a cap on compute threads."""
    import kernels

    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            log.warning("could not lower the indexer's priority")
    kernels.set_thread_budget(threads)


def _event_summary(delivery: Delivery) -> dict[str, Any]:
    e = delivery.event
    return {"id": e.id, "kind": e.kind, "action": e.action, "table_version": e.table_version,
            "delivery": delivery.receives}
