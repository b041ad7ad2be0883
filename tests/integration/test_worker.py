"""appliance/worker.py: the nodes' gunicorn worker (gthread, each keep-alive connection served on one thread)
run for real: a gunicorn master with the worker class the launchers pass, serving a tiny WSGI app over TCP.

Its own behaviour: an idle kept-alive connection is still closed at the keep-alive timeout; more connections
than threads are all served, busy or idle (a thread does not keep its connection while another waits); a
graceful stop finishes the request in flight and answers a kept-alive connection's next request with
`Connection: close`; the worker's heartbeat goes on while a request runs longer than gunicorn's timeout."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import free_port_block

from appliance import gunicorn_hooks

WAIT = 60.0  # seconds any single answer may take on a busy machine

APP = textwrap.dedent("""
    import os, time

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(float(environ["QUERY_STRING"]))
        body = f"{os.getpid()}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
""")


@contextmanager
def serving(tmp_path: Path, threads: int, keep_alive: int = 75, timeout: int = 30
            ) -> Iterator[tuple[int, subprocess.Popen]]:
    (tmp_path / "tiny_app.py").write_text(APP)
    port = free_port_block(1)
    log = open(tmp_path / "gunicorn.log", "ab")  # noqa: SIM115 - closed below
    master = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--worker-class", gunicorn_hooks.WORKER_CLASS, "--threads", str(threads), "--keep-alive", str(keep_alive),
         "--timeout", str(timeout), "--graceful-timeout", "30", "--no-control-socket",
         "--pythonpath", str(tmp_path), "tiny_app:app"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                get(connect(port))
                break
            except OSError:
                assert master.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.2)
        yield port, master
    finally:
        if master.poll() is None:
            master.kill()
        master.wait()
        log.close()


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)


def get(conn: http.client.HTTPConnection, path: str = "/") -> http.client.HTTPResponse:
    """The answer to GET `path` on `conn`, its body read into `.body` (the serving worker's pid)."""
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    assert resp.status == 200
    return resp


def test_an_idle_kept_alive_connection_is_closed_at_the_keep_alive_timeout(tmp_path: Path) -> None:
    with serving(tmp_path, threads=2, keep_alive=1) as (port, _):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
        assert b"connection: close" not in answer.lower()  # kept alive...
        while chunk := sock.recv(4096):  # ...until the node closes it (a timeout here fails the test)
            answer += chunk
        sock.close()


def test_more_busy_connections_than_threads_are_all_served(tmp_path: Path) -> None:
    with serving(tmp_path, threads=2) as (port, _):
        stop = threading.Event()
        served = [0, 0]
        errors: list[str] = []

        def hammer(i: int) -> None:
            conn = connect(port)
            try:
                while not stop.is_set():
                    get(conn)
                    served[i] += 1
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        hammers = [threading.Thread(target=hammer, args=(i,)) for i in range(2)]
        for thread in hammers:
            thread.start()
        try:
            deadline = time.monotonic() + WAIT
            while min(served) < 20 and time.monotonic() < deadline:  # both threads taken, each by one connection
                time.sleep(0.05)
            assert min(served) >= 20, errors
            for _ in range(3):  # a third connection, again and again, while the two keep both threads busy
                get(connect(port))
        finally:
            stop.set()
            for thread in hammers:
                thread.join(WAIT)
        assert errors == []


def test_more_idle_connections_than_threads_are_all_served(tmp_path: Path) -> None:
    with serving(tmp_path, threads=2) as (port, _):
        idle = [connect(port) for _ in range(2)]
        for conn in idle:
            get(conn)  # each now waits on a thread for its next request
        for _ in range(3):
            get(connect(port))
        for conn in idle:
            get(conn)  # and they still work


def test_a_graceful_stop_finishes_the_request_in_flight_and_closes_kept_alive_connections(tmp_path: Path) -> None:
    with serving(tmp_path, threads=4) as (port, master):
        slow, kept = connect(port), connect(port)
        get(kept)
        answer: list[http.client.HTTPResponse] = []
        in_flight = threading.Thread(target=lambda: answer.append(get(slow, "/slow?3")))
        in_flight.start()
        time.sleep(1.0)  # the slow request has started
        master.send_signal(signal.SIGTERM)
        closing = None
        deadline = time.monotonic() + WAIT
        while closing is None and time.monotonic() < deadline:  # until the worker has the signal
            resp = get(kept)
            if (resp.getheader("connection") or "").lower() == "close":
                closing = resp
        assert closing is not None, "no answer said Connection: close"
        in_flight.join(WAIT)
        assert answer and answer[0].status == 200
        assert master.wait(WAIT) == 0


def test_the_heartbeat_goes_on_while_a_request_outlasts_the_timeout(tmp_path: Path) -> None:
    with serving(tmp_path, threads=2, timeout=2) as (port, _):
        conn = connect(port)
        worker = get(conn).body
        assert get(conn, "/slow?5").body == worker  # gunicorn kills a worker whose heartbeat stops for 2 s
        assert get(conn).body == worker
