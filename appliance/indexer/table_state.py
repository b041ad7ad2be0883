"""Reads what the policy needs to know about a table from storage: rows, coverage, fragments, index."""

from __future__ import annotations

from appliance.index.codec import GRAPH_CODECS
from appliance.index.manifest import IndexManifest
from appliance.indexer.policy import DELETED_FRACTION, SMALL_FRAGMENT_ROWS, TableState
from appliance.storage.tables import TableSnapshot


def read_state(snap: TableSnapshot, manifest: IndexManifest | None) -> TableState:
    """The table at one pinned version, against its published index (None when it has none)."""
    ds = snap.dataset
    rows = ds.count_rows()
    small = heavy = 0
    for fragment in ds.get_fragments():
        physical = fragment.physical_rows
        deleted = fragment.metadata.num_deletions
        if physical - deleted < SMALL_FRAGMENT_ROWS:
            small += 1
        if physical and deleted / physical > DELETED_FRACTION:
            heavy += 1
    if manifest is None:
        return TableState(rows=rows, unindexed=rows, small_fragments=small, deleted_heavy_fragments=heavy)
    unindexed = ds.count_rows(f"_rowid >= {manifest.row_id_watermark}") if rows else 0
    deltas = len(manifest.history) if manifest.kind == "partial" else 0
    return TableState(
        rows=rows, unindexed=unindexed, small_fragments=small, deleted_heavy_fragments=heavy, has_index=True,
        trained_rows=manifest.trained_rows, deltas=deltas,
        full_built_at=manifest.created_at if manifest.kind == "full" else None, graph=manifest.codec in GRAPH_CODECS,
    )
