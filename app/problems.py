"""RFC 9457 problem details: the one shape of every error the API returns, each with a stable ``code``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
"""The code of an error raised without one (e.g. Starlette's own 404 and 405)."""


class Problem(Exception):
    """An error response: raise it anywhere in a request and the handler renders problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers
        self.extra = extra

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:bdia:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        body.update(self.extra)
        return body

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.to_dict(instance), self.status, headers=self.headers, media_type=MEDIA_TYPE)


def invalid(field: str, message: str, *, code: str = "invalid_parameter", location: str = "body") -> Problem:
    """A 422 for one bad request field, with the ``errors`` list a validation failure carries."""
    return Problem(422, code, f"{field}: {message}", errors=[{"loc": [location, field], "msg": message, "type": code}])


def not_found(what: str) -> Problem:
    return Problem(404, "not_found", f"{what} does not exist (or has expired)")
