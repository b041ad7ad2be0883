"""Writes one benchmark's section of docs/BENCHMARKS.md, leaving the other sections as they are.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; a run replaces its
own section (adding it at the end the first time), so benchmarks can be run one at a time.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nWritten by `make bench` (each script rewrites only its own section).\n"


def machine_line() -> str:
    """The machine, for the reader to judge the figures: CPU model, cores, memory, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    today = datetime.date.today().isoformat()
    return f"Machine: {cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM; Python {platform.python_version()}; {today}."


def load_average(load: tuple[float, float, float] | None = None) -> str:
    """The 1/5/15-minute load averages (now, or `load` from os.getloadavg()), as "1.2/0.9/0.7"."""
    return "/".join(f"{x:.1f}" for x in (load or os.getloadavg()))


def write_section(name: str, markdown: str, path: Path = BENCHMARKS) -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
