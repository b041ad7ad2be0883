"""Handles one event: reads the table's state, decides, and runs the builds and maintenance it needs.

Every step is safe to repeat or to die in the middle of. Builds publish a new index version only at their
very end (objects, manifest, then the CURRENT pointer), and only while this indexer still holds the
table's message (`Fence`), so an indexer that lost its lease (it stalled past the visibility timeout and
another took over) never publishes over the newer one's work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from appliance.errors import ApplianceError, TableNotFound
from appliance.events.event import Event
from appliance.index.builder import build_full, build_partial
from appliance.index.manifest import IndexManifest
from appliance.index.params import IndexParams
from appliance.index.store import IndexStore
from appliance.indexer.cleanup import cleanup_index_versions, cleanup_table_versions
from appliance.indexer.compaction import compact
from appliance.indexer.policy import Policy, decide
from appliance.indexer.table_state import read_state
from appliance.storage.root import StorageRoot
from appliance.storage.tables import TableStore

log = logging.getLogger("appliance.indexer")


class LeaseLost(ApplianceError):
    status = 409
    code = "lease_lost"


class FencedIndexStore(IndexStore):
    """An index store whose publication first checks that the caller still holds the table."""

    def __init__(self, root: StorageRoot, still_held: Callable[[], bool]) -> None:
        super().__init__(root)
        self._still_held = still_held

    def publish(self, manifest: IndexManifest) -> None:
        if not self._still_held():
            raise LeaseLost(f"lost table {manifest.table} to another indexer; not publishing v{manifest.index_version}")
        super().publish(manifest)


class TableWorker:
    def __init__(self, root: StorageRoot, policy: Policy, grace: float, threads: int = 1,
                 on_step: Callable[[str], None] | None = None) -> None:
        self.tables = TableStore(root)
        self.root = root
        self.policy = policy
        self.grace = grace
        self.threads = threads
        self._on_step = on_step or (lambda _step: None)

    def handle(self, event: Event, still_held: Callable[[], bool]) -> dict[str, Any]:
        """Bring `event.table` up to date; a report of what was done. Raises LeaseLost when another indexer
        took the table over, and whatever a step raised (the event is then delivered again)."""
        started = time.time()
        indexes = FencedIndexStore(self.root, still_held)
        try:
            snap = self.tables.snapshot(event.table)
        except TableNotFound:
            return {"skipped": "table does not exist"}
        base = indexes.current(event.table)
        work = decide(read_state(snap, base), event, self.policy)
        report: dict[str, Any] = {"work": work.summary, "table_version": snap.version}

        def progress(_rows: int) -> None:
            if not still_held():
                raise LeaseLost(f"lost table {event.table} to another indexer mid-build")

        if work.full:
            self._on_step("building-full")
            params, metric = self._full_params(event, base)
            report["index"] = build_full(self.tables, indexes, event.table, params, progress, metric).describe()
        elif work.partial:
            self._on_step("building-partial")
            manifest = build_partial(self.tables, indexes, event.table, progress)
            report["index"] = manifest.describe() if manifest else None
        if work.compact:
            self._on_step("compacting")
            report["compaction"] = compact(self.tables, event.table, self.threads)
        if work.cleanup:
            self._on_step("cleaning")
            report["cleanup"] = {
                "table_versions": cleanup_table_versions(self.tables, event.table, self.grace),
                "index": cleanup_index_versions(indexes, event.table, self.grace),
            }
        report["seconds"] = round(time.time() - started, 3)
        return report

    def _full_params(self, event: Event, base: IndexManifest | None) -> tuple[IndexParams, str | None]:
        """An explicit request's parameters; else the current index's codec and knobs, with the sizes
        (nlist, probes, sample) chosen anew for the table's size; else the indexer's default codec."""
        if event.params:
            return IndexParams.from_json(dict(event.params)), None
        if base is None:
            return IndexParams(codec=self.policy.codec), None
        p = base.params
        return IndexParams(codec=base.codec, pq_m=p.get("pq_m", 0), refine_factor=p.get("refine_factor", 0),
                           kmeans_iters=p.get("kmeans_iters", 20), seed=p.get("seed", 0),
                           batch_rows=p.get("batch_rows", 65_536)), base.metric
