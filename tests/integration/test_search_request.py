"""Explain shows the plan that runs: on a real fleet, for both fronts (query/request.py builds one
SearchRequest for the native API, the LanceDB protocol and explain; the service binds and plans it one way).

The table has an IVF index, rows past its watermark and a deleted row, so plans carry partitions, a flat
tail and the alive check; the LanceDB cases page with `offset`, which explain_plan once ignored.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import requests
from conftest import Api

from appliance.fleet import Fleet

DIM = 8
TABLE = "plans"
RAN = ("assignment", "executors")  # where the tasks went: explain asks the ring now, a search does not say


def comparable(plan: dict) -> dict:
    return {k: v for k, v in plan.items() if k not in RAN}


@pytest.fixture(scope="module")
def table(api: Api) -> np.ndarray:
    rows = np.random.default_rng(5).normal(size=(600, DIM)).astype(np.float32)
    api.create(TABLE, DIM, "l2", {"n": "int64"})
    for start in (0, 300):
        api.insert(TABLE, [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(rows[start:start + 300])])
    resp = api.post(f"/api/v1/tables/{TABLE}/index", {"codec": "flat", "nlist": 6, "nprobes": 2})
    assert resp.status_code == 201, resp.text
    api.insert(TABLE, [{"vector": v.tolist(), "n": 600 + i} for i, v in enumerate(rows[:40])])  # the tail
    assert api.post(f"/api/v1/tables/{TABLE}/delete", {"filter": "n = 7"}).status_code == 200
    return rows


NATIVE = [
    {"k": 5},
    {"k": 5, "nprobes": 4, "refine_factor": 2},
    {"k": 7, "filter": "n >= 100"},  # broad: post-filtered on the index
    {"k": 7, "filter": "n < 3"},  # selective: pre-filtered exactly
    {"k": 3, "bypass_vector_index": True},
    {"k": 4, "metric": "cosine"},
]


@pytest.mark.parametrize("body", NATIVE)
def test_native_explain_is_the_plan_that_runs(api: Api, table: np.ndarray, body: dict) -> None:
    body = {"vector": table[11].tolist(), **body}
    explained = api.post(f"/api/v1/tables/{TABLE}/explain", body)
    assert explained.status_code == 200, explained.text
    ran = api.post(f"/api/v1/tables/{TABLE}/search", {**body, "explain": True})
    assert ran.status_code == 200, ran.text
    assert comparable(explained.json()) == comparable(ran.json()["plan"])


LANCE = [
    {"k": 5, "offset": 3},
    {"k": 5, "offset": 2, "nprobes": 4, "refine_factor": 2},
    {"k": 6, "offset": 4, "filter": "n >= 100", "prefilter": True},
    {"k": 4, "bypass_vector_index": True, "offset": 1},
]


@pytest.mark.parametrize("body", LANCE)
def test_lancedb_explain_plan_is_the_plan_that_runs(fleet: Fleet, table: np.ndarray, body: dict) -> None:
    headers = {"x-api-key": fleet.api_key}
    body = {"vector": table[11].tolist(), **body}
    explained = requests.post(f"{fleet.url}/v1/table/{TABLE}/explain_plan/", json={"query": body},
                              headers=headers, timeout=60)
    assert explained.status_code == 200, explained.text
    plan = json.loads(explained.json())
    assert plan["k"] == body["k"] + body["offset"]  # the page's rows and the ones skipped before it
    ran = requests.post(f"{fleet.url}/v1/table/{TABLE}/query/", json=body, timeout=60,
                        headers={**headers, "x-appliance-explain": "true"})
    assert ran.status_code == 200, ran.text
    assert comparable(plan) == comparable(json.loads(ran.headers["x-appliance-plan"]))
    rows = pa.ipc.open_file(pa.BufferReader(ran.content)).read_all()
    assert rows.num_rows == body["k"]  # the page itself: k rows after the offset
