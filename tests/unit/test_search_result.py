"""SearchResult: the JSON rows, the Arrow table and the per-member split agree, and a JSON answer never
builds the Arrow table (the cost appliance/query/service.py cut)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from appliance.query.service import SearchResult


def _result() -> SearchResult:
    payload = pa.table({"row": pa.array([70, 40, 90], pa.int64()), "tag": ["a", None, "c"]})
    return SearchResult("t", 3, None, np.array([0, 0, 2], np.int32),  # type: ignore[arg-type]
                        np.array([7, 4, 9], np.uint64), np.array([0.5, 0.75, 0.1], np.float32), payload)


def test_json_rows_match_the_arrow_table_and_skip_building_it() -> None:
    result = _result()
    grouped = result.per_query(3)
    assert "rows" not in result.__dict__  # the JSON answer did not build the Arrow table
    assert grouped == [[{"_rowid": 7, "_distance": 0.5, "row": 70, "tag": "a"},
                        {"_rowid": 4, "_distance": 0.75, "row": 40, "tag": None}], [],
                       [{"_rowid": 9, "_distance": np.float32(0.1).item(), "row": 90, "tag": "c"}]]
    table = result.rows
    assert table.schema.names == ["query_index", "_rowid", "_distance", "row", "tag"]
    assert table.schema.field("row").type == pa.int64() and table.schema.field("_rowid").type == pa.uint64()
    from_arrow: list[list[dict]] = [[] for _ in range(3)]
    for row in table.to_pylist():
        from_arrow[row.pop("query_index")].append(row)
    assert from_arrow == grouped


def test_split_numbers_each_members_queries_from_zero() -> None:
    first, second = _result().split([1, 2])
    assert first.per_query(1) == [_result().per_query(3)[0]]
    assert second.per_query(2) == [[], _result().per_query(3)[2]]
    assert second.rows.column("query_index").to_pylist() == [1]
