"""What the fleet benchmarks share: a real local fleet (1 query node, N executors on loopback) for one block.

Benchmarks load data the way the integration tests do, so this module puts `tests/` on the path and
re-exports what the tests share in `tests/conftest.py` (`Api`, `SHARED_DATA`, `load_debian`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from conftest import FRAGMENT_ROWS, SHARED_DATA, Api, free_port_block, load_debian  # noqa: E402

from appliance.config import Settings  # noqa: E402
from appliance.fleet import Fleet  # noqa: E402

__all__ = ["FRAGMENT_ROWS", "REPO", "SHARED_DATA", "Api", "CpuMeter", "fleet_processes", "free_port_block",
           "load_debian", "local_fleet", "running_fleet", "timed"]


@contextmanager
def local_fleet(work: Path, port: int, cache: str = "cache", executors: int = 2, **settings: object) -> Iterator[Api]:
    """A fleet with its data root `work/data`, its cache in folder `work/cache` and its logs in `work/logs`,
    listening on `port` (executors on the ports after it), stopped when the block ends. Extra keyword
    arguments are settings (`cache_ram_bytes=1`, `data="s3://..."`, ...)."""
    with running_fleet(work, port, cache, executors, **settings) as (api, _fleet):
        yield api


@contextmanager
def running_fleet(work: Path, port: int, cache: str = "cache", executors: int = 2,
                  **settings: object) -> Iterator[tuple[Api, Fleet]]:
    """`local_fleet`, with the `Fleet` too (its nodes' processes, for `fleet_processes`)."""
    config = Settings.load(env={}).replace(**{
        "data": str(work / "data"), "port": port, "executors": executors, "executor_base_port": port + 1,
        "cache_dir": str(work / cache), "health_interval": 0.2, "log_level": "warning", **settings})
    fleet = Fleet(config, log_dir=work / "logs")
    fleet.start()
    try:
        yield Api(fleet.url, fleet.api_key), fleet
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


# --- CPU time of processes, from /proc ---------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def fleet_processes(fleet: Fleet) -> dict[str, Callable[[], int | None]]:
    """The fleet's nodes by name ("query-0", "executor-0", ...), each as its gunicorn master's pid *now*
    (a node restarted by the supervisor has a new one)."""
    def pid_of(node) -> Callable[[], int | None]:
        return lambda: node.process.pid if node.process is not None else None
    return {node.name: pid_of(node) for node in [fleet.query, *fleet.executors]}


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, CPU seconds of its reaped children) from /proc/PID/stat: fields 4,
    14 + 15 (utime + stime) and 16 + 17 (cutime + cstime), in clock ticks."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK


def _own_seconds(pid: int, ticks: float) -> float:
    """CPU seconds of a whole process (all its threads, ended ones included), exact: its process CPU clock
    (clock_getcpuclockid's id, `((~pid) << 3) | CPUCLOCK_SCHED`). /proc/PID/stat counts in clock ticks (10 ms),
    too coarse for a backend that works 200 ms in a phase; `ticks` (that count) is the fallback."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2) / 1e9
    except OSError:
        return ticks


@dataclass
class _Proc:
    own: float  # seconds, exact
    children: float  # its reaped children's seconds (clock-tick resolution)


def _tree(root: int) -> dict[int, _Proc]:
    """root and all its descendants (a gunicorn master and its workers; a postmaster and its backends)."""
    parents: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
            parents.setdefault(st[0], []).append(int(entry.name))
    out: dict[int, _Proc] = {}
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        out[pid] = _Proc(_own_seconds(pid, stats[pid][1]), stats[pid][2])
        todo += parents.get(pid, [])
    return out


def _spent(before: dict[int, _Proc], after: dict[int, _Proc]) -> float:
    """CPU seconds a process tree spent between two snapshots: what each process spent in between (all of
    it for one that appeared in between), plus what its children that ended in between spent (reaped, they
    are counted in its `children`), less what those had spent before the first snapshot."""
    total = 0.0
    for pid, end in after.items():
        start = before.get(pid, _Proc(0.0, 0.0))
        total += (end.own - start.own) + (end.children - start.children)
    for pid, start in before.items():
        if pid not in after:  # ended in between: its parent's `children` now holds its whole life
            total -= start.own + start.children
    return max(total, 0.0)


class CpuMeter:
    """CPU seconds of named process trees, and of this process (the benchmark client), over one phase.

    `roots` maps a name to a pid or to a function giving the pid at the time of the snapshot. Use:
    `meter.start()`, the phase, then `meter.stop()` -> {name: seconds, ..., "client": seconds}."""

    CLIENT = "client"

    def __init__(self, roots: dict[str, int | Callable[[], int | None]]) -> None:
        self.roots = roots
        self._before: dict[str, dict[int, _Proc]] = {}
        self._client = 0.0

    def _snapshot(self) -> dict[str, dict[int, _Proc]]:
        out = {}
        for name, root in self.roots.items():
            pid = root() if callable(root) else root
            out[name] = _tree(pid) if pid is not None else {}
        return out

    def start(self) -> None:
        self._before = self._snapshot()
        self._client = time.process_time()

    def stop(self) -> dict[str, float]:
        client = time.process_time() - self._client
        after = self._snapshot()
        spent = {name: _spent(self._before.get(name, {}), tree) for name, tree in after.items()}
        return {**spent, self.CLIENT: client}
