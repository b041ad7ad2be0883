"""What the planner knows of a pinned table version: its statistics, gathered once per snapshot.

`SnapshotStats` is everything a plan needs from the table (schema facts, per fragment its rows and row-id
span, the live row count), read once per (table, version) and kept immutable, so that planning itself
(`plan.plan_search`) is a pure function without storage I/O. `estimate_selectivity` is the one statistic
that depends on a filter: the share of rows matching it, counted (not materialised) on a sample of the
version's fragments, once per (version, filter).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from appliance.lru import Lru
from appliance.storage import lance_errors
from appliance.storage.tables import TableSnapshot

SELECTIVITY_SAMPLE_ROWS = 65_536
"""Rows of a version a selectivity estimate counts a filter on (whole fragments, spread over the table);
a table this small or smaller is counted whole, so the estimate is exact."""

_STATS: Lru[SnapshotStats] = Lru(256)
_SELECTIVITY: Lru[float] = Lru(1024)
_OF_SNAPSHOT: weakref.WeakKeyDictionary[TableSnapshot, SnapshotStats] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FragmentStats:
    """One fragment of the version: its id, physical rows (deleted ones included: what a scan reads) and
    the smallest and largest live row id ((0, -1) when none is alive)."""

    fragment_id: int
    rows: int
    first_row_id: int
    last_row_id: int


@dataclass(frozen=True)
class SnapshotStats:
    """The facts of one table version that validation and planning use (no handle to storage)."""

    table: str
    version: int
    dimension: int
    metric: str  # the table's own metric (schema metadata)
    columns: tuple[str, ...]  # every column, the vector included
    payload_columns: tuple[str, ...]  # every column but the vector
    fragments: tuple[FragmentStats, ...]  # in fragment id order
    live_rows: int
    identity: str | None = None  # the version's manifest digest (TableSnapshot.identity): what memos key on

    def key(self, uri: str, *more: object) -> tuple[object, ...]:
        """A memo key for something true of this version of the table at `uri` (and `more`)."""
        return (uri, self.version, self.identity, *more)

    @property
    def vector_bytes(self) -> int:
        """Bytes of one row's vector (float32)."""
        return self.dimension * 4

    def rows_from(self, watermark: int) -> dict[int, int]:
        """Per fragment holding rows with ids at or past `watermark` (the rows an index lacks), at most how
        many: ids ascend within a fragment, so its span past the watermark bounds them."""
        return {f.fragment_id: f.last_row_id - max(f.first_row_id, watermark) + 1 for f in self.fragments
                if f.last_row_id >= watermark}


def snapshot_stats(snapshot: TableSnapshot) -> SnapshotStats:
    """The statistics of a pinned version, gathered on its first search and remembered for the version
    (keyed by the version's manifest digest as well, so a table dropped and created again under its name
    never meets its predecessor's). A snapshot object searched again (the query node's cached latest
    version) finds them without computing even the digest."""
    known = _OF_SNAPSHOT.get(snapshot)
    if known is not None:
        return known
    identity = snapshot.identity()
    key = (snapshot.dataset.uri, snapshot.version, identity)
    known = _STATS.get(key) if identity else None
    if known is not None:
        _OF_SNAPSHOT[snapshot] = known
        return known
    ranges = snapshot.fragment_row_ranges()  # cached per fragment data file (storage/tables.py)
    fragments = tuple(sorted(
        (FragmentStats(f.fragment_id, f.metadata.physical_rows, *ranges.get(f.fragment_id, (0, -1)))
         for f in snapshot.dataset.get_fragments()), key=lambda f: f.fragment_id))
    schema = snapshot.dataset.schema
    stats = SnapshotStats(table=snapshot.name, version=snapshot.version, dimension=snapshot.dimension,
                          metric=snapshot.metric, columns=tuple(schema.names),
                          payload_columns=tuple(snapshot.payload_columns), fragments=fragments,
                          live_rows=snapshot.dataset.count_rows(), identity=identity)
    if identity:
        _STATS.put(key, stats)
    _OF_SNAPSHOT[snapshot] = stats
    return stats


def sample_fragments(stats: SnapshotStats, rows: int = SELECTIVITY_SAMPLE_ROWS) -> list[int]:
    """Ids of whole fragments, spread evenly over the version, holding at least `rows` rows (all of them
    when the table is no larger)."""
    fragments = [f for f in stats.fragments if f.rows]
    total = sum(f.rows for f in fragments)
    stride = max(1, total // max(1, rows))  # every stride-th fragment first, then the rest, until enough
    chosen: list[int] = []
    taken = 0
    for f in fragments[::stride] + [f for i, f in enumerate(fragments) if i % stride]:
        if taken >= rows:
            break
        chosen.append(f.fragment_id)
        taken += f.rows
    return chosen


def estimate_selectivity(snapshot: TableSnapshot, stats: SnapshotStats, predicate: str) -> float:
    """The share of live rows matching a filter: counted by Lance on a sample of fragments (the whole
    version when small), never materialising the matching row ids; once per (version, filter). A filter
    that fails on the data (a bad regex, a division by zero) is a 400, as everywhere else."""
    key = stats.key(snapshot.dataset.uri, predicate)

    def count() -> float:
        fragments = [f for f in map(snapshot.dataset.get_fragment, sample_fragments(stats, SELECTIVITY_SAMPLE_ROWS))
                     if f is not None]
        live = sum(f.count_rows() for f in fragments)  # from the fragments' metadata
        if not live:
            return 0.0
        with lance_errors.map_lance_errors("the filter"):  # one scan of the sample: 3-4x faster than per fragment
            matching = snapshot.dataset.scanner(filter=predicate, fragments=fragments, columns=[],
                                                with_row_id=True).count_rows()
        return matching / live

    return _SELECTIVITY.get_or_load(key, count)
