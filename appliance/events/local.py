"""The default event queue: one SQLite file in WAL mode on local disk.

Why SQLite: every process of a one-machine fleet (query nodes publishing, indexers receiving, the
supervisor counting) can share it without a broker process, and its transactions give exactly the two
guarantees the queue needs. A publish is a committed, fsynced row, so it survives the crash of any process
(or of the machine: `synchronous=FULL`). A receive runs in a `BEGIN IMMEDIATE` transaction, which
serialises receivers across processes, so one message is never handed to two consumers at once.
Visibility is a timestamp on the row: a consumer that dies simply lets it pass, and the message is
delivered again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.events.event import Event
from appliance.events.queue import Delivery, EventQueue, QueueStats

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    grp TEXT NOT NULL,
    body TEXT NOT NULL,
    published REAL NOT NULL,
    visible_at REAL NOT NULL,
    receipt TEXT,
    receives INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_group ON messages (grp, seq);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    grp TEXT NOT NULL,
    body TEXT NOT NULL,
    published REAL NOT NULL,
    receives INTEGER NOT NULL,
    dead_at REAL NOT NULL
);
"""

# The head (oldest message) of every group; only a head may be delivered, which keeps a group in order and
# keeps a second message of a group from going out while the first is in flight.
_HEADS = """
SELECT m.seq, m.id, m.body, m.receives FROM messages AS m
WHERE m.seq IN (SELECT MIN(seq) FROM messages GROUP BY grp) AND m.visible_at <= ?
ORDER BY m.seq LIMIT ?
"""

_POLL_SECONDS = 0.1


class SqliteQueue(EventQueue):
    def __init__(self, path: str | Path, visibility_timeout: float = 60.0, max_receives: int = 5) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.visibility_timeout = float(visibility_timeout)
        self.max_receives = int(max_receives)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        with self._lock:
            self._connect().executescript(_SCHEMA)  # idempotent; executescript commits by itself

    def _connect(self) -> sqlite3.Connection:
        """One connection per process (a forked child must not reuse its parent's), guarded by a lock."""
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextmanager
    def _transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def publish(self, event: Event) -> str:
        body = event.to_json()
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO messages (id, grp, body, published, visible_at) VALUES (?, ?, ?, ?, ?)",
                       (event.id, event.table, body, now, now))
        return event.id

    def receive(self, max_messages: int = 1, wait: float = 0.0) -> list[Delivery]:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            got = self._receive_now(max_messages)
            if got or time.monotonic() >= deadline:
                return got
            time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _receive_now(self, max_messages: int) -> list[Delivery]:
        out: list[Delivery] = []
        with self._lock:  # a plain read first: idle pollers should not keep taking the write lock
            if self._connect().execute("SELECT 1 FROM messages WHERE visible_at <= ? LIMIT 1",
                                       (time.time(),)).fetchone() is None:
                return out
        with self._transaction() as db:
            while len(out) < max_messages:
                now = time.time()
                taken = {d.message_id for d in out}
                heads = [h for h in db.execute(_HEADS, (now, max_messages + len(taken))).fetchall()
                         if h[1] not in taken]
                if not heads:
                    break
                dead_lettered = False
                for seq, message_id, body, receives in heads:
                    if receives >= self.max_receives:
                        self._dead_letter(db, seq, now)
                        dead_lettered = True
                        continue
                    receipt = uuid.uuid4().hex
                    db.execute("UPDATE messages SET receipt = ?, receives = receives + 1, visible_at = ? "
                               "WHERE seq = ?", (receipt, now + self.visibility_timeout, seq))
                    out.append(Delivery(Event.from_json(body), receipt, receives + 1, message_id))
                    if len(out) >= max_messages:
                        break
                if not dead_lettered:
                    break  # every visible head was handed out; a dead letter may have uncovered a new head
        return out

    @staticmethod
    def _dead_letter(db: sqlite3.Connection, seq: int, now: float) -> None:
        db.execute("INSERT INTO dead_letters (seq, id, grp, body, published, receives, dead_at) "
                   "SELECT seq, id, grp, body, published, receives, ? FROM messages WHERE seq = ?", (now, seq))
        db.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    def ack(self, delivery: Delivery) -> bool:
        with self._transaction() as db:
            cur = db.execute("DELETE FROM messages WHERE id = ? AND receipt = ?",
                             (delivery.message_id, delivery.receipt))
            return cur.rowcount == 1

    def extend(self, delivery: Delivery, seconds: float) -> bool:
        with self._transaction() as db:
            cur = db.execute("UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
                             (time.time() + seconds, delivery.message_id, delivery.receipt))
            return cur.rowcount == 1

    def release(self, delivery: Delivery, delay: float = 0.0) -> bool:
        with self._transaction() as db:
            cur = db.execute("UPDATE messages SET visible_at = ?, receipt = NULL WHERE id = ? AND receipt = ?",
                             (time.time() + delay, delivery.message_id, delivery.receipt))
            return cur.rowcount == 1

    def stats(self) -> QueueStats:
        with self._transaction(immediate=False) as db:
            now = time.time()
            ready = db.execute("SELECT COUNT(*) FROM messages WHERE visible_at <= ?", (now,)).fetchone()[0]
            total = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            dead = db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return QueueStats(ready=ready, in_flight=total - ready, dead=dead)

    def dead_letters(self, limit: int = 100) -> list[Event]:
        with self._transaction(immediate=False) as db:
            rows = db.execute("SELECT body FROM dead_letters ORDER BY dead_at LIMIT ?", (limit,)).fetchall()
        return [Event.from_json(body) for (body,) in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
