"""The README, run top to bottom as a newcomer would: every ```bash/```sh/```console and ```python block, in
order, against a fresh fleet started the way `make run` starts it (`appliance up` in a folder of its own, data
root ./data, on free ports), so the README cannot drift from the code again.

A block that needs what a test machine may lack (Terraform, Ansible, AWS, root) or that starts the fleet
itself is marked in the README by an HTML comment on the line before it,
`<!-- readme-test: skip, covered by tests/integration/test_terraform.py -->`, and must name the test that
covers it (a test file, optionally `::test_name`), which is checked here.

The documented placeholders are filled (PLACEHOLDERS); everything else runs verbatim. Shell blocks run in
bash with `set -eo pipefail` and share their variables as one terminal would (KEY, URL, ...); `curl` fails
on an HTTP error status (`--fail-with-body`), so a broken request fails its block. Python blocks run in the
venv's Python, each in a process of its own, from the fleet's folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, free_port_block

README = REPO / "README.md"
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
NOT_RUN = {"", "text", "json", "toml", "hcl", "yaml", "ini"}  # output, configuration, file contents
MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*,(?P<reason>.*?)-->")
MAKE = re.compile(r"^(?:\$ )?\s*(?:\w+=\S*\s+)*make\b", re.M)
COVERED_BY = re.compile(r"tests/[\w/]+\.py(?:::\w+)?")
BLOCK_TIMEOUT = 240.0
# What a block that holds the key must print (stdout or stderr), so a block that runs but does nothing fails.
# Every key must still be found in a block that ran.
EXPECT = {
    "/api/v1/tables/demo/search": '"title":"east"',  # the quick start's search
    "appliance load minilm": "loaded 61,666 rows",
    "minilm.search(vim)": "vim: Vi IMproved",  # the client's nearest to vim is vim itself
    '"appliance.metric": "cosine"': "'title': 'north'",
    "result.arrow": "pyarrow.Table",  # the LanceDB protocol's Arrow answer, read back
}


@dataclass
class Block:
    lang: str
    body: str
    line: int  # of the opening fence, 1-based
    skip: str | None  # the reason given in the marker, None to run it

    def where(self) -> str:
        return f"README.md:{self.line} (```{self.lang})"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block, with the skip marker on the line before it (blank lines between allowed)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```\s*([\w-]*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence.group(1).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"README.md:{start + 1}: a fence that is never closed"
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(before)
        blocks.append(Block(lang, "\n".join(lines[start + 1:end]) + "\n", start + 1,
                            marker.group("reason").strip() if marker else None))
        i = end + 1
    return blocks


def placeholders(url: str) -> dict[str, str]:
    """What a reader substitutes, documented where the README uses it."""
    return {
        "http://127.0.0.1:8080": url,  # the fleet's URL (make run's default port)
        "../shared/data/debian-minilm": str(SHARED_DATA),  # where the data set lies, from a checkout's root
        # installs nothing: the pinned client must be the one the venv (requirements-test.txt) already holds
        ".venv/bin/pip install ": ".venv/bin/pip --disable-pip-version-check install --no-index ",
    }


def filled(body: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        body = body.replace(placeholder, value)
    return body


def console_commands(body: str) -> str:
    """The commands of a ```console block: its `$ ` lines (with their `\\` continuations), not its output."""
    out, continuing = [], False
    for line in body.splitlines():
        if line.startswith("$ ") or continuing:
            out.append(line[2:] if line.startswith("$ ") else line)
            continuing = line.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


SHELL_PRELUDE = """\
__before=$(compgen -v | sort)
curl() { command curl --fail-with-body "$@"; }
[ -f "$README_STATE" ] && source "$README_STATE"
set -eo pipefail
"""
# Variables the block set (or that earlier blocks set) pass to the next block, as in one terminal.
SHELL_EPILOGUE = """
set +e
declare -p $(comm -13 <(echo "$__before") <(compgen -v | sort) | grep -v '^__') > "$README_STATE.new" 2>/dev/null
mv "$README_STATE.new" "$README_STATE"
"""


def run_block(block: Block, body: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if block.lang in SHELL:
        script = console_commands(body) if block.lang == "console" else body
        cmd = ["bash", "-c", SHELL_PRELUDE + script + SHELL_EPILOGUE]
        stdin = None
    else:
        cmd, stdin = [str(cwd / ".venv" / "bin" / "python"), "-"], body
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{block.where()} ran past {BLOCK_TIMEOUT:.0f} s:\n{body}\n"
                             f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}") from exc


def test_skipped_blocks_name_the_test_that_covers_them() -> None:
    blocks = readme_blocks(README.read_text())
    unknown = [b.where() for b in blocks if b.lang not in SHELL | PYTHON | NOT_RUN]
    assert not unknown, f"blocks in a language this test neither runs nor knows as output: {unknown}"
    for block in blocks:
        if block.skip is None:
            continue
        assert block.lang in SHELL | PYTHON, f"{block.where()}: a skip marker on a block that would not run anyway"
        named = COVERED_BY.findall(block.skip)
        assert named, f"{block.where()}: a skipped block must name the test that covers it: {block.skip!r}"
        for ref in named:
            path, _, name = ref.partition("::")
            assert (REPO / path).is_file(), f"{block.where()}: {path} does not exist"
            if name:
                assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), \
                    f"{block.where()}: {path} has no test {name}"
    # `make` targets install venvs, start a fleet of their own, run the suite or benchmarks: never run here
    makes = [b.where() for b in blocks if b.lang in SHELL and b.skip is None and MAKE.search(b.body)]
    assert not makes, f"blocks that run make must carry a skip marker naming the test that covers them: {makes}"
    assert sum(1 for b in blocks if b.lang in SHELL | PYTHON and b.skip is None) >= 6  # the parser found them


@pytest.fixture
def newcomer(tmp_path: Path):
    """A folder as a fresh checkout would be after `make run`: the venv (linked), and `appliance up` running
    there in the foreground with its data root ./data, on free ports."""
    os.symlink(REPO / ".venv", tmp_path / ".venv")
    port = free_port_block(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env.update(APPLIANCE_PORT=str(port), APPLIANCE_EXECUTOR_BASE_PORT=str(port + 1),
               APPLIANCE_LOG_LEVEL="warning", APPLIANCE_CACHE_DIR=str(tmp_path / "cache"),
               README_STATE=str(tmp_path / ".readme-shell-state"))
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(tmp_path / ".venv" / "bin" / "appliance"), "up"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops the fleet" not in log.read_text():
            assert proc.poll() is None, f"appliance up exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"appliance up not ready in 180 s:\n{log.read_text()}"
            time.sleep(0.5)
        yield tmp_path, f"http://127.0.0.1:{port}", env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C, as make run's user stops it
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.skipif(not (SHARED_DATA / "base.npy").is_file(), reason="the debian-minilm data set is absent")
def test_readme_runs_top_to_bottom(newcomer) -> None:
    folder, url, env = newcomer
    values = placeholders(url)
    ran, seen = [], set()
    for block in readme_blocks(README.read_text()):
        if block.lang not in SHELL | PYTHON or block.skip is not None:
            continue
        assert not (block.lang in SHELL and MAKE.search(block.body)), f"{block.where()} runs make: mark it skip"
        body = filled(block.body, values)
        started = time.monotonic()
        result = run_block(block, body, folder, env)
        assert result.returncode == 0, (
            f"{block.where()} failed (exit {result.returncode}):\n{body}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
        ran.append(f"{block.where()} {time.monotonic() - started:.1f}s")
        for key, printed in EXPECT.items():
            if key in block.body:
                seen.add(key)
                assert printed in result.stdout + result.stderr, (
                    f"{block.where()} did not print {printed!r}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    print("\n".join(ran), file=sys.stderr)
    assert len(ran) >= 6
    assert seen == set(EXPECT), f"no block holds {sorted(set(EXPECT) - seen)} any more: update EXPECT"
