"""The event queue's contract, run against both backends: SQLite (default) and SQS (moto's server)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.events import Event, EventQueue, open_queue
from appliance.events.local import SqliteQueue

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["sqlite", "sqs"])
def make_queue(request, tmp_path, monkeypatch):
    """A factory of queues on one backend; every queue a test opens shares one location."""
    if request.param == "sqs":
        endpoint = request.getfixturevalue("moto_endpoint")
        for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        url = f"sqs://q{uuid.uuid4().hex[:12]}?endpoint_url={endpoint}"
    else:
        url = f"sqlite://{tmp_path / 'queue.sqlite'}"
    opened: list[EventQueue] = []

    def make(visibility: float = 30.0, max_receives: int = 5) -> EventQueue:
        queue = open_queue(url, str(tmp_path), visibility, max_receives)
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def event(table: str = "t", version: int = 1) -> Event:
    return Event(table=table, kind="appended", table_version=version)


def test_publish_receive_ack(make_queue) -> None:
    q = make_queue()
    sent = event("t", 7)
    q.publish(sent)
    [got] = q.receive(wait=2)
    assert got.event == sent and got.receives == 1
    assert q.stats().in_flight == 1
    assert q.ack(got)
    assert q.receive(wait=0) == []
    assert q.stats().pending == 0


def test_receive_waits_for_a_message_then_gives_up(make_queue) -> None:
    q = make_queue()
    started = time.monotonic()
    assert q.receive(wait=1.0) == []
    assert time.monotonic() - started >= 0.9


def test_unacknowledged_message_is_redelivered_after_the_visibility_timeout(make_queue) -> None:
    q = make_queue(visibility=1)
    q.publish(event())
    first = q.receive(wait=2)[0]
    assert q.receive(wait=0) == []  # hidden while in flight
    again = q.receive(wait=4)
    assert len(again) == 1 and again[0].event == first.event and again[0].receives == 2
    assert q.ack(again[0])
    assert q.stats().pending == 0


def test_extend_keeps_a_message_hidden(make_queue) -> None:
    q = make_queue(visibility=1)
    q.publish(event())
    got = q.receive(wait=2)[0]
    assert q.extend(got, 4)
    time.sleep(1.5)
    assert q.receive(wait=0) == []
    assert q.ack(got)


def test_one_message_of_a_table_in_flight_at_a_time(make_queue) -> None:
    q = make_queue()
    a1, a2, b1 = event("a", 1), event("a", 2), event("b", 1)
    for e in (a1, a2, b1):
        q.publish(e)
    first = q.receive(wait=2)[0]
    second = q.receive(wait=2)[0]
    assert {first.event.id, second.event.id} == {a1.id, b1.id}
    assert q.receive(wait=0.5) == []  # a2 waits while a1 is in flight
    holder_of_a = first if first.event.table == "a" else second
    assert q.ack(holder_of_a)
    third = q.receive(wait=2)
    assert [d.event.id for d in third] == [a2.id]


def test_release_makes_a_message_visible_again(make_queue) -> None:
    q = make_queue()
    q.publish(event())
    got = q.receive(wait=2)[0]
    assert q.release(got)
    again = q.receive(wait=2)
    assert len(again) == 1 and again[0].receives == 2


def test_dead_letter_after_max_receives(make_queue) -> None:
    q = make_queue(max_receives=2)
    poison, good = event("p"), event("p", 2)
    q.publish(poison)
    q.publish(good)
    for attempt in (1, 2):
        got = q.receive(wait=2)[0]
        assert got.event.id == poison.id and got.receives == attempt
        assert q.release(got)
    nxt = q.receive(wait=2)  # the poison is dead-lettered; its table's next event flows again
    assert [d.event.id for d in nxt] == [good.id]
    assert q.ack(nxt[0])
    assert q.stats().dead == 1
    assert [e.id for e in q.dead_letters()] == [poison.id]


def test_two_handles_share_one_queue(make_queue) -> None:
    producer, consumer = make_queue(), make_queue()
    sent = event("shared")
    producer.publish(sent)
    [got] = consumer.receive(wait=2)
    assert got.event == sent
    assert producer.receive(wait=0) == []
    assert consumer.ack(got)


def test_events_are_small_json_without_rows() -> None:
    e = Event(table="t", kind="index_requested", table_version=3, action="rebuild", params={"codec": "pq"})
    assert Event.from_json(e.to_json()) == e
    with pytest.raises(ValueError):
        Event(table="t", kind="exploded", table_version=1)
    with pytest.raises(ValueError):
        Event(table="t", kind="appended", table_version=1, params={"rows": [0.0] * 10_000}).to_json()


# --- the local backend across real processes ---------------------------------------------------------

_PUBLISH_THEN_DIE = """
import os, signal, sys
from appliance.events import Event
from appliance.events.local import SqliteQueue
q = SqliteQueue(sys.argv[1])
q.publish(Event(table="t", kind="appended", table_version=1, id="survivor"))
os.kill(os.getpid(), signal.SIGKILL)
"""

_RECEIVE_THEN_DIE = """
import os, signal, sys
from appliance.events.local import SqliteQueue
q = SqliteQueue(sys.argv[1], visibility_timeout=1)
assert q.receive(wait=5)
os.kill(os.getpid(), signal.SIGKILL)
"""

_CONSUME = """
import os, sys, time
from appliance.events.local import SqliteQueue
q = SqliteQueue(sys.argv[1], visibility_timeout=60)
out = open(sys.argv[2], "w")
open(sys.argv[2] + ".ready", "w").close()
while not os.path.exists(sys.argv[3]):  # start together, so the consumers really compete
    time.sleep(0.01)
idle = time.monotonic()
while time.monotonic() - idle < 1.5:
    for d in q.receive(max_messages=3, wait=0.2):
        out.write(d.event.id + "\\n"); out.flush()
        time.sleep(0.002)
        assert q.ack(d)
        idle = time.monotonic()
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, timeout=60)


def test_local_publish_survives_the_publisher_being_killed(tmp_path) -> None:
    path = str(tmp_path / "q.sqlite")
    assert _python(_PUBLISH_THEN_DIE, path).returncode == -signal.SIGKILL
    [got] = SqliteQueue(path).receive(wait=1)
    assert got.event.id == "survivor"


def test_local_message_of_a_killed_consumer_is_redelivered(tmp_path) -> None:
    path = str(tmp_path / "q.sqlite")
    q = SqliteQueue(path, visibility_timeout=1)
    q.publish(event())
    assert _python(_RECEIVE_THEN_DIE, path).returncode == -signal.SIGKILL
    got = q.receive(wait=3)
    assert len(got) == 1 and got[0].receives == 2


def test_local_concurrent_consumers_handle_each_event_exactly_once(tmp_path) -> None:
    path = str(tmp_path / "q.sqlite")
    q = SqliteQueue(path)
    sent = {q.publish(event(f"t{i % 40}", i)) for i in range(300)}
    outs = [tmp_path / f"out{i}.txt" for i in range(3)]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _CONSUME, path, str(o), str(go)], cwd=REPO) for o in outs]
    deadline = time.monotonic() + 60
    while not all(Path(f"{o}.ready").exists() for o in outs) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    handled = [line for o in outs for line in o.read_text().split()]
    assert sorted(handled) == sorted(sent)  # none lost, none twice
    assert sum(1 for o in outs if o.read_text()) >= 2  # the work was actually shared
    assert q.stats().pending == 0
