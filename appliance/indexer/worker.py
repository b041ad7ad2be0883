"""Handles one event: reads the table's state, decides, and runs the builds and maintenance it needs.

Every step is safe to repeat or to die in the middle of. Builds publish a new index version only at their
very end (objects, manifest, then the pointer), only while this indexer still holds the table's message
(`Fence`), so an indexer that lost its lease (it stalled past the visibility timeout and another took
over) never publishes over the newer one's work, and only from the pointer record the build began from
(`IndexStore.publish`), so a build that an overwrite, a drop or an explicit build overtook fails with
Conflict (the event is then handled again, from the new state).

An explicit build (`POST .../index`, the LanceDB client's create_index) claims the table while it runs;
the indexer then leaves the table's index alone (a build it is running stops at its next batch), and the
explicit build announces the table again when it is done. Rebuilds keep what the user chose: the codec,
parameters and metric of their last explicit build or request, recorded with the pointer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from appliance.errors import ApplianceError, TableNotFound
from appliance.events.event import Event
from appliance.index.builder import build_full, build_partial
from appliance.index.manifest import IndexManifest
from appliance.index.params import AUTO_CODEC, AUTO_CODECS, IndexParams, default_codec
from appliance.index.store import IndexStore, Pointer
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


class BuildYielded(ApplianceError):
    """An explicit build of the table started: the indexer's own build gives way to it."""

    status = 409
    code = "build_yielded"


YIELD_CHECK_SECONDS = 1.0  # how often a running build looks for an explicit build of its table


class FencedIndexStore(IndexStore):
    """An index store whose publication first checks that the caller still holds the table."""

    def __init__(self, root: StorageRoot, still_held: Callable[[], bool]) -> None:
        super().__init__(root)
        self._still_held = still_held

    def publish(self, manifest: IndexManifest, base: Pointer | None = None, rebase: bool = False
                ) -> IndexManifest:
        if not self._still_held():
            raise LeaseLost(f"lost table {manifest.table} to another indexer; not publishing v{manifest.index_version}")
        return super().publish(manifest, base, rebase)


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
        took the table over, Conflict when the table's index changed under a build (a drop, an overwrite),
        and whatever a step raised (the event is then delivered again)."""
        started = time.time()
        indexes = FencedIndexStore(self.root, still_held)
        pointer = indexes.pointer(event.table)  # before the table: a build publishes only from this record
        try:
            snap = self.tables.snapshot(event.table)
        except TableNotFound:
            return {"skipped": "table does not exist"}
        base = None if pointer.version is None else indexes.manifest(event.table, pointer.version)
        state = read_state(snap, base)
        work = decide(state, event, self.policy)
        report: dict[str, Any] = {"work": work.summary, "table_version": snap.version}
        if (work.full or work.partial) and indexes.explicit_builds(event.table):
            report["yielded"] = "an explicit build of the table is running"
            work = dataclasses.replace(work, full=False, partial=False)
        checked = [time.monotonic()]

        def progress(_rows: int) -> None:
            if not still_held():
                raise LeaseLost(f"lost table {event.table} to another indexer mid-build")
            if time.monotonic() - checked[0] >= YIELD_CHECK_SECONDS:
                checked[0] = time.monotonic()
                if indexes.explicit_builds(event.table):
                    raise BuildYielded(f"an explicit build of table {event.table} started; the indexer's stops")

        try:
            if work.full:
                self._on_step("building-full")
                params, metric, requested = self._full_params(event, pointer, base, state.rows)
                report["index"] = build_full(self.tables, indexes, event.table, params, progress, metric,
                                             base=pointer, requested=requested).describe()
            elif work.partial:
                self._on_step("building-partial")
                manifest = build_partial(self.tables, indexes, event.table, progress, base=pointer)
                report["index"] = manifest.describe() if manifest else None
        except BuildYielded as exc:
            report["yielded"] = exc.message
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

    def _full_params(self, event: Event, pointer: Pointer, base: IndexManifest | None, rows: int
                     ) -> tuple[IndexParams, str | None, dict[str, Any] | None]:
        """Parameters, metric and the user's choice to record, for a full build. An explicit request's
        parameters (and they become the user's choice); else the user's last explicit choice, as they gave
        it (sizes they left at 0 are chosen anew for the table's size); else the current index's codec and
        knobs with the sizes chosen anew (under "auto", a codec of the size rule is chosen again for the
        table's `rows`); else the indexers' default codec for `rows` (`default_codec`)."""
        if event.params:
            params = IndexParams.from_json(dict(event.params))
            return params, None, {"params": params.to_json(), "metric": None}
        if pointer.requested:
            chosen = pointer.requested
            return IndexParams.from_json(dict(chosen.get("params") or {})), chosen.get("metric"), None
        if base is None:
            return IndexParams(codec=default_codec(self.policy.codec, rows)), None, None
        codec = base.codec
        if self.policy.codec == AUTO_CODEC and codec in AUTO_CODECS:  # the size rule's, chosen again for the size
            codec = default_codec(AUTO_CODEC, rows)
        return IndexParams.for_rebuild({**base.params, "codec": codec}), base.metric, None
