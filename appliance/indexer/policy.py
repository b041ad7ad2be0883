"""What the indexer does to a table, decided from the table's state alone (no I/O here).

The event only says which table to look at and whether someone asked for something; everything else comes
from storage (rows, rows above the index watermark, fragments). That is what makes duplicate, reordered or
lost events harmless: handling any event of a table brings the whole table up to date.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import Settings
from appliance.events.event import DELETED, OPTIMIZE, REBUILD, Event

SMALL_FRAGMENT_ROWS = 1024 * 1024  # Lance's default target; fragments below it are worth merging
DELETED_FRACTION = 0.1  # a fragment with more of its rows deleted than this is worth rewriting
# A graph index's deltas are flat rows every search scans whole (a graph partition is one of few), not a
# probed share as IVF's are: rebuilt once its table grew this much (10k delta rows of 384-d cost ~1.5 ms of
# CPU a search, 4x a 62k-row graph's walk at ef 128)
GRAPH_GROWTH = 0.25


@dataclass(frozen=True)
class Policy:
    min_rows: int = 4096
    codec: str = "auto"  # a codec, or "auto": by the table's size (index/params.default_codec)
    growth: float = 1.0
    max_deltas: int = 32
    compact_fragments: int = 16

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        return cls(s.indexer_min_rows, s.indexer_codec, s.indexer_growth, s.indexer_max_deltas,
                   s.indexer_compact_fragments)


@dataclass(frozen=True)
class TableState:
    rows: int  # live rows
    unindexed: int  # live rows at or above the index watermark (all rows when there is no index)
    small_fragments: int
    deleted_heavy_fragments: int  # fragments with more than DELETED_FRACTION of their rows deleted
    has_index: bool = False
    trained_rows: int = 0  # rows the centroids were trained on
    deltas: int = 0  # partial versions since the last full build
    full_built_at: float | None = None  # when the current full build started (None for a partial index)
    graph: bool = False  # the index is a graph codec's (its deltas are scanned whole by every search)


@dataclass(frozen=True)
class Work:
    full: bool = False
    partial: bool = False
    compact: bool = False
    cleanup: bool = True  # cheap when nothing is old enough; it only removes what the grace period allows

    @property
    def summary(self) -> str:
        parts = [n for n in ("full", "partial", "compact") if getattr(self, n)]
        return "+".join(parts) or "nothing"


def decide(state: TableState, event: Event, policy: Policy) -> Work:
    asked_rebuild = event.action == REBUILD and not (
        state.full_built_at is not None and state.full_built_at >= event.created_at)  # a later build covers it
    asked_optimize = event.action == OPTIMIZE
    if state.rows == 0:
        full = partial = False
    elif not state.has_index:
        full = state.rows >= policy.min_rows or asked_rebuild or asked_optimize
        partial = False
    else:
        growth = min(policy.growth, GRAPH_GROWTH) if state.graph else policy.growth
        grown = state.rows >= state.trained_rows * (1 + growth)
        full = asked_rebuild or grown or state.deltas >= policy.max_deltas
        partial = not full and state.unindexed > 0
    compact = (state.small_fragments >= policy.compact_fragments
               or (asked_optimize and state.small_fragments > 1)
               or ((asked_optimize or event.kind == DELETED) and state.deleted_heavy_fragments > 0))
    return Work(full=full, partial=partial, compact=compact)
