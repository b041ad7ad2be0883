"""Idle keep-alive connections: a query node keeps them open longer than clients poll, so a client that
reuses one never races the node closing it.

gunicorn's default keep-alive is 2 s: a lancedb client waiting on an index with `list_indices` or
`index_stats` every 2 s reused a connection just as gunicorn closed it, about 1 request in 30, and got
"connection closed before message completed". Eight clients, started at staggered offsets a quarter of a
second apart, poll here for 20 s at 2 s intervals (some 70 reuses of an idle connection), so reuse lands
on every phase of gunicorn's once-a-second sweep of expired connections; with `--keep-alive 2` this fails
(4 and 7 of 80 polls failed; over 30 s, 7 and 15 of 120). Eight clients, one per request thread of the
query node: with more connections than threads, idle ones go back to gunicorn's selector sooner, and 16
clients over 16 s saw no failure with `--keep-alive 2`."""

from __future__ import annotations

import threading
import time

import lancedb
import pytest

CLIENTS = 8
INTERVAL = 2.0
SECONDS = 20.0


@pytest.mark.slow
def test_clients_polling_every_two_seconds_never_find_a_closed_connection(fleet, api) -> None:
    api.create("polled", 2, "l2", {"n": "int64"})
    api.insert("polled", [{"vector": [1.0, 0.0], "n": 1}])
    errors: list[str] = []
    polls = [0] * CLIENTS

    def poll(client: int) -> None:
        table = lancedb.connect("db://appliance", api_key=fleet.api_key, host_override=fleet.url).open_table("polled")
        time.sleep(client * INTERVAL / CLIENTS)  # each client reuses its connection at another phase
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            try:
                assert table.count_rows() == 1
                table.list_indices()
                polls[client] += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts, whatever the client raised
                errors.append(f"client {client}: {type(exc).__name__}: {str(exc)[:300]}")
            time.sleep(INTERVAL)

    threads = [threading.Thread(target=poll, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 120)
    assert errors == [], f"{len(errors)} of {sum(polls) + len(errors)} polls failed, e.g. {errors[:3]}"
    # each client sleeps INTERVAL after each answer, so a slow (busy) machine fits fewer polls in the time;
    # half of them still puts forty idle gaps of INTERVAL on reused connections
    assert sum(polls) >= CLIENTS * SECONDS / INTERVAL * 0.5
