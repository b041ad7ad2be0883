"""The `appliance` command against a real fleet: every subcommand's --help, `appliance load` of every kind of
input (and an interrupted load resumed), `tables`, `describe`, `status`; and the native API's strict bodies
and its warning when a search's metric bypasses the index."""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import lance
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from conftest import REPO, SHARED_DATA

CLI = [sys.executable, "-m", "appliance.cli"]
ROWS = 5_000  # a slice of debian-minilm keeps the loads quick


def appliance(*args: str, fleet=None, timeout: float = 300, env: dict | None = None,
              **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), **({"APPLIANCE_API_KEY": fleet.api_key} if fleet is not None else {})}
    extra = ["--url", fleet.url] if fleet is not None else []
    return subprocess.run([*CLI, *args, *extra], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
                          **kw)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first ROWS rows of debian-minilm: base.npy and base.jsonl.gz, as a user has them."""
    folder = tmp_path_factory.mktemp("minilm")
    vectors = np.ascontiguousarray(np.load(SHARED_DATA / "base.npy", mmap_mode="r")[:ROWS])
    np.save(folder / "base.npy", vectors)
    with gzip.open(SHARED_DATA / "base.jsonl.gz", "rb") as src, gzip.open(folder / "base.jsonl.gz", "wb") as dst:
        lines = list(itertools.islice(src, ROWS))
        dst.writelines(lines)
    return {"npy": folder / "base.npy", "jsonl": folder / "base.jsonl.gz", "vectors": vectors,
            "payload": [orjson.loads(line) for line in lines]}


def nearest(api, table: str, vector: np.ndarray) -> dict:
    return api.search(table, vector, k=1)[0]


def test_every_subcommand_help_exits_0() -> None:
    top = subprocess.run([*CLI, "--help"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    commands = re.search(r"\{([a-z,-]+)\}", top).group(1).split(",")
    assert {"up", "serve", "load", "tables", "describe", "status", "index", "cache"} <= set(commands)
    for command in commands:
        done = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 0, f"appliance {command} --help: {done.stderr[-500:]}"
        assert "usage:" in done.stdout


def test_load_npy_with_jsonl_payload(fleet, api, minilm) -> None:
    done = appliance("load", "minilm", str(minilm["npy"]), "--payload", str(minilm["jsonl"]), "--batch-rows", "2000",
                     fleet=fleet)
    assert done.returncode == 0, done.stderr
    assert f"created table 'minilm' at {fleet.url}: dimension 384, metric cosine" in done.stderr
    assert "5,000/5,000 rows (100%)" in done.stderr and "MB/s" in done.stderr  # plain lines off a terminal
    info = api.get("/api/v1/tables/minilm").json()
    assert info["rows"] == ROWS and info["metric"] == "cosine"
    assert info["fragments"] == math.ceil(ROWS / 2000)  # one fragment per batch, for the executors to share
    assert [c["name"] for c in info["schema"]] == ["vector", "package", "description"]
    for row in (0, 1999, 2000, 4321, ROWS - 1):  # payload stays aligned with its vector across batches
        assert nearest(api, "minilm", minilm["vectors"][row])["package"] == minilm["payload"][row]["package"]


def test_load_a_folder_of_parquet_and_jsonl_and_a_csv_and_a_lance_dataset(fleet, api, minilm, tmp_path) -> None:
    vectors = minilm["vectors"][:1500]
    folder = tmp_path / "mixed"
    folder.mkdir()
    pq.write_table(pa.table({"emb": pa.array(vectors[:1000].tolist(), pa.list_(pa.float32())),
                             "n": np.arange(1000), "title": [f"p{i}" for i in range(1000)]}),
                   folder / "a.parquet", row_group_size=300)
    with open(folder / "b.jsonl", "wb") as f:
        for i in range(1000, 1500):
            f.write(orjson.dumps({"emb": vectors[i].tolist(), "n": i, "title": f"j{i}"}) + b"\n")
    (folder / "notes.txt").write_text("not loaded")
    done = appliance("load", "mixed", str(folder), "--vector-column", "emb", "--metric", "l2", "--batch-rows", "400",
                     fleet=fleet)
    assert done.returncode == 0, done.stderr
    info = api.get("/api/v1/tables/mixed").json()
    assert (info["rows"], info["metric"]) == (1500, "l2")
    for i in (0, 999, 1000, 1499):
        hit = nearest(api, "mixed", vectors[i])
        assert (hit["n"], hit["title"]) == (i, f"p{i}" if i < 1000 else f"j{i}")

    with open(tmp_path / "c.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["n", "vector", "title"])
        writer.writerows([i, json.dumps(vectors[i].tolist()), f"c{i}"] for i in range(300))
    assert appliance("load", "fromcsv", str(tmp_path / "c.csv"), fleet=fleet).returncode == 0
    assert nearest(api, "fromcsv", vectors[123])["title"] == "c123"

    lance.write_dataset(pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[:600].ravel()), 384),
                                  "n": np.arange(600)}), tmp_path / "ds.lance")
    done = appliance("load", "fromlance", str(tmp_path / "ds.lance"), "--start-row", "100", fleet=fleet)
    assert done.returncode == 0, done.stderr
    assert api.get("/api/v1/tables/fromlance").json()["rows"] == 500
    assert nearest(api, "fromlance", vectors[100])["n"] == 100


def test_load_parquet_and_jsonl_objects_from_s3(fleet, api, minilm, s3, tmp_path) -> None:
    """s3:// inputs go through pyarrow.fs with the standard AWS environment (here: moto's endpoint)."""
    from s3_support import CREDENTIALS

    vectors = minilm["vectors"][:700]
    pq.write_table(pa.table({"vector": pa.array(vectors[:400].tolist(), pa.list_(pa.float32())),
                             "n": np.arange(400)}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_bytes(b"".join(orjson.dumps({"vector": vectors[i].tolist(), "n": i}) + b"\n"
                                                for i in range(400, 700)))
    bucket = s3.new_bucket()
    for name in ("a.parquet", "b.jsonl"):
        s3.client().upload_file(str(tmp_path / name), bucket, f"in/{name}")
    env = {"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
           "AWS_DEFAULT_REGION": CREDENTIALS["aws_region"]}
    done = appliance("load", "froms3", f"s3://{bucket}/in", fleet=fleet, env=env)
    assert done.returncode == 0, done.stderr
    assert api.get("/api/v1/tables/froms3").json()["rows"] == 700
    assert [nearest(api, "froms3", vectors[i])["n"] for i in (0, 399, 400, 699)] == [0, 399, 400, 699]


def test_a_bad_line_midway_reports_what_was_committed_and_resume_finishes(fleet, api, minilm, tmp_path) -> None:
    vectors = minilm["vectors"][:1000]
    lines = [orjson.dumps({"vector": v.tolist(), "n": i}) for i, v in enumerate(vectors)]
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\n".join([*lines[:700], b"{not json", *lines[700:]]) + b"\n")
    done = appliance("load", "halfway", str(broken), "--batch-rows", "250", fleet=fleet)
    assert done.returncode == 1
    assert "broken.jsonl, line 701: not JSON" in done.stderr
    assert "committed 500 rows in this run (input rows 0 to 500)" in done.stderr
    assert f"table 'halfway' at {fleet.url} now holds 500 rows at version 3" in done.stderr
    assert "--resume" in done.stderr
    broken.write_bytes(b"\n".join(lines) + b"\n")  # the user fixes the file and resumes
    done = appliance("load", "halfway", str(broken), "--batch-rows", "250", "--resume", fleet=fleet)
    assert done.returncode == 0, done.stderr
    assert "resuming: table 'halfway' holds 500 rows" in done.stderr
    assert api.get("/api/v1/tables/halfway").json()["rows"] == 1000
    assert sorted(r["n"] for r in api.search("halfway", vectors[600], k=1000)) == list(range(1000))  # no dupes


def test_ctrl_c_reports_what_was_committed_and_resume_loads_the_rest(fleet, api, minilm) -> None:
    env = {**os.environ, "APPLIANCE_API_KEY": fleet.api_key}
    proc = subprocess.Popen([*CLI, "load", "interrupted", str(minilm["npy"]), "--payload", str(minilm["jsonl"]),
                             "--batch-rows", "100", "--url", fleet.url], stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some batches are in
        resp = api.get("/api/v1/tables/interrupted")
        if resp.status_code == 200 and resp.json()["rows"] >= 300:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    held = api.get("/api/v1/tables/interrupted").json()
    assert 300 <= held["rows"] < ROWS, "interrupt came too late to test anything"
    assert "stopping after the insert in flight" in err and "may have been committed" not in err
    assert f"now holds {held['rows']:,} rows at version {held['version']}" in err
    done = appliance("load", "interrupted", str(minilm["npy"]), "--payload", str(minilm["jsonl"]), "--resume",
                     fleet=fleet)
    assert done.returncode == 0, done.stderr
    assert api.get("/api/v1/tables/interrupted").json()["rows"] == ROWS
    row = held["rows"] + 7  # the first rows loaded after the resume keep their own payload
    assert nearest(api, "interrupted", minilm["vectors"][row])["package"] == minilm["payload"][row]["package"]


def test_tables_describe_and_status(fleet, api) -> None:
    api.create("listed", 3, "dot", {"label": "string"})
    api.insert("listed", [{"vector": [1, 0, 0], "label": "a"}])
    done = appliance("tables", fleet=fleet)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^listed\s+1\s+3\s+dot\s+2\s+1\s+-$", done.stdout, re.M), done.stdout
    tables = json.loads(appliance("tables", "--json", fleet=fleet).stdout)
    assert tables["url"] == fleet.url
    assert {"name": "listed", "rows": 1, "dimension": 3, "metric": "dot", "version": 2, "fragments": 1,
            "index_version": None} in tables["tables"]

    done = appliance("describe", "listed", fleet=fleet)
    assert done.returncode == 0, done.stderr
    assert "metric     dot" in done.stdout and re.search(r"label\s+string\s+yes", done.stdout)
    described = json.loads(appliance("describe", "listed", "--json", fleet=fleet).stdout)
    assert described["table"]["rows"] == 1 and described["index"]["unindexed_rows"] == 1

    done = appliance("status", fleet=fleet)
    assert done.returncode == 0, done.stderr
    assert f"fleet at {fleet.url}: READY" in done.stdout and "2 of 2 executors live" in done.stdout
    assert done.stdout.count(" live ") >= 2 and "hit rate" in done.stdout and "event queue:" in done.stdout
    status = json.loads(appliance("status", "--json", fleet=fleet).stdout)
    assert status["readyz"]["ready"] is True and len(status["ring"]["live"]) == 2
    assert "hit_rate" in status["cache"] and status["tables"]["listed"]["unindexed_rows"] == 1


def test_a_missing_table_names_where_the_command_looked(fleet, tmp_path) -> None:
    done = appliance("describe", "nosuch", fleet=fleet)
    assert done.returncode == 1 and f"table 'nosuch' was not found at {fleet.url}" in done.stderr
    done = appliance("index", "nosuch", "--data", str(tmp_path / "elsewhere"))
    assert done.returncode == 1 and f"in data root {tmp_path / 'elsewhere'}" in done.stderr
    done = appliance("tables", "--url", "http://127.0.0.1:9")
    assert done.returncode == 1 and "no query node answers at http://127.0.0.1:9" in done.stderr


# ---------------------------------------------------------------- strict bodies, metric warning


STRICT = [
    ("/api/v1/tables", {"name": "typo", "dimension": 3, "metrc": "cosine"}, "metrc"),
    ("/api/v1/tables/strict/search", {"vector": [1, 0, 0], "k": 1, "filtr": "label = 'north'"}, "filtr"),
    ("/api/v1/tables/strict/explain", {"vector": [1, 0, 0], "metrc": "l2"}, "metrc"),
    ("/api/v1/tables/strict/rows", {"rows": [{"vector": [1, 0, 0]}], "mode": "append"}, "mode"),
    ("/api/v1/tables/strict/delete", {"filter": "label = 'a'", "where": "x"}, "where"),
    ("/api/v1/tables/strict/index", {"codec": "flat", "nlsit": 2}, "nlsit"),
]


@pytest.mark.parametrize(("path", "body", "field"), STRICT, ids=[s[2] + " " + s[0].rsplit("/", 1)[1] for s in STRICT])
def test_an_unknown_field_in_a_native_body_is_a_400_naming_it(api, path, body, field) -> None:
    if api.get("/api/v1/tables/strict").status_code == 404:
        api.create("strict", 3, "l2", {"label": "string"})
        api.insert("strict", [{"vector": [1, 0, 0], "label": "north"}, {"vector": [0, 1, 0], "label": "east"}])
    resp = api.post(path, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert f"unknown field '{field}'" in error and "accepted: " in error, error
    assert api.get("/api/v1/tables/strict").json()["rows"] == 2  # nothing written
    assert api.get("/api/v1/tables/typo").status_code == 404


def test_the_lancedb_protocol_stays_tolerant_of_extra_fields(api) -> None:
    api.create("tolerant", 3, "l2")
    api.insert("tolerant", [{"vector": [1, 0, 0]}])
    resp = api.http.post(f"{api.url}/v1/table/tolerant/query/", json={"vector": [1, 0, 0], "k": 1, "ef": 7,
                                                                          "some_future_field": True}, timeout=60)
    assert resp.status_code == 200, resp.text


def test_a_search_whose_metric_bypasses_the_index_says_so(api) -> None:
    rng = np.random.default_rng(3)
    api.create("warned", 8, "l2")
    api.insert("warned", [{"vector": v} for v in rng.random((300, 8)).tolist()])
    assert api.post("/api/v1/tables/warned/index", {"nlist": 4}).status_code == 201
    q = rng.random(8).tolist()
    plain = api.post("/api/v1/tables/warned/search", {"vector": q, "k": 3})
    same = api.post("/api/v1/tables/warned/search", {"vector": q, "k": 3, "metric": "l2"})
    for resp in (plain, same):
        assert resp.status_code == 200 and "warnings" not in resp.json() and "x-appliance-warning" not in resp.headers
    other = api.post("/api/v1/tables/warned/search", {"vector": q, "k": 3, "metric": "cosine"})
    assert other.status_code == 200, other.text
    (warning,) = other.json()["warnings"]
    assert "metric 'cosine' differs from the index's metric 'l2'" in warning and "exactly" in warning
    assert other.headers["x-appliance-warning"] == warning
    arrow = requests.post(f"{api.url}/api/v1/tables/warned/search", json={"vector": q, "k": 3, "metric": "cosine"},
                          headers={"x-api-key": api.key, "accept": "application/vnd.apache.arrow.stream"}, timeout=60)
    assert arrow.headers["x-appliance-warning"] == warning
    bypass = api.post("/api/v1/tables/warned/search", {"vector": q, "k": 3, "metric": "cosine",
                                                       "bypass_vector_index": True})
    assert "warnings" not in bypass.json()  # asked for an exact scan: nothing to warn of


def test_progress_bar_on_a_terminal() -> None:
    """On a terminal the load draws a tqdm bar with rows, MB/s and the ETA (unit test of the Progress class)."""
    import io

    from appliance.load import Progress

    out = io.StringIO()
    bar = Progress(1000, "loading t", out, tty=True)
    bar.update(500, 2 * 2**20)
    bar.close()
    text = out.getvalue()
    assert "loading t:  50%" in text and "500/1.00k [00:00<00:00" in text  # rows done/total, elapsed<ETA
    assert re.search(r"rows/s, [0-9.]+ MB/s\]", text), text
