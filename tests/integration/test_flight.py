"""The search hop over Arrow Flight (appliance/executor/runner.py, appliance/query/dispatch.py): the
token guards every call, an error answers the batch and leaves its stream usable, a deadline or a cancel
stops a batch, a drain refuses new batches and waits for running ones, streams to an executor that was
killed and restarted are replaced without blaming it, and an executor without Flight is served over HTTP."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import requests
from conftest import Api, free_port_block
from proc_support import cpu_seconds, tree

from appliance.config import Settings
from appliance.fleet import Fleet, Node
from appliance.launch import GRACEFUL_TIMEOUT
from appliance.planner.plan import FRAGMENT, QUERY_SCHEMA, Task, fragment_key, queries_batch
from appliance.query.dispatch import FlightStreams, StreamBroken
from appliance.routing.connections import InFlight
from appliance.storage.schema import vector_type

DIM = 64
FRAGMENTS = 12
ROWS = 4000


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    """Two executors; a table whose exact scan of 1,000 query vectors takes a while; health probes every
    3 s, so a member the dispatcher marks down stays down until the test looks."""
    root = tmp_path_factory.mktemp("flight")
    port = free_port_block(3)
    fleet = Fleet(Settings.load(env={}).replace(data=str(root / "data"), port=port, executors=2,
                                                executor_base_port=port + 1, health_interval=3.0,
                                                log_level="warning"), log_dir=root / "logs")
    fleet.start()
    api = Api(fleet.url, fleet.api_key)
    api.create("big", DIM, "l2", {"n": "int64"})
    rng = np.random.default_rng(4)
    for f in range(FRAGMENTS):
        vectors = rng.normal(size=(ROWS, DIM)).astype(np.float32)
        api.insert_arrow("big", pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(vector_type(DIM)),
            "n": pa.array(np.arange(f * ROWS, (f + 1) * ROWS), pa.int64())}))
    yield fleet
    fleet.stop()


def ring(fleet: Fleet) -> dict:
    return requests.get(f"{fleet.url}/admin/ring", headers={"x-api-key": fleet.api_key}, timeout=30).json()


def location(fleet: Fleet, node: Node) -> str:
    member = next(m for m in ring(fleet)["members"] if m["url"] == node.url)
    assert member["flight"], member
    return member["flight"]


def tasks_header(fleet: Fleet, k: int = 5, **extra: object) -> dict:
    version = Api(fleet.url, fleet.api_key).get("/api/v1/tables/big").json()["version"]
    tasks = [Task(FRAGMENT, fragment_key("big", f), "big", version, fragment_id=f).to_json() for f in range(FRAGMENTS)]
    return {"tasks": tasks, "k": k, "metric": "l2", "filter": None, **extra}


def executor_tasks(node: Node) -> float:
    text = requests.get(f"{node.url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("appliance_executor_tasks_total{"))


def test_a_wrong_token_is_refused(fleet: Fleet) -> None:
    where = location(fleet, fleet.executors[0])
    one = queries_batch(np.ones((1, DIM), np.float32))
    for headers in ([(b"x-appliance-token", b"not-the-token")], []):
        client = flight.FlightClient(where)
        with pytest.raises(flight.FlightUnauthenticatedError):
            writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(b"search"),
                                                options=flight.FlightCallOptions(headers=headers))
            writer.begin(QUERY_SCHEMA)
            writer.write_with_metadata(one, b"{}")
            reader.read_chunk()
        client.close()
    # through the pool, a refused token is a broken transport: the dispatcher marks that executor down
    streams = FlightStreams("not-the-token")
    with pytest.raises(StreamBroken, match="Unauthenticated"):
        streams.exchange(where, tasks_header(fleet), one, InFlight())
    streams.close()


def test_errors_answer_the_batch_and_leave_the_stream_usable(fleet: Fleet) -> None:
    streams = FlightStreams(fleet.settings.internal_token, max_idle=1)
    where = location(fleet, fleet.executors[0])
    one = queries_batch(np.ones((1, DIM), np.float32))
    try:
        doc, answer, _ = streams.exchange(where, tasks_header(fleet), one, InFlight())
        assert "status" not in doc and doc["tasks"] == FRAGMENTS and answer.num_rows == 5, doc
        pooled = streams._executors[where].idle[0]
        # a bound exceeded, a malformed header, a query matrix of another dimension: 4xx, on the same stream
        for header, batch, code in ((tasks_header(fleet, k=10**12), one, "limit_exceeded"),
                                    ({"tasks": "nope"}, one, "invalid_input"),
                                    (tasks_header(fleet), queries_batch(np.ones((1, 3), np.float32)),
                                     "invalid_input"),
                                    (tasks_header(fleet, timeout_ms="soon"), one, "invalid_input")):
            doc, answer, _ = streams.exchange(where, header, batch, InFlight())
            assert doc["status"] == 400 and doc["code"] == code and answer.num_rows == 0, doc
            assert streams._executors[where].idle == [pooled]  # the very same stream, still open
        doc, answer, _ = streams.exchange(where, tasks_header(fleet), one, InFlight())
        assert "status" not in doc and answer.num_rows == 5
        assert streams._executors[where].idle == [pooled]
    finally:
        streams.close()
    assert len(ring(fleet)["live"]) == 2


def test_a_deadline_and_a_cancel_stop_the_batch_on_the_executor(fleet: Fleet) -> None:
    victim = fleet.executors[1]
    streams = FlightStreams(fleet.settings.internal_token)
    where = location(fleet, victim)
    rng = np.random.default_rng(1)
    try:
        streams.exchange(where, tasks_header(fleet, k=10), queries_batch(rng.normal(size=(1, DIM)).astype(np.float32)),
                         InFlight())  # warm: every fragment cached
        pids = tree(victim.process.pid)
        nq = 4000
        while True:  # a batch long enough to see it stop, whatever this machine's speed and load
            many = queries_batch(rng.normal(size=(nq, DIM)).astype(np.float32))
            began, cpu_began = time.monotonic(), sum(cpu_seconds(p) for p in pids)
            streams.exchange(where, tasks_header(fleet, k=10), many, InFlight())
            full = time.monotonic() - began
            if full > 1.5 or nq >= 64_000:
                break
            nq *= 2
        rate = (sum(cpu_seconds(p) for p in pids) - cpu_began) / full  # CPU s per s while it works
        assert full > 1.5, f"a full batch of {nq} queries takes {full:.2f} s: too short to see it stop"

        doc, _, _ = streams.exchange(where, tasks_header(fleet, k=10, timeout_ms=50), many, InFlight())
        assert doc["status"] == 504 and doc["code"] == "deadline_exceeded", doc

        call = InFlight()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                streams.exchange(where, tasks_header(fleet, k=10), many, call)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                failed.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.2)
        aborted = time.monotonic()
        call.abort()  # as the dispatcher abandons a batch: the reading thread is let go at once
        thread.join(10)
        assert not thread.is_alive() and isinstance(failed[0], StreamBroken), failed
        assert time.monotonic() - aborted < 0.5
        time.sleep(0.2)  # the executor stops between two tasks
        before, window = sum(cpu_seconds(p) for p in pids), min(2.0, full - 0.5)
        time.sleep(window)
        spent = sum(cpu_seconds(p) for p in pids) - before
        # on a busy machine the executor gets only part of a core: compare with what it gets while working
        assert spent < 0.3 * rate * window, (f"the executor kept working: {spent:.2f} CPU s in {window:.1f} s "
                                             f"(working, it spends {rate:.2f} CPU s per s)")
        doc, answer, _ = streams.exchange(where, tasks_header(fleet), queries_batch(np.ones((1, DIM), np.float32)),
                                       InFlight())
        assert "status" not in doc and answer.num_rows == 5  # and the pool still serves
    finally:
        streams.close()


def test_drain_refuses_new_batches_and_waits_for_running_ones(fleet: Fleet) -> None:
    node = fleet.executors[0]
    token = {"x-appliance-token": fleet.settings.internal_token}
    streams = FlightStreams(fleet.settings.internal_token)
    where = location(fleet, node)
    many = queries_batch(np.random.default_rng(2).normal(size=(1000, DIM)).astype(np.float32))
    one = queries_batch(np.ones((1, DIM), np.float32))
    answered: list[float] = []
    try:
        streams.exchange(where, tasks_header(fleet, k=10), many, InFlight())  # warm

        def run() -> None:
            doc, _, _ = streams.exchange(where, tasks_header(fleet, k=10), many, InFlight())
            assert "status" not in doc, doc
            answered.append(time.monotonic())

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.1)
        resp = requests.post(f"{node.url}/admin/drain?wait=30", headers=token, timeout=60)
        drained = time.monotonic()
        thread.join(30)
        assert resp.status_code == 200 and resp.json()["idle"], resp.text
        # the executor counts a batch until its answer is out: the drain returns after it, give or take
        # the time its own answer takes to arrive (a batch is far longer)
        assert answered and answered[0] <= drained + 0.05, ("the drain did not wait for the Flight batch",
                                                            answered[0] - drained)
        doc, _, _ = streams.exchange(where, tasks_header(fleet), one, InFlight())
        assert doc["status"] == 503 and doc["code"] == "draining", doc
    finally:
        requests.post(f"{node.url}/admin/undrain", headers=token, timeout=30)
        streams.close()
    doc, _, _ = FlightStreams(fleet.settings.internal_token).exchange(where, tasks_header(fleet), one, InFlight())
    assert "status" not in doc


def searches_succeed(fleet: Fleet, count: int) -> None:
    api = Api(fleet.url, fleet.api_key)
    rng = np.random.default_rng(9)
    for _ in range(count):
        resp = api.post("/api/v1/tables/big/search", {"vector": rng.normal(size=DIM).tolist(), "k": 5})
        assert resp.status_code == 200, resp.text


def wait_live(fleet: Fleet, node: Node, flight_expected: bool) -> None:
    """Until the restarted executor answers, and the query node has probed it since."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{node.url}/readyz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    ready = time.time()
    while time.monotonic() < deadline:
        member = next(m for m in ring(fleet)["members"] if m["url"] == node.url)
        if member["healthy"] and member["last_seen"] > ready and bool(member["flight"]) == flight_expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{node.name} not back: {ring(fleet)}")


def restart(fleet: Fleet, node: Node, **settings: object) -> None:
    """kill -9 the whole executor (master and worker), then start it again on the same ports."""
    os.killpg(node.process.pid, signal.SIGKILL)
    node.process.wait()
    original = fleet.settings
    fleet.settings = original.replace(**settings)
    try:
        fleet._spawn(node)
    finally:
        fleet.settings = original


def wait_all_live(fleet: Fleet) -> None:
    """Until the query node routes to every executor again (a test before may have drained one)."""
    deadline = time.monotonic() + 30
    while len(ring(fleet)["live"]) < len(fleet.executors):
        assert time.monotonic() < deadline, ring(fleet)
        time.sleep(0.2)


def working_executor(fleet: Fleet) -> Node:
    """The executor that runs the table's tasks (a small table may live whole on one)."""
    wait_all_live(fleet)
    before = {node.name: executor_tasks(node) for node in fleet.executors}
    searches_succeed(fleet, 3)
    return max(fleet.executors, key=lambda node: executor_tasks(node) - before[node.name])


def test_stale_streams_to_a_restarted_executor_are_replaced_without_blaming_it(fleet: Fleet) -> None:
    searches_succeed(fleet, 10)  # the query node holds open streams to the executors
    victim = working_executor(fleet)
    restart(fleet, victim)
    wait_live(fleet, victim, flight_expected=True)
    searches_succeed(fleet, 10)
    member = next(m for m in ring(fleet)["members"] if m["url"] == victim.url)
    # its stale streams failed once each and were replaced: the executor was not marked down for it
    assert member["healthy"] and not member["last_error"], member
    assert executor_tasks(victim) > 0  # and it ran its tasks again (its counters restarted at 0)


def test_a_stopped_executor_hears_sigterm_though_query_nodes_hold_streams_open(fleet: Fleet) -> None:
    """gunicorn stops a worker with SIGTERM and SIGKILLs it after --graceful-timeout. pyarrow's
    `FlightServerBase.serve()` takes SIGTERM over while it blocks and hands it back only once gRPC has shut
    down, which waits for every open stream: with the query node's streams open, the worker would never
    hear it, and would be killed mid-batch instead of draining and exiting."""
    searches_succeed(fleet, 5)  # the query node holds open streams to the executors
    victim = working_executor(fleet)
    began = time.monotonic()
    os.kill(victim.process.pid, signal.SIGTERM)  # to the master, as a service manager stops it
    victim.process.wait(timeout=120)
    took = time.monotonic() - began
    # the master waits GRACEFUL_TIMEOUT before it SIGKILLs a worker that did not leave; one that heard its
    # SIGTERM refuses new batches, finishes its running ones (none here) and exits within a second or two
    assert took < GRACEFUL_TIMEOUT, f"the executor took {took:.1f} s to stop: its worker was killed"
    victim.log.close()
    fleet._spawn(victim)  # on the same ports
    wait_live(fleet, victim, flight_expected=True)
    searches_succeed(fleet, 3)


def test_an_executor_without_flight_is_served_over_http(fleet: Fleet) -> None:
    """A rolling upgrade meets executors of an older version, which have no Flight server."""
    older = working_executor(fleet)
    restart(fleet, older, flight_port_offset=0)
    wait_live(fleet, older, flight_expected=False)
    assert "flight_port" not in requests.get(f"{older.url}/readyz", timeout=30).json()
    searches_succeed(fleet, 10)
    assert executor_tasks(older) > 0  # it ran its tasks, over HTTP (it has no Flight server)
    member = next(m for m in ring(fleet)["members"] if m["url"] == older.url)
    assert member["healthy"] and not member["last_error"], member
    restart(fleet, older)
    wait_live(fleet, older, flight_expected=True)
    searches_succeed(fleet, 3)
    assert executor_tasks(older) > 0  # and over Flight once it has it again


def test_a_hung_executor_is_hedged_over_flight(fleet: Fleet) -> None:
    """SIGSTOPped, the executor holding a search's tasks accepts the stream's bytes and answers nothing: the
    search waits until the probe (every 3 s here, 1 s timeout) calls it down, then its batch is cancelled
    and re-sent to the other executor."""
    victim = working_executor(fleet)
    api = Api(fleet.url, fleet.api_key)
    os.killpg(victim.process.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        resp = api.post("/api/v1/tables/big/search", {"vector": np.ones(DIM).tolist(), "k": 5})
        took = time.monotonic() - began
        assert resp.status_code == 200 and len(resp.json()["results"]) == 5, resp.text
        assert took < 10.0, took  # about one health interval plus the probe's timeout, not request_timeout
        assert victim.url not in ring(fleet)["live"]
    finally:
        os.killpg(victim.process.pid, signal.SIGCONT)
    wait_live(fleet, victim, flight_expected=True)
    searches_succeed(fleet, 3)


def test_settings_that_would_collide_are_refused(tmp_path: Path) -> None:
    from appliance.fleet import FleetError

    port = free_port_block(3)
    fleet = Fleet(Settings.load(env={}).replace(data=str(tmp_path / "data"), port=port, executors=2,
                                                executor_base_port=port + 1, flight_port_offset=1))
    with pytest.raises(FleetError, match="collide"):
        fleet.start()
