"""Shared fixtures: a real fleet (gunicorn processes on loopback) and a small HTTP client for it."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests
from s3_support import S3Endpoint, start_moto

from appliance.config import Settings
from appliance.fleet import Fleet
from appliance.storage.schema import vector_type

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "debian-minilm"


FLIGHT_OFFSET = Settings.load(env={}).flight_port_offset
# Work spread over every executor, one routing group per partition or fragment, as before routing groups:
# for tests of what happens to the executors a search uses (failover, hedging, drain, blame).
SPREAD_WORK = {"partition_group_bytes": 1, "fanout_min_bytes": 0}


def free_port_block(n: int) -> int:
    """The first of n consecutive free loopback ports (executors take consecutive ports), whose Arrow Flight
    ports (each + flight_port_offset) are free too. Below the kernel's range of ports for outgoing
    connections (32768 and up), where a free port can be taken by a client between the check and the bind."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - n - FLIGHT_OFFSET)
        socks = []
        try:
            for port in [*range(base, base + n), *range(base + FLIGHT_OFFSET, base + n + FLIGHT_OFFSET)]:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports found")


def exact_ids(base: np.ndarray, q: np.ndarray, metric: str, k: int, mask: np.ndarray | None = None) -> list[int]:
    """The reference answer: row numbers of the k nearest rows of `base` (those `mask` keeps) in float64,
    ties by row number, by the metric definitions of Lance."""
    b, q = base.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        d = ((b - q) ** 2).sum(1)
    elif metric == "cosine":
        d = 1 - b @ q / (np.linalg.norm(b, axis=1) * np.linalg.norm(q))
    else:
        d = 1 - b @ q
    order = [i for i in sorted(range(len(b)), key=lambda i: (d[i], i)) if mask is None or mask[i]]
    return order[:k]


class SearchLoad:
    """Clients searching a table in a loop (one thread each) and checking every answer, so a test can break
    the fleet underneath and then assert that no query failed."""

    def __init__(self, url: str, key: str, table: str, queries: np.ndarray, expected: list[list[int]],
                 clients: int = 1) -> None:
        self._url, self._key, self._table = url, key, table
        self._queries, self._expected = queries, expected
        self.failures: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> SearchLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        session = requests.Session()
        session.headers["x-api-key"] = self._key
        k = len(self._expected[0])
        i = 0
        while not self._stop.is_set():
            q = i % len(self._queries)
            resp = session.post(f"{self._url}/api/v1/tables/{self._table}/search",
                                json={"vector": self._queries[q].tolist(), "k": k}, timeout=30)
            if resp.status_code != 200:
                self.failures.append(f"{resp.status_code} {resp.text}")
            elif [r["n"] for r in resp.json()["results"]] != self._expected[q]:
                self.failures.append(f"wrong answer for query {q}")
            self.answered += 1
            i += 1


class Api:
    """A thin client of the native API, so tests read as what a user does."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self.http = requests.Session()
        self.http.headers["x-api-key"] = key

    def post(self, path: str, body: object = None) -> requests.Response:
        """POST JSON; NaN and Infinity are written as JavaScript literals, as careless clients do."""
        return self.http.post(self.url + path, data=json.dumps(body), timeout=60,
                              headers={"content-type": "application/json"})

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.url + path, timeout=60)

    def create(self, name: str, dimension: int, metric: str = "l2", schema: dict | None = None) -> dict:
        resp = self.post("/api/v1/tables", {"name": name, "dimension": dimension, "metric": metric,
                                            "schema": schema or {}})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def insert(self, name: str, rows: list[dict]) -> dict:
        resp = self.post(f"/api/v1/tables/{name}/rows", {"rows": rows})
        assert resp.status_code == 200, resp.text
        return resp.json()

    def insert_arrow(self, name: str, table: pa.Table) -> dict:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        resp = self.http.post(f"{self.url}/api/v1/tables/{name}/rows", data=sink.getvalue().to_pybytes(),
                              headers={"content-type": "application/vnd.apache.arrow.stream"}, timeout=120)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def search(self, name: str, vector: list[float] | np.ndarray, k: int = 10, **extra: object) -> list[dict]:
        body = {"vector": np.asarray(vector, dtype=float).tolist(), "k": k, **extra}
        resp = self.post(f"/api/v1/tables/{name}/search", body)
        assert resp.status_code == 200, resp.text
        return resp.json()["results"]


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


def start_fleet(data_root: Path | str, log_dir: Path, executors: int = 2, **settings: object) -> Fleet:
    base_port = free_port_block(executors + 1)
    settings = Settings.load(env={}).replace(
        data=str(data_root), port=base_port, executors=executors, executor_base_port=base_port + 1,
        health_interval=0.2, log_level="warning", **settings,
    )
    fleet = Fleet(settings, log_dir=log_dir)
    fleet.start()
    return fleet


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets `STORAGE_BACKENDS = ["local", "s3"]` runs its fleet tests once per storage root."""
    if "storage" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "STORAGE_BACKENDS", ["local"])
        metafunc.parametrize("storage", backends, indirect=True, scope="module")


@pytest.fixture(scope="session", autouse=True)
def started_with_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Background work a module would otherwise wait for, started as the session starts: each selected module
    with a `start_with_session(request, tmp_path_factory)` function starts its own (test_terraform: the AWS
    apply against moto, minutes of the provider's waits) and returns what stops what its fixtures did not take
    over, or None."""
    stops = []
    for module in dict.fromkeys(item.module for item in request.session.items if hasattr(item, "module")):
        start = getattr(module, "start_with_session", None)
        if start is not None:
            try:
                stops.append(start(request, tmp_path_factory))
            except Exception as exc:  # noqa: BLE001 - the module starts its own then, and says what failed
                warnings.warn(f"{module.__name__}: start_with_session failed: {exc!r}", stacklevel=1)
    yield
    for stop in stops:
        if stop is not None:
            stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """moto's S3 server on loopback, shared by the session."""
    port = free_port_block(1)
    server = start_moto(port)
    yield S3Endpoint(f"http://127.0.0.1:{port}")
    server.stop()


def build_wheel(tmp: Path, version: str, broken: bool = False) -> Path:
    """A wheel of the working tree with another version string (and, broken, nodes that cannot start)."""
    src = tmp / f"src-{version}"
    for part in ("appliance", "kernels"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(REPO / name, src / name)
    init = src / "appliance" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))
    pyproject = src / "pyproject.toml"
    pyproject.write_text(re.sub(r'(?m)^version = "[^"]+"', f'version = "{version}"', pyproject.read_text()))
    if broken:
        for app in ("query/app.py", "executor/app.py"):
            path = src / "appliance" / app
            text = path.read_text()
            head = "def create_app(settings: Settings | None = None) -> Flask:\n"
            assert head in text
            path.write_text(text.replace(head, head + '    raise RuntimeError("deliberately broken release")\n'))
    out = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True, capture_output=True)
    (wheel,) = out.glob(f"vector_appliance-{version}-*.whl")
    return wheel


@pytest.fixture(scope="session")
def release_wheel(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build_wheel(version, broken), each wheel built once per session: the Ansible tests of several modules
    install the same releases."""
    tmp = tmp_path_factory.mktemp("release-wheels")
    built: dict[tuple[str, bool], Path] = {}

    def wheel(version: str, broken: bool = False) -> Path:
        if (version, broken) not in built:
            built[version, broken] = build_wheel(tmp, version, broken)
        return built[version, broken]

    return wheel

@pytest.fixture(scope="module")
def storage(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "local")


def storage_settings(storage: str, root: Path, request: pytest.FixtureRequest) -> dict[str, object]:
    """Settings that put a fleet's tables on `storage`: a local folder, or a fresh bucket on moto (with the
    event queue in a local SQLite file, since the default queue needs a local root)."""
    if storage == "local":
        return {"data": str(root / "data")}
    s3: S3Endpoint = request.getfixturevalue("s3")
    return {"data": f"s3://{s3.new_bucket()}/appliance", "storage_options": s3.storage_options,
            "events": f"sqlite://{root / 'events.sqlite'}"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, storage: str, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """A real fleet of 1 query node and 2 executors, shared by one test module, on `storage`."""
    root = tmp_path_factory.mktemp(f"fleet-{storage}")
    settings = storage_settings(storage, root, request)
    f = start_fleet(settings.pop("data"), root / "logs", **settings)
    yield f
    # The module's tests are done with it and nothing is in flight: no grace (a node's graceful exit takes 1-3 s,
    # mostly gthread's 1 s poll; killed, it leaves nothing behind: appliance/node_state.py).
    f.stop(grace=0)


@pytest.fixture(scope="module")
def api(fleet: Fleet) -> Api:
    return Api(fleet.url, fleet.api_key)


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


FRAGMENT_ROWS = 8192


def load_debian(api: Api) -> None:
    """The shared base set as table `debian` (column `row` = its row in base.npy), one fragment per
    FRAGMENT_ROWS rows, through the HTTP API; the fleet benchmarks load it the same way."""
    base = np.load(SHARED_DATA / "base.npy")
    api.create("debian", base.shape[1], "cosine", {"row": "int64"})
    for start in range(0, len(base), FRAGMENT_ROWS):
        chunk = base[start:start + FRAGMENT_ROWS]
        api.insert_arrow("debian", pa.table({
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), base.shape[1]).cast(
                vector_type(base.shape[1])),
            "row": np.arange(start, start + len(chunk)),
        }))
