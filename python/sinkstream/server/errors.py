"""OpenAI-style errors: every failure a client can cause is a 4xx with
``{"error": {"message", "type", "param", "code"}}``, never a 500 or a crash."""
from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error response: HTTP status and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized() -> APIError:
    return APIError(401, "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def not_found(message: str, code: str = "not_found") -> APIError:
    return APIError(404, message, code=code)


def too_many(message: str) -> APIError:
    """The server is at a limit (queue, sessions, memory): retry later (OpenAI's rate-limit status)."""
    return APIError(429, message, type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})


def timeout(message: str) -> APIError:
    return APIError(408, message, type="timeout_error", code="timeout")


def unavailable(message: str) -> APIError:
    return APIError(503, message, type="server_error", code="shutting_down")
