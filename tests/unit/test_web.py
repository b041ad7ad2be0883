"""appliance/web.py's per-request costs: request ids without a system call each, Flask's async check once per
function."""

from __future__ import annotations

import os
import re

from flask import Flask

from appliance.web import _new_request_id, install_common, json_response


def test_request_ids_are_32_hex_digits_unique_in_a_process_and_across_a_fork() -> None:
    ids = {_new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a gunicorn worker forked from its master draws its own prefix
        os.write(write, _new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child not in ids and child[:16] != _new_request_id()[:16]


def test_a_request_without_an_id_gets_one_and_one_with_an_id_keeps_it() -> None:
    app = Flask("t")
    install_common(app, "query", 1 << 20)
    app.get("/x")(lambda: json_response({}))
    client = app.test_client()
    first, second = (client.get("/x").headers["x-request-id"] for _ in range(2))
    assert first != second and len(first) == 32
    assert client.get("/x", headers={"x-request-id": "mine"}).headers["x-request-id"] == "mine"


def test_flask_checks_each_hook_and_view_for_async_once() -> None:
    app = Flask("t")
    install_common(app, "query", 1 << 20)
    app.get("/x")(lambda: json_response({"ok": True}))
    client = app.test_client()
    for _ in range(3):
        assert client.get("/x").json == {"ok": True}
    checked = app.ensure_sync.cache_info().misses  # type: ignore[attr-defined]
    for _ in range(50):
        client.get("/x")
    info = app.ensure_sync.cache_info()  # type: ignore[attr-defined]
    assert info.misses == checked and info.hits >= 50 * 4
