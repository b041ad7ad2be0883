"""The indexers' default codec chosen by the table's size (index/params.default_codec), and the rebuild rule
of graph indexes, whose deltas every search scans whole (indexer/policy.py)."""

from __future__ import annotations

from appliance.config import Settings
from appliance.events.event import APPENDED, Event
from appliance.index.params import GRAPH_PARTITION_ROWS, default_codec
from appliance.indexer.policy import GRAPH_GROWTH, Policy, TableState, decide


def test_auto_is_a_graph_up_to_one_graph_partition_and_ivf_flat_above() -> None:
    assert Settings().indexer_codec == "auto"
    assert default_codec("auto", 4_096) == default_codec("auto", GRAPH_PARTITION_ROWS) == "hnsw_sq"
    assert default_codec("auto", GRAPH_PARTITION_ROWS + 1) == default_codec("auto", 4_000_000) == "flat"
    assert default_codec("sq8", 100) == default_codec("sq8", 10**7) == "sq8"  # an operator's codec stands


def indexed(rows: int, graph: bool) -> TableState:
    return TableState(rows=rows, unindexed=rows - 10_000, small_fragments=1, deleted_heavy_fragments=0,
                      has_index=True, trained_rows=10_000, full_built_at=1.0, graph=graph)


def test_a_graph_index_is_rebuilt_sooner_than_an_ivf_one() -> None:
    policy, event = Policy(growth=1.0), Event(table="t", kind=APPENDED, table_version=3)
    grown = int(10_000 * (1 + GRAPH_GROWTH))
    assert decide(indexed(grown, graph=True), event, policy).summary == "full"
    assert decide(indexed(grown - 1, graph=True), event, policy).summary == "partial"
    assert decide(indexed(grown, graph=False), event, policy).summary == "partial"  # IVF: at 2x
    assert decide(indexed(20_000, graph=False), event, policy).summary == "full"
    # a smaller growth setting still applies to graphs
    assert decide(indexed(11_000, graph=True), event, Policy(growth=0.1)).summary == "full"
