"""gunicorn responses sent in one socket write: the header block goes out with the first body bytes.

gunicorn's `Response.write` sends the status line and headers with one `sendall` and each body chunk with
another, so a small JSON answer costs two system calls (with the socket's timeout, two polls as well). In the
query node's profile under load that second write was 13-16% of its CPU (docs/BENCHMARKS.md, "Query node
profile"). Here `send_headers` keeps the header bytes, and they leave with the first body chunk; a response
that never writes a body (HEAD, 204, 304, an empty body) or that gunicorn sends with sendfile gets them at
close or before the file, as before. Chunked responses are left to gunicorn's own framing.

`install()` swaps the class gunicorn's `wsgi.create` builds; the launcher's gunicorn hooks call it in the
master before it forks its workers (appliance/gunicorn_hooks.py). It also makes gunicorn's `Date` header
once per second instead of once per response (`email.utils.formatdate`, 1.5% of the query node's
Python samples under 8 clients).
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.util import to_bytestring

_format_date = util.http_date
_date: tuple[int, str] = (0, "")  # (second, its Date header value), replaced whole


def http_date(timestamp: float | None = None) -> str:
    """gunicorn's `util.http_date`, made once per second for the current time."""
    global _date
    if timestamp is not None:
        return _format_date(timestamp)
    now = int(time.time())
    second, text = _date
    if second != now:
        text = _format_date(now)
        _date = (now, text)
    return text


class OneWriteResponse(wsgi.Response):
    _pending: bytes | None = None

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        if self.chunked:  # framing per chunk: gunicorn's own path
            super().send_headers()
            return
        tosend = self.default_headers()
        tosend.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._pending = to_bytestring("".join(tosend) + "\r\n", "latin-1")
        self.headers_sent = True

    def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.sock.sendall(pending)

    def _emit_body(self, data: bytes) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.sock.sendall(pending + data)
            return
        super()._emit_body(data)

    def sendfile(self, respiter: Any) -> bool:
        self.send_headers()
        self._flush()
        return super().sendfile(respiter)

    def close(self) -> None:
        self.send_headers()
        self._flush()
        super().close()


def install() -> None:
    """Make gunicorn build OneWriteResponse for every request of this process and the workers it forks."""
    wsgi.Response = OneWriteResponse  # type: ignore[misc]
    util.http_date = http_date  # wsgi.Response.default_headers calls it as util.http_date()
