"""Errors that cross module boundaries and reach clients.

Each carries the HTTP status it maps to and a short machine-readable code, so every front (the native
API now, the LanceDB-compatible one later) renders the same problem the same way, and storage or planner
code can say *what* is wrong without knowing about HTTP.
"""

from __future__ import annotations


class ApplianceError(Exception):
    status = 400
    code = "bad_request"
    retry_after: float | None = None  # seconds; sent as Retry-After so clients know to retry and when

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def to_json(self) -> dict[str, str]:
        body = {"error": self.message, "code": self.code}
        if self.detail:
            body["detail"] = self.detail
        return body


class InvalidInput(ApplianceError):
    status = 400
    code = "invalid_input"


class Unauthorized(ApplianceError):
    status = 401
    code = "unauthorized"


class Forbidden(ApplianceError):
    status = 403
    code = "forbidden"


class NotFound(ApplianceError):
    status = 404
    code = "not_found"


class Conflict(ApplianceError):
    status = 409
    code = "conflict"


class RetryableConflict(Conflict):
    """A write lost a race with other writers even after the node's own retries: safe to send again."""

    code = "write_conflict"
    retry_after = 1.0


class LimitExceeded(InvalidInput):
    """The request asks for more than a documented bound allows (k, refine_factor, a filter's cost...)."""

    code = "limit_exceeded"


class PayloadTooLarge(ApplianceError):
    status = 413
    code = "payload_too_large"


class Unavailable(ApplianceError):
    status = 503
    code = "unavailable"


class StorageUnavailable(Unavailable):
    """The table store cannot be reached or refuses us (network, bucket, credentials): the request was fine."""

    code = "storage_unavailable"


class Overloaded(Unavailable):
    """Too much concurrent work right now (writers contending, queues full): retry after a pause."""

    code = "overloaded"
    retry_after = 1.0


class DeadlineExceeded(ApplianceError):
    """The request ran past its deadline; its work was cancelled."""

    status = 504
    code = "deadline_exceeded"


class TableNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"Table '{name}' was not found")


class TableExists(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"Table '{name}' already exists")
