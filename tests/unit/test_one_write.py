"""appliance/one_write.py: a gunicorn response's header block leaves with its first body bytes, in one write,
and every response still reaches the wire whole (no body, several chunks, chunked framing, sendfile)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi

from appliance.one_write import OneWriteResponse


class Sock:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def sendfile(self, f, offset: int = 0, count: int | None = None) -> None:
        f.seek(offset)
        self.writes.append(f.read(count))


def respond(cls: type, status: str, headers: list[tuple[str, str]], body: list[bytes], method: str = "GET"
            ) -> list[bytes]:
    sock = Sock()
    req = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False, headers=[])
    resp = cls(req, sock, Config())
    resp.start_response(status, headers)
    for chunk in body:
        resp.write(chunk)
    resp.close()
    return sock.writes


def split(wire: bytes) -> tuple[str, bytes]:
    head, _, body = wire.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_a_small_answer_is_one_write() -> None:
    writes = respond(OneWriteResponse, "200 OK", [("Content-Type", "application/json"), ("Content-Length", "8")],
                     [b'{"a": 1}'])
    assert len(writes) == 1
    head, body = split(writes[0])
    assert head.startswith("HTTP/1.1 200 OK") and "Content-Length: 8" in head and body == b'{"a": 1}'


@pytest.mark.parametrize(("status", "method", "headers", "body"), [
    ("200 OK", "GET", [("Content-Length", "8")], [b'{"a": 1}']),
    ("200 OK", "GET", [("Content-Length", "6")], [b"abc", b"def"]),
    ("204 No Content", "GET", [], []),
    ("200 OK", "HEAD", [("Content-Length", "8")], []),
    ("200 OK", "GET", [("Content-Length", "0")], [b""]),
    ("200 OK", "GET", [], [b"stream", b"ed"]),  # no length on HTTP/1.1: chunked
])
def test_the_bytes_on_the_wire_are_gunicorns(status: str, method: str, headers: list, body: list) -> None:
    ours = b"".join(respond(OneWriteResponse, status, headers, body, method))
    theirs = b"".join(respond(wsgi.Response, status, headers, body, method))
    strip_date = lambda wire: [line for line in wire.split(b"\r\n") if not line.startswith(b"Date:")]  # noqa: E731
    assert strip_date(ours) == strip_date(theirs)


def test_sendfile_gets_the_headers_first(tmp_path) -> None:
    path = tmp_path / "f.js"
    path.write_bytes(b"console.log(1)")
    sock = Sock()
    req = SimpleNamespace(version=(1, 1), method="GET", should_close=lambda: False, headers=[])
    resp = OneWriteResponse(req, sock, Config())
    resp.start_response("200 OK", [("Content-Length", str(os.path.getsize(path)))])
    with open(path, "rb") as f:
        resp.write_file(SimpleNamespace(filelike=f, __iter__=lambda: iter(())))
    resp.close()
    head, _ = split(sock.writes[0])
    assert head.startswith("HTTP/1.1 200 OK") and sock.writes[1:] == [b"console.log(1)"]


APP = """
from gunicorn.http import wsgi

def app(environ, start_response):
    body = wsgi.Response.__name__.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def test_the_launchers_gunicorn_hooks_install_it_in_every_worker(tmp_path) -> None:
    import subprocess
    import sys
    import time

    import requests

    from appliance.launch import gunicorn_node_args
    from tests.conftest import free_port_block

    (tmp_path / "probe_app.py").write_text(APP)
    port = free_port_block(1)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", *gunicorn_node_args(),  # as the launcher does
                             "--pythonpath", str(tmp_path), "-b", f"127.0.0.1:{port}", "-w", "1", "probe_app:app"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).content == b"OneWriteResponse"
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_date_header_is_made_once_per_second(monkeypatch) -> None:
    import email.utils

    from appliance import one_write
    made: list[float] = []
    monkeypatch.setattr(one_write, "_format_date", lambda t: made.append(t) or email.utils.formatdate(t, usegmt=True))
    monkeypatch.setattr(one_write, "_date", (0, ""))
    first = one_write.http_date()
    for _ in range(100):
        assert one_write.http_date() in (first, one_write._date[1])
    assert 1 <= len(made) <= 2  # once, or twice if a second turned meanwhile
    assert first == email.utils.formatdate(made[0], usegmt=True)
    assert one_write.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"  # an explicit time is formatted as asked
