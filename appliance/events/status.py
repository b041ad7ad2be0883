"""What an indexer reports about its work on a table, for `GET /api/v1/tables/T/index`.

Indexers keep no state of their own, so their report is a small JSON object per table in storage
(`_appliance/indexer/<table>.json`), rewritten when a job starts and ends and on every heartbeat. A
report that says "working" but has not been refreshed for a few heartbeats belongs to an indexer that
died; readers show it as `stalled`, and the queue hands the table's event to another indexer.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from appliance.storage.blobs import BlobStore
from appliance.storage.root import StorageRoot

PREFIX = "_appliance/indexer"
IDLE = "idle"


class IndexerStatus:
    def __init__(self, root: StorageRoot) -> None:
        self._blobs = BlobStore(root, prefix=PREFIX)

    def write(self, table: str, state: str, **fields: Any) -> dict[str, Any]:
        doc = {**(self.read(table) or {}), **fields, "table": table, "state": state, "updated_at": time.time(),
               "worker": f"{socket.gethostname()}:{os.getpid()}"}
        self._blobs.put(f"{table}.json", json.dumps(doc, default=str).encode())
        return doc

    def read(self, table: str) -> dict[str, Any] | None:
        raw = self._blobs.get(f"{table}.json")
        return json.loads(raw) if raw else None

    def describe(self, table: str, stale_after: float) -> dict[str, Any]:
        """The report as a reader should see it: `stalled` when a working indexer stopped reporting."""
        doc = self.read(table)
        if doc is None:
            return {"state": "never"}
        if doc.get("state") != IDLE and time.time() - float(doc.get("updated_at", 0)) > stale_after:
            doc = {**doc, "state": "stalled", "was": doc.get("state")}
        return doc

    def drop(self, table: str) -> None:
        self._blobs.delete(f"{table}.json")
