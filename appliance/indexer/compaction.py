"""Merges a table's small fragments (and rewrites fragments full of deleted rows) with Lance compaction.

Safe for the index and for queries: the table uses stable row ids, so every row keeps its id in the new
fragments and the index's row-id watermark still tells indexed rows from new ones; compaction commits a
new table version, so queries pinned to an older version keep reading the old fragments until cleanup
removes them after the grace period.
"""

from __future__ import annotations

from typing import Any

from appliance.indexer.policy import DELETED_FRACTION, SMALL_FRAGMENT_ROWS
from appliance.storage.tables import TableStore


def compact(tables: TableStore, name: str, threads: int = 1) -> dict[str, Any]:
    """Compact the latest version; what was merged, for the indexer's report."""
    ds = tables.snapshot(name).dataset
    before = len(ds.get_fragments())
    metrics = ds.optimize.compact_files(
        target_rows_per_fragment=SMALL_FRAGMENT_ROWS, materialize_deletions=True,
        materialize_deletions_threshold=DELETED_FRACTION, num_threads=max(1, threads),
    )
    after = tables.snapshot(name).dataset
    return {"fragments_before": before, "fragments_after": len(after.get_fragments()),
            "fragments_removed": metrics.fragments_removed, "fragments_added": metrics.fragments_added,
            "table_version": after.version}
