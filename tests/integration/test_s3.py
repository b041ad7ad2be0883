"""The appliance with its storage root on S3 (moto's server on loopback): data really lands in the bucket,
concurrent writers lose nothing, index publication cannot be half-done or overwritten, and a missing
bucket is a clear error at start-up and in /readyz.

The broader integration modules (`STORAGE_BACKENDS = ["local", "s3"]`) run their fleet tests on S3 too.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO, Api, start_fleet

from appliance.errors import Conflict
from appliance.index.manifest import IndexManifest
from appliance.index.store import IndexStore
from appliance.indexer.cleanup import cleanup_table_versions
from appliance.indexer.compaction import compact
from appliance.query.commits import GroupCommitter
from appliance.storage import StorageRoot, TableStore
from appliance.storage.schema import vector_type

WRITERS = 4
BATCHES = 50
BATCH_ROWS = 3


def batch(writer: int, number: int) -> pa.Table:
    tags = [writer * 1_000_000 + number * BATCH_ROWS + i for i in range(BATCH_ROWS)]
    vectors = np.full((BATCH_ROWS, 2), writer, dtype=np.float32)
    return pa.table({
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 2).cast(vector_type(2)),
        "tag": pa.array(tags, pa.int64()),
    })


def append_batches(uri: str, options: str, writer: int, acknowledged: multiprocessing.Queue) -> None:
    """One writer process, as a query node writes: appends its batches one commit at a time through a group
    committer, which retries commits lost to the other processes (each its own node), reporting each
    acknowledged batch."""
    tables = TableStore(StorageRoot.parse(uri, options))
    committer = GroupCommitter(tables.append_parts, max_rows=BATCH_ROWS, retry_seconds=300)
    for number in range(BATCHES):
        committer.append("shared", tables.conform_rows("shared", batch(writer, number)))
        acknowledged.put((writer, number))


def test_fleet_on_s3_keeps_tables_and_index_in_the_bucket(s3, tmp_path) -> None:
    bucket = s3.new_bucket()
    fleet = start_fleet(f"s3://{bucket}/root", tmp_path / "logs", storage_options=s3.storage_options,
                        events=f"sqlite://{tmp_path / 'events.sqlite'}")
    try:
        api = Api(fleet.url, fleet.api_key)
        rng = np.random.default_rng(3)
        base = rng.standard_normal((3000, 16)).astype(np.float32)
        api.create("docs", 16, "l2", {"n": "int64"})
        api.insert("docs", [{"vector": v.tolist(), "n": i} for i, v in enumerate(base)])
        resp = api.post("/api/v1/tables/docs/index", {"codec": "flat", "nlist": 16, "nprobes": 16})
        assert resp.status_code == 201, resp.text
        for i in (0, 1234, 2999):
            assert api.search("docs", base[i], k=1, columns=["n"])[0]["n"] == i

        keys = [o["Key"] for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert any(k.startswith("root/docs.lance/_versions/") for k in keys)
        assert any(k.startswith("root/docs.lance/data/") for k in keys)
        assert any(k.startswith("root/_appliance/indexes/docs/manifests/") for k in keys)
        assert not (tmp_path / "root").exists()

        stats = api.get("/admin/cache").json()
        assert stats["storage"]["fetches"] > 0  # executors read the bucket through their cache
    finally:
        fleet.stop()


def test_concurrent_writers_on_s3_lose_no_row(s3) -> None:
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/root"
    TableStore(StorageRoot.parse(uri, s3.storage_options)).create("shared", 2, "l2", {"tag": "int64"})
    ctx = multiprocessing.get_context("spawn")  # Lance is not fork-safe
    acknowledged = ctx.Queue()
    writers = [ctx.Process(target=append_batches, args=(uri, s3.storage_options, w, acknowledged))
               for w in range(WRITERS)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=600)
    acks = set()
    while not acknowledged.empty():
        acks.add(acknowledged.get())
    assert all(w.exitcode == 0 for w in writers)
    assert len(acks) == WRITERS * BATCHES

    snapshot = TableStore(StorageRoot.parse(uri, s3.storage_options)).snapshot("shared")
    tags = snapshot.dataset.to_table(columns=["tag"]).column("tag").to_pylist()
    expected = {t for w, n in acks for t in batch(w, n).column("tag").to_pylist()}
    assert len(tags) == len(set(tags)), "a row was committed twice"
    assert set(tags) == expected, "an acknowledged row is missing"


def test_index_manifest_versions_are_create_only_on_s3(s3) -> None:
    store = IndexStore(StorageRoot.parse(f"s3://{s3.new_bucket()}/root", s3.storage_options))
    ref = store.put_object("t", {"centroids": np.zeros((1, 2), np.float32)}, rows=1)
    manifest = IndexManifest(table="t", index_version=1, metric="l2", dimension=2, codec="flat",
                             params={}, table_version=1, row_id_watermark=0, rows=0, trained_rows=0,
                             centroids=ref, partitions=[[]], created_at=0.0, build_seconds=0.0, kind="full")
    store.publish(manifest)
    with pytest.raises(Conflict):
        store.publish(manifest)
    assert store.current_version("t") == 1


def test_missing_bucket_is_a_clear_error_at_start_up(s3, tmp_path) -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("appliance")), "up", "--storage", "s3://no-such-bucket-here/root",
         "--storage-options", s3.storage_options, "--port", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "bucket 'no-such-bucket-here' does not exist" in result.stderr


def test_compaction_and_cleanup_on_s3_keep_every_row(s3) -> None:
    tables = TableStore(StorageRoot.parse(f"s3://{s3.new_bucket()}/root", s3.storage_options))
    tables.create("shared", 2, "l2", {"tag": "int64"})
    for number in range(12):
        tables.append("shared", batch(0, number))
    before = sorted(tables.snapshot("shared").dataset.to_table(columns=["tag"]).column("tag").to_pylist())

    report = compact(tables, "shared")
    assert report["fragments_before"] == 12 and report["fragments_after"] == 1
    removed = cleanup_table_versions(tables, "shared", grace=0.0, now=time.time() + 1)
    assert removed, "superseded versions were not cleaned up"

    snapshot = tables.snapshot("shared")
    assert sorted(snapshot.dataset.to_table(columns=["tag"]).column("tag").to_pylist()) == before
    assert [v["version"] for v in snapshot.dataset.versions()] == [snapshot.version]
