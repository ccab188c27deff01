"""The one error type of the service: an HTTP status, a short machine-readable reason (also
the ``reason`` label of the errors metric) and a message for a person."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": self.reason, "detail": self.message, "status": self.status}
