"""The query node's plumbing: cross-request batching (service.Coalescer) and keep-alive executor connections."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from appliance.errors import TableNotFound
from appliance.query.service import Coalescer
from appliance.routing.connections import ConnectionPool


class Recorder:
    """A batch runner that doubles each item, records every batch, and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[tuple[Hashable, list[int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on: int | None = None

    def __call__(self, key: Hashable, items: list[int]) -> list[int]:
        self.batches.append((key, list(items)))
        self.entered.set()
        self.gate.wait(10)
        if self.fail_on in items:
            raise TableNotFound(f"t{self.fail_on}")  # an error whose constructor is not (message,)
        return [2 * i for i in items]


def wait_queued(coalescer: Coalescer, key: Hashable, n: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kind = coalescer._kinds.get(key)
        if kind is not None and len(kind.queue) == n:
            return
        time.sleep(0.001)
    raise AssertionError(f"{n} items never queued")


def held_batch(run: Recorder, coalescer: Coalescer, pool: ThreadPoolExecutor, queued: list[int],
               meanwhile: Callable[[], list[Future]] = list) -> list[Future]:
    """Submit item 0 of key "k" and hold its batch running while `queued` items of "k" queue behind it (and
    whatever `meanwhile` submits), then let it finish. The futures, item 0's first, then `meanwhile`'s."""
    run.gate.clear()
    first = pool.submit(coalescer.submit, "k", 0)
    assert run.entered.wait(5)
    rest = [pool.submit(coalescer.submit, "k", i) for i in queued]
    others = meanwhile()
    wait_queued(coalescer, "k", len(queued))
    run.gate.set()
    return [first, *rest, *others]


def test_a_lone_item_runs_at_once_in_its_own_batch() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run, max_rows=64)
    assert coalescer.submit("k", 3) == 6
    assert run.batches == [("k", [3])]
    assert (coalescer.batches, coalescer.items) == (1, 1)


def test_items_arriving_while_a_batch_runs_share_the_next_batch() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run, max_rows=64)
    with ThreadPoolExecutor(8) as pool:
        futures = held_batch(run, coalescer, pool, [1, 2, 3, 4, 5])
        assert [f.result(5) for f in futures] == [0, 2, 4, 6, 8, 10]
    assert [items for _, items in run.batches] == [[0], [1, 2, 3, 4, 5]]


def test_different_keys_never_share_a_batch() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run, max_rows=64)
    with ThreadPoolExecutor(8) as pool:
        # "b" has nothing running, so its items go at once, beside the held batch of "k"
        futures = held_batch(run, coalescer, pool, [1, 2],
                             lambda: [pool.submit(coalescer.submit, "b", i) for i in (3, 4)])
        assert [f.result(5) for f in futures] == [0, 2, 4, 6, 8]
    for key, items in run.batches:
        assert all((i < 3) == (key == "k") for i in items)


def test_max_rows_splits_the_queue_into_several_batches() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run, max_rows=3)
    with ThreadPoolExecutor(10) as pool:
        futures = held_batch(run, coalescer, pool, list(range(1, 8)))
        assert [f.result(5) for f in futures] == [2 * i for i in range(8)]
    sizes = [len(items) for _, items in run.batches]
    assert sizes[0] == 1 and all(s <= 3 for s in sizes) and sum(sizes) == 8


def test_an_error_reaches_every_member_of_the_batch_and_later_batches_still_run() -> None:
    run = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(run, max_rows=64)
    run.fail_on = 2
    with ThreadPoolExecutor(8) as pool:
        first, *rest = held_batch(run, coalescer, pool, [1, 2, 3])
        assert first.result(5) == 0
        for future in rest:
            with pytest.raises(TableNotFound, match="^Table 't2' was not found$"):
                future.result(5)
    run.fail_on = None
    assert coalescer.submit("k", 4) == 8
    assert not coalescer._kinds  # nothing left behind once idle


def test_max_inflight_lets_that_many_batches_run_at_once() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def slow(_key: Hashable, items: list[int]) -> list[int]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return items

    coalescer: Coalescer[int, int] = Coalescer(slow, max_rows=64, max_inflight=2)
    with ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(lambda i: coalescer.submit("k", i), range(6))) == list(range(6))
    assert peak == 2


# --- ConnectionPool --------------------------------------------------------------------------------------


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request with its method, path and body; HTTP/1.1, so connections are kept alive."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._answer(self.rfile.read(int(self.headers.get("content-length", 0))))

    def _answer(self, body: bytes) -> None:
        data = f"{self.command} {self.path} ".encode() + body
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        # "/bye" drops the connection after answering without saying so (no "connection: close"), as a
        # server does to a keep-alive connection that stayed idle past its timeout
        self.close_connection = self.path == "/bye"

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[tuple[str, http.server.ThreadingHTTPServer]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_pool_reuses_one_connection_for_sequential_requests(echo: tuple[str, object]) -> None:
    url, _ = echo
    pool = ConnectionPool(timeout=5)
    assert pool.request("POST", url, "/a", b"xyz") == (200, b"POST /a xyz")
    first = pool._idle[url][0]
    assert pool.request("GET", url, "/b") == (200, b"GET /b ")
    assert pool._idle[url] == [first]
    pool.close()


def test_pool_retries_once_when_the_server_closed_an_idle_connection(echo: tuple[str, object]) -> None:
    url, _ = echo
    pool = ConnectionPool(timeout=5)
    assert pool.request("GET", url, "/bye")[0] == 200
    stale = pool._idle[url][0]
    time.sleep(0.1)  # the server has closed its end by now
    assert pool.request("POST", url, "/again", b"1") == (200, b"POST /again 1")
    assert pool._idle[url] and pool._idle[url][0] is not stale


def test_pool_raises_oserror_when_nothing_listens() -> None:
    pool = ConnectionPool(timeout=2)
    with pytest.raises(OSError):
        pool.request("GET", "http://127.0.0.1:9", "/healthz")
    with pytest.raises(ValueError, match="http:// or https://"):
        pool.request("GET", "ftp://127.0.0.1:21", "/")


