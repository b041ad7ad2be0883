"""Removes table and index versions that nothing can be reading any more.

A version may still be in use for a while after it stops being the latest: a query pins a table version
for its whole run, and query nodes re-read the index pointer only every half second. So age is measured
from when a version was *superseded* (its successor's time), not from when it was made, and only what
was superseded more than `grace` seconds ago goes. Index objects that no kept manifest names are removed
only when they too are older than the grace period: a build in progress has written objects that no
manifest names yet.
"""

from __future__ import annotations

import time
from typing import Any

from appliance.index.store import IndexStore
from appliance.storage.tables import TableStore


def cleanup_table_versions(tables: TableStore, name: str, grace: float, now: float | None = None) -> list[int]:
    """Delete table versions superseded more than `grace` seconds ago; the versions deleted."""
    now = time.time() if now is None else now
    ds = tables.snapshot(name).dataset
    versions = sorted(ds.versions(), key=lambda v: v["version"])
    doomed = [v["version"] for v, successor in zip(versions, versions[1:], strict=False)
              if successor["timestamp"].timestamp() < now - grace]
    if doomed:
        ds.cleanup_old_versions(versions=doomed, error_if_tagged_old_versions=False)
    return doomed


def cleanup_index_versions(indexes: IndexStore, name: str, grace: float, now: float | None = None
                           ) -> dict[str, Any]:
    """Delete index manifests superseded more than `grace` seconds ago, then objects no kept manifest
    names that are older than `grace`. With no published index (dropped: a new generation), every
    manifest is superseded since the pointer moved off it."""
    now = time.time() if now is None else now
    pointer = indexes.pointer(name)
    current = pointer.version
    manifests = {v: indexes.manifest(name, v) for v in indexes.versions(name)}
    if not manifests:
        return {"manifests": [], "objects": 0}
    published_at = {v: m.created_at + m.build_seconds for v, m in manifests.items()}
    doomed = []
    for v in sorted(manifests):
        if v == current:
            continue
        later = [published_at[w] for w in manifests if w > v]
        # superseded when a later version was published; one that is not older than the current version
        # (its builder died or lost the race for the pointer, or the index was dropped) is garbage once
        # both it and the pointer's last move are old
        if current is not None and v < current and later:
            superseded = min(later)
        else:
            superseded = max(published_at[v], pointer.at)
        if superseded < now - grace:
            doomed.append(v)
    for v in doomed:
        indexes.delete_manifest(name, v)
    referenced = {ref.key for v, m in manifests.items() if v not in doomed for ref in m.objects()}
    removed = 0
    for key, mtime in indexes.object_times(name).items():
        if key not in referenced and mtime < now - grace:
            indexes.delete_object(key)
            removed += 1
    return {"manifests": doomed, "objects": removed}
