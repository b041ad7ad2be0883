"""The local indexer fleet of `appliance up`: starts an indexer when events wait and none runs.

This is the one-machine stand-in for the cloud's autoscaling group with minimum 0 scaled on queue depth:
indexers exit by themselves when idle, and the supervisor starts one again when the queue has work. An
indexer that dies mid-build (killed, out of memory) simply leaves its event in flight; the next one
started here receives it again after the visibility timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from appliance import launch
from appliance.config import Settings
from appliance.events import EventQueue, QueueStats, open_queue

log = logging.getLogger("appliance.fleet")


class IndexerPool:
    def __init__(self, settings: Settings, log_dir: Path | None = None,
                 preexec: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.processes: list[subprocess.Popen] = []
        self.started = 0
        self._log_dir = log_dir
        self._preexec = preexec
        self._log: IO[bytes] | None = None
        self._queue: EventQueue | None = None
        self._disabled = settings.indexers < 1
        self._failures = 0
        self._not_before = 0.0

    @property
    def running(self) -> int:
        return sum(1 for p in self.processes if p.poll() is None)

    def tend(self) -> None:
        """Reap exited indexers; start one when events wait and the pool has room."""
        for p in [p for p in self.processes if p.poll() is not None]:
            self.processes.remove(p)
            if p.returncode == 0:
                self._failures = 0
                continue
            self._failures += 1  # back off, so an indexer that cannot start does not respawn in a tight loop
            self._not_before = time.monotonic() + min(30.0, 0.5 * 2 ** self._failures)
            print(f"[appliance] indexer {p.pid} exited with code {p.returncode}", file=sys.stderr, flush=True)
        if self._disabled or self.running >= self.settings.indexers or time.monotonic() < self._not_before:
            return
        stats = self._stats()
        if stats is None:
            return
        running = self.running
        # in-flight events may belong to a dead indexer: they need someone once they reappear
        if (running == 0 and stats.pending > 0) or stats.ready > running:
            self.spawn()

    def _stats(self) -> QueueStats | None:
        try:
            if self._queue is None:
                s = self.settings
                self._queue = open_queue(s.events, s.data, s.event_visibility_timeout, s.event_max_receives)
            return self._queue.stats()
        except Exception as exc:  # no queue: run without indexers rather than not at all
            print(f"[appliance] event queue unavailable ({exc}); no indexers will start", file=sys.stderr,
                  flush=True)
            self._disabled = True
            return None

    def spawn(self) -> subprocess.Popen:
        cmd = launch.indexer(self.settings)
        if self._log_dir is not None and self._log is None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self._log_dir / "indexer.log", "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(cmd.argv, env=cmd.env, stdout=self._log,
                                stderr=subprocess.STDOUT if self._log else None, start_new_session=True,
                                preexec_fn=self._preexec)
        self.processes.append(proc)
        self.started += 1
        return proc

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the indexers (each hands its event back at once), then SIGKILL what is left."""
        for p in self.processes:
            if p.poll() is None:
                _killpg(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _killpg(p, signal.SIGKILL)
                p.wait()
        self.processes.clear()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._queue is not None:
            self._queue.close()


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
