"""Hashed API keys from a file: each listed key works, the generated key still works, anything else is 401,
and the file never holds a key in the clear."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import start_fleet

from appliance.query.auth import read_key_hashes


def test_keys_from_a_hashed_file_are_accepted(tmp_path: Path) -> None:
    appliance = str(Path(sys.executable).with_name("appliance"))
    lines = [subprocess.run([appliance, "hash-key", key], capture_output=True, text=True, check=True).stdout.strip()
             for key in ("team-a-key", "team-b-key")]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# retrieval team\n{lines[0]} team-a\n\n{lines[1]} team-b\n")
    assert "team-a-key" not in keys_file.read_text()

    fleet = start_fleet(tmp_path / "data", tmp_path / "logs", api_keys_file=str(keys_file))
    try:
        def status(key: str | None) -> int:
            headers = {"x-api-key": key} if key is not None else {}
            return requests.get(f"{fleet.url}/api/v1/tables", headers=headers, timeout=30).status_code

        assert status("team-a-key") == 200
        assert status("team-b-key") == 200
        assert status(fleet.api_key) == 200
        assert status("team-c-key") == 401
        assert status(lines[0]) == 401  # the hash itself is not a key
        assert status(None) == 401
    finally:
        fleet.stop()


def test_a_malformed_keys_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "keys.txt"
    bad.write_text("sha256:" + "ab" * 32 + "\nplaintext-key\n")
    with pytest.raises(ValueError, match=r"keys\.txt:2"):
        read_key_hashes(str(bad))
