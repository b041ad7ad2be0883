"""What the fleet benchmarks share: a real local fleet (1 query node, N executors on loopback) for one block.

Benchmarks load data the way the integration tests do, so this module puts `tests/` on the path and
re-exports what the tests share in `tests/conftest.py` (`Api`, `SHARED_DATA`, `load_debian`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from conftest import FRAGMENT_ROWS, SHARED_DATA, Api, free_port_block, load_debian  # noqa: E402

from appliance.config import Settings  # noqa: E402
from appliance.fleet import Fleet  # noqa: E402

__all__ = ["FRAGMENT_ROWS", "REPO", "SHARED_DATA", "Api", "free_port_block", "load_debian", "local_fleet", "timed"]


@contextmanager
def local_fleet(work: Path, port: int, cache: str = "cache", executors: int = 2, **settings: object) -> Iterator[Api]:
    """A fleet with its data root `work/data`, its cache in folder `work/cache` and its logs in `work/logs`,
    listening on `port` (executors on the ports after it), stopped when the block ends. Extra keyword
    arguments are settings (`cache_ram_bytes=1`, `data="s3://..."`, ...)."""
    config = Settings.load(env={}).replace(**{
        "data": str(work / "data"), "port": port, "executors": executors, "executor_base_port": port + 1,
        "cache_dir": str(work / cache), "health_interval": 0.2, "log_level": "warning", **settings})
    fleet = Fleet(config, log_dir=work / "logs")
    fleet.start()
    try:
        yield Api(fleet.url, fleet.api_key)
    finally:
        fleet.stop()


def timed(api: Api, queries: np.ndarray) -> np.ndarray:
    """Milliseconds of each query, one request each, as a client sends them."""
    ms = []
    for q in queries:
        started = time.perf_counter()
        api.search("debian", q, k=10)
        ms.append((time.perf_counter() - started) * 1000)
    return np.array(ms)
