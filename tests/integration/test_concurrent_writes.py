"""8 concurrent writers on one table, through a real fleet: inserts, updates and deletes, over the native
API, the LanceDB REST protocol and the official lancedb client. Group commit (appliance/query/commits.py)
must turn the contention into shared commits: no write fails with an error a client would not retry, no
acknowledged row is lost, and the table makes fewer versions than it was sent write requests."""

from __future__ import annotations

import threading
import time

import lancedb
import numpy as np
import pyarrow as pa
import requests

from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type

DIM = 4
ROWS = 20  # rows per insert
# Each writer writes for this long: some 1,300 write requests in 700 commits at load 1. 20 s made twice as many:
# no shared commit fails the test at any length; a race that loses a row gets half the chances to show.
SECONDS = 10.0
HTTP_WRITERS = 6
CLIENT_WRITERS = 2  # writers using the lancedb client
RETRYABLE = {(409, "write_conflict"), (503, "overloaded")}  # answers a client retries (with Retry-After)


def rows(writer: int, number: int) -> pa.Table:
    n = np.arange(number * ROWS, (number + 1) * ROWS) + writer * 1_000_000
    vectors = np.random.default_rng(int(n[0])).standard_normal((ROWS, DIM)).astype(np.float32)
    return pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM).cast(vector_type(DIM)),
        "writer": pa.array(np.full(ROWS, writer), pa.int64()),
        "n": pa.array(n, pa.int64()),
        "score": pa.array(np.zeros(ROWS), pa.float64()),
    })


def arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue().to_pybytes()


class Ledger:
    """What each writer was told: acknowledged inserts (their `n`), acknowledged deletes, and errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inserted: set[int] = set()
        self.deleted: set[int] = set()
        self.attempted: set[int] = set()
        self.requests = 0  # acknowledged write requests
        self.retried = 0  # retryable answers (409/503 with Retry-After), sent again
        self.errors: list[str] = []
        self.versions: list[tuple[int, int]] = []  # (version acknowledged, first n) of native inserts

    def ack(self, inserted: set[int] = frozenset(), deleted: set[int] = frozenset()) -> None:
        with self.lock:
            self.requests += 1
            self.inserted |= inserted
            self.deleted |= deleted


def http_writer(url: str, key: str, writer: int, ledger: Ledger, stop: threading.Event) -> None:
    """Native inserts and deletes, LanceDB-protocol updates; a retryable answer is sent again, as a client
    does after Retry-After, and anything else but 200 is an error."""
    http = requests.Session()
    http.headers["x-api-key"] = key
    number, acked = 0, []
    while not stop.is_set():
        if number % 5 == 3 and acked:  # delete the rows of one of its own acknowledged inserts
            victim = acked.pop(0)
            lo = writer * 1_000_000 + victim * ROWS
            send = lambda lo=lo: http.post(f"{url}/api/v1/tables/w/delete", timeout=120,  # noqa: E731
                                           json={"filter": f"n >= {lo} AND n < {lo + ROWS}"})
            done = {"deleted": set(range(lo, lo + ROWS))}
        elif number % 5 == 4:
            send = lambda: http.post(f"{url}/v1/table/w/update/", timeout=120, json={  # noqa: E731
                "predicate": f"writer = {writer}", "updates": [["score", "score + 1"]]})
            done = {}
        else:
            batch = rows(writer, number)
            with ledger.lock:
                ledger.attempted |= set(batch.column("n").to_pylist())
            body = arrow_stream(batch)
            send = lambda body=body: http.post(f"{url}/api/v1/tables/w/rows", data=body, timeout=120,  # noqa: E731
                                               headers={"content-type": "application/vnd.apache.arrow.stream"})
            done = {"inserted": set(batch.column("n").to_pylist())}
        for _attempt in range(20):
            resp = send()
            code = resp.json().get("code") if resp.headers.get("content-type", "").startswith(
                "application/json") and resp.status_code != 200 else None
            if (resp.status_code, code) in RETRYABLE and resp.headers.get("retry-after"):
                with ledger.lock:
                    ledger.retried += 1
                time.sleep(0.2)
                continue
            if resp.status_code == 200:
                ledger.ack(**done)
                if "inserted" in done:
                    acked.append(number)
                    with ledger.lock:
                        ledger.versions.append((resp.json()["version"], min(done["inserted"])))
            else:
                with ledger.lock:
                    ledger.errors.append(f"writer {writer}: {resp.status_code} {resp.text[:300]}")
            break
        number += 1


def client_writer(url: str, key: str, writer: int, ledger: Ledger, stop: threading.Event) -> None:
    """The official lancedb client (its own retries, as users run it): add, update and delete."""
    table = lancedb.connect("db://appliance", api_key=key, host_override=url).open_table("w")
    number, acked = 0, []
    while not stop.is_set():
        try:
            if number % 5 == 3 and acked:
                lo = writer * 1_000_000 + acked.pop(0) * ROWS
                table.delete(f"n >= {lo} AND n < {lo + ROWS}")
                ledger.ack(deleted=set(range(lo, lo + ROWS)))
            elif number % 5 == 4:
                table.update(where=f"writer = {writer}", values_sql={"score": "score + 1"})
                ledger.ack()
            else:
                batch = rows(writer, number)
                with ledger.lock:
                    ledger.attempted |= set(batch.column("n").to_pylist())
                table.add(batch)
                ledger.ack(inserted=set(batch.column("n").to_pylist()))
                acked.append(number)
        except Exception as exc:  # noqa: BLE001 - every failure the client raised after its retries
            with ledger.lock:
                ledger.errors.append(f"client writer {writer}: {type(exc).__name__}: {str(exc)[:300]}")
        number += 1


def test_eight_concurrent_writers_lose_nothing_and_share_commits(fleet, api) -> None:
    api.create("w", DIM, "l2", {"writer": "int64", "n": "int64", "score": "float64"})
    first = api.get("/api/v1/tables/w").json()["version"]
    ledger, stop = Ledger(), threading.Event()
    threads = [threading.Thread(target=http_writer, args=(fleet.url, fleet.api_key, w, ledger, stop))
               for w in range(HTTP_WRITERS)]
    threads += [threading.Thread(target=client_writer, args=(fleet.url, fleet.api_key, HTTP_WRITERS + w, ledger,
                                                              stop)) for w in range(CLIENT_WRITERS)]
    for thread in threads:
        thread.start()
    time.sleep(SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a writer hung"

    assert ledger.errors == [], f"{len(ledger.errors)} non-retryable errors, e.g. {ledger.errors[:3]}"
    assert ledger.requests >= 8 * 5, f"only {ledger.requests} writes were acknowledged"

    snapshot = TableStore(StorageRoot.parse(fleet.settings.data)).snapshot("w")
    found = snapshot.dataset.to_table(columns=["n"]).column("n").to_pylist()
    assert len(found) == len(set(found)), "a row was committed twice"
    missing = ledger.inserted - ledger.deleted - set(found)
    assert not missing, f"{len(missing)} acknowledged rows are missing"
    assert set(found) <= ledger.attempted - ledger.deleted, "rows that were deleted (or never sent) are present"

    for version, n in ledger.versions[::max(1, len(ledger.versions) // 10)]:  # each learned its rows' version
        at = snapshot.dataset.checkout_version(version).count_rows(f"n = {n}")
        before = snapshot.dataset.checkout_version(version - 1).count_rows(f"n = {n}")
        assert (at, before) == (1, 0), f"insert of n={n} acknowledged with version {version}"

    versions = snapshot.version - first
    assert versions < ledger.requests, f"{versions} versions for {ledger.requests} write requests: no commit shared"
