"""What the cache uses when the settings leave it to the machine: its budgets and its folder.

Budgets are per executor, and `appliance up` runs several executors on one machine, so the machine's
share is split between them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from appliance.cache.disk import scan

RAM_SHARE = 0.25
DISK_SHARE = 0.5
_CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")


def ram_budget(configured: int, executors: int) -> int:
    """`configured` bytes, or a share of this machine's memory (its container's limit, if lower)."""
    if configured > 0:
        return configured
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = _CGROUP_LIMIT.read_text().strip()
        memory = min(memory, int(limit)) if limit.isdigit() else memory
    except OSError:
        pass
    return int(memory * RAM_SHARE / max(1, executors))


def disk_budget(configured: int, directory: Path, executors: int) -> int:
    """`configured` bytes, or a share of the cache disk's free space counting what this cache already holds
    (else every restart of a full cache would shrink its own budget)."""
    if configured > 0:
        return configured
    directory.mkdir(parents=True, exist_ok=True)
    held = sum(f.size for f in scan(directory))
    return int((shutil.disk_usage(directory).free + held) * DISK_SHARE / max(1, executors))


def cache_folder(configured: str, port: int) -> Path:
    """Each executor's own folder under the configured one (or the system temp folder), named by its port:
    stable across its restarts, so a restarted executor finds its NVMe tier warm."""
    base = Path(configured) if configured else Path(tempfile.gettempdir()) / "appliance-cache"
    return base / f"executor-{port}"
