"""The shared debian-minilm set loaded through HTTP into a real fleet: exact search has recall@10 = 1.0."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA, load_debian

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "base.npy").exists(), reason=f"{SHARED_DATA} is not present"),
]


def test_load_and_exact_recall(api) -> None:
    base = np.load(SHARED_DATA / "base.npy")
    queries = np.load(SHARED_DATA / "dev_queries.npy")[:100]
    truth = np.load(SHARED_DATA / "dev_gt_ids.npy")[:100, :10]
    load_debian(api)
    assert api.get("/api/v1/tables/debian").json()["rows"] == len(base)

    resp = api.post("/api/v1/tables/debian/search", {"vectors": queries.tolist(), "k": 10, "columns": ["row"]})
    assert resp.status_code == 200, resp.text
    got = [[r["row"] for r in rows] for rows in resp.json()["results"]]
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth.tolist(), strict=True)])
    assert recall == 1.0
