"""The nodes' gunicorn worker: gthread, with each keep-alive connection served on one thread for its life.

gunicorn's gthread worker (`ThreadWorker`) passes every request of a kept-alive connection through its
event loop: the connection goes back into the worker's selector after each answer (epoll register), the
main thread wakes when the next request's bytes arrive (epoll unregister), hands it to the thread pool
(a future, its done-callback and a wake-up pipe write back to the main thread), so one request costs
two thread hand-offs and a handful of system calls before the app sees it. In the query node's profile
under 8 clients that loop was about 15% of its CPU (docs/BENCHMARKS.md, "Query node profile").

`PinnedThreadWorker` keeps gthread's accept loop, timeouts, heartbeat, graceful stop and HTTP handling
(`ThreadWorker.handle`, called once per request), and changes only what happens after an answer that
keeps the connection alive: the thread that served it waits for the connection's next request itself
(one `poll`), and serves it. The connection goes back to gthread's selector (its ordinary keep-alive
path) when
- it stays idle `PIN_IDLE_SECONDS` (capped at the keep-alive timeout), so an idle client holds no thread
  long; its keep-alive timeout still counts from its last answer;
- another connection waits for a thread and none is free: more connections than `threads` are served
  as gthread serves them, never starved. A thread waiting idle gives its connection back at once (the
  main thread signals it through an eventfd, one waiting thread per queued connection); a busy one
  after its current answer;
- the worker stops (SIGTERM): the connection takes gthread's stopping path, where a request still
  arriving within a short linger is answered with `Connection: close`.
"""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

PIN_IDLE_SECONDS = 2.0  # how long a thread waits for the next request of its idle connection
READ_CHUNK = 65536  # bytes a request's first recv() asks for (gunicorn's 8 KiB split a 384-d JSON search in two)
_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


class PinnedThreadWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._queued = 0  # connections handed to the pool that no thread has taken yet
        self._busy = 0  # threads serving a connection (a request, or waiting on it for the next)
        self._waiting = 0  # of those, threads waiting for their idle connection's next request
        self._release = -1  # eventfd (semaphore mode): one unit asks one waiting thread to give its connection back

    def init_process(self) -> None:
        self._release = os.eventfd(0, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        super().init_process()

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._ask_release(self.cfg.threads)  # every waiting thread hands its connection to the stopping path

    def handle_quit(self, sig: int, frame: Any) -> None:
        self._ask_release(self.cfg.threads)  # the pool's threads must end for the process to exit at once
        super().handle_quit(sig, frame)

    def enqueue_req(self, conn: Any) -> None:
        with self._lock:
            self._queued += 1
            starved = self._busy + self._queued > self.cfg.threads and self._waiting > 0
        if starved:
            self._ask_release(1)
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        with self._lock:
            self._queued -= 1
            self._busy += 1
        try:
            result = super().handle(conn)
            while result is True and self.alive and not self._others_wait():
                if not self._next_request(conn):
                    break
                result = super().handle(conn)
            return result
        finally:
            with self._lock:
                self._busy -= 1

    def finish_request(self, conn: Any, fs: Any) -> None:
        super().finish_request(conn, fs)
        idle_since = getattr(conn, "idle_since", None)
        if idle_since is not None and conn in self.keepalived_conns:
            conn.timeout = min(conn.timeout, idle_since + self.cfg.keepalive)  # idle counts from the last answer
            conn.idle_since = None

    def _others_wait(self) -> bool:
        """Whether a connection waits for a thread and every thread is taken (this one included)."""
        with self._lock:
            return self._queued > 0 and self._busy >= self.cfg.threads

    def _next_request(self, conn: Any) -> bool:
        """Wait on this thread for the next request of `conn`; False: give the connection back to the selector."""
        if conn.parser.unreader.buf.getvalue():  # read ahead already: the next request has begun
            return True
        poller = getattr(conn, "poller", None)
        if poller is None:  # the connection's first wait: set it up
            conn.parser.unreader.mxchunk = max(conn.parser.unreader.mxchunk, READ_CHUNK)
            poller = conn.poller = select.poll()
            poller.register(conn.sock.fileno(), _READABLE)
            poller.register(self._release, select.POLLIN)
        conn.idle_since = time.monotonic()
        deadline = conn.idle_since + min(PIN_IDLE_SECONDS, self.cfg.keepalive)
        with self._lock:
            self._waiting += 1
        try:
            while (left := deadline - time.monotonic()) > 0:
                ready = {fd for fd, _ in poller.poll(left * 1000)}
                if conn.sock.fileno() in ready:
                    conn.idle_since = None
                    return True
                if self._release in ready and self._take_release():
                    return False
            return False
        finally:
            with self._lock:
                self._waiting -= 1

    def _ask_release(self, units: int) -> None:
        try:
            os.eventfd_write(self._release, units)
        except OSError:  # not open yet, or closed at exit
            pass

    def _take_release(self) -> bool:
        try:
            os.eventfd_read(self._release)
            return True
        except BlockingIOError:  # another waiting thread took it
            return False
