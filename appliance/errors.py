"""Errors that cross module boundaries and reach clients.

Each carries the HTTP status it maps to and a short machine-readable code, so every front (the native
API now, the LanceDB-compatible one later) renders the same problem the same way, and storage or planner
code can say *what* is wrong without knowing about HTTP.
"""

from __future__ import annotations


class ApplianceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

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


class PayloadTooLarge(ApplianceError):
    status = 413
    code = "payload_too_large"


class Unavailable(ApplianceError):
    status = 503
    code = "unavailable"


class TableNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"Table '{name}' was not found")


class TableExists(Conflict):
    def __init__(self, name: str) -> None:
        super().__init__(f"Table '{name}' already exists")
