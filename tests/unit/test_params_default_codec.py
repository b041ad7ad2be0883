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


def test_under_auto_a_rebuild_chooses_the_codec_again_for_the_new_size(tmp_path, monkeypatch) -> None:
    """An index the size rule chose (or an older release's flat one) is rebuilt with the codec the rule gives
    the grown table; a codec outside the rule (hnsw_flat, pq...) is kept, as a user's or operator's choice."""
    from test_indexer_jobs import ev, held, rows, table_with

    from appliance.index import IndexStore, params
    from appliance.index.builder import build_full
    from appliance.index.params import IndexParams
    from appliance.indexer.worker import TableWorker
    from appliance.storage import StorageRoot

    root = StorageRoot.parse(str(tmp_path / "data"))
    tables, indexes = table_with(root, 1200), IndexStore(root)
    auto = Policy(min_rows=1000, codec="auto", growth=1.0, max_deltas=3, compact_fragments=100)
    build_full(tables, indexes, "t", IndexParams(codec="flat"))  # no recorded choice
    tables.append("t", rows(1300, 1200))
    assert TableWorker(root, auto, grace=3600).handle(ev(), held)["work"] == "full"
    assert indexes.current("t").codec == "hnsw_sq"  # 2,500 rows: a graph
    monkeypatch.setattr(params, "GRAPH_TABLE_ROWS", 3000)
    tables.append("t", rows(800, 2500))  # 3,300 rows, past 25% growth and the (lowered) threshold
    assert TableWorker(root, auto, grace=3600).handle(ev(), held)["work"] == "full"
    assert indexes.current("t").codec == "flat"
    build_full(tables, indexes, "t", IndexParams(codec="sq8"))
    tables.append("t", rows(3400, 3300))
    assert TableWorker(root, auto, grace=3600).handle(ev(), held)["work"] == "full"
    assert indexes.current("t").codec == "sq8"
