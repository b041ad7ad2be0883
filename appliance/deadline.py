"""How long a search may run, and whether anyone still waits for it: a property of the dispatch.

Every search gets a `Deadline` when it arrives (the `search_timeout` setting, or less when the client asks
for less) and carries it through the plan: the query node stops waiting for executors when it passes, and
each task batch carries the time left (`plan.TIMEOUT_FIELD`), from which the executor makes a deadline of
its own and checks it between tasks. Time left, not a wall-clock instant, crosses the wire (as gRPC's
`grpc-timeout` does), so clocks of different hosts never need to agree; within a process the deadline is an
instant on the monotonic clock.

A deadline also carries a cancel hook: whether the party that asked is gone. On a node served by gunicorn
that is the client's socket (`client_gone`), so a client that hangs up stops its search on the query node,
and the query node's hang-up (it closes its connection to an executor when it gives up on a batch) stops
the batch on the executor. Nothing here knows about HTTP beyond that hook, so another transport (Arrow
Flight) can carry the same deadline and cancel its calls the same way.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import ApplianceError, DeadlineExceeded, InvalidInput

TIMEOUT_HEADER = "x-timeout-ms"
TIMEOUT_FIELD = "timeout_ms"


class Cancelled(ApplianceError):
    """The client went away before its answer was ready; its work was stopped (nobody reads this answer,
    the status says what happened in logs and metrics, as nginx's 499 does)."""

    status = 499
    code = "cancelled"


CANCEL_POLL_SECONDS = 0.02  # how often a deadline asks whether the party that asked is gone


def _never() -> bool:
    return False


class _Polled:
    """`gone`, asked at most once per `every` seconds, the first time `every` after the deadline is made;
    in between, the last answer. Asking can cost more than the work it guards: Flight's
    `ServerCallContext.is_cancelled` took 85 us of wall time (22 us of CPU) per call, and an executor checks
    its deadline several times per batch, so unpolled it was about half of an executor's Python samples
    under 8 clients for batches that last a millisecond. A hang-up is still seen within `every`."""

    __slots__ = ("_gone", "_every", "_next", "_seen")

    def __init__(self, gone: Callable[[], bool], every: float) -> None:
        self._gone, self._every = gone, every
        self._next = time.monotonic() + every
        self._seen = False

    def __call__(self) -> bool:
        if not self._seen and (now := time.monotonic()) >= self._next:
            self._seen = self._gone()
            self._next = now + self._every
        return self._seen


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic() after which the work is abandoned
    gone: Callable[[], bool] = field(default=_never, compare=False)  # True once nobody waits for the answer

    @classmethod
    def after(cls, seconds: float, gone: Callable[[], bool] | None = None,
              poll: float = CANCEL_POLL_SECONDS) -> Deadline:
        """`seconds` from now; `gone` is asked at most every `poll` seconds (0: at every check)."""
        if gone is not None and poll > 0:
            gone = _Polled(gone, poll)
        return cls(time.monotonic() + max(0.0, seconds), gone or _never)

    @classmethod
    def latest(cls, deadlines: Iterable[Deadline]) -> Deadline:
        """One deadline for work shared by several requests (a batch of searches): it lasts as long as the
        most patient of them, and is cancelled only once all of them are gone."""
        members = list(deadlines)
        if len(members) == 1:
            return members[0]
        return cls(max(d.at for d in members), lambda: all(d.gone() for d in members))

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check(self) -> None:
        """Raise DeadlineExceeded once the deadline has passed, Cancelled once the client is gone."""
        if self.expired():
            raise DeadlineExceeded("the search ran past its deadline and was stopped",
                                   "raise timeout_ms (at most the search_timeout setting) or ask for less work")
        if self.gone():
            raise Cancelled("the client closed the connection; the search was stopped")


def client_gone(environ: Mapping[str, Any]) -> Callable[[], bool]:
    """A check of whether the client of this request hung up, from the socket gunicorn serves it on
    (`gunicorn.socket`): a non-blocking peek that reads end-of-file means the peer closed its side. Never
    true where the socket is not reachable (another server, TLS terminated in the process)."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or type(sock) is not socket.socket:
        return _never

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # connected, nothing more sent
        except OSError:
            return True  # reset by the peer, or closed under us
    return gone


def requested(default_seconds: float, environ: Mapping[str, Any], headers: Mapping[str, str],
              body: Mapping[str, Any] | None = None) -> Deadline:
    """The deadline of a search request: `default_seconds` (the `search_timeout` setting) from now, or
    less when the client asks for less (`timeout_ms` in the body, else the `x-timeout-ms` header; whole
    milliseconds from 1 to the setting), cancelled when the client hangs up."""
    limit_ms = max(1, int(default_seconds * 1000))
    raw: Any = None
    name = TIMEOUT_FIELD
    if body is not None and body.get(TIMEOUT_FIELD) is not None:
        raw = body[TIMEOUT_FIELD]
    elif headers.get(TIMEOUT_HEADER):
        raw, name = headers[TIMEOUT_HEADER], TIMEOUT_HEADER
        try:
            raw = int(raw.strip())
        except ValueError:
            pass
    ms = limit_ms
    if raw is not None:
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= limit_ms:
            raise InvalidInput(f"{name} must be a whole number of milliseconds from 1 to {limit_ms}, got {raw!r}")
        ms = raw
    return Deadline.after(ms / 1000, client_gone(environ))
