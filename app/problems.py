"""RFC 9457 problem details: the one shape of every error the API returns, each with a stable ``code``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

from bdia.wire import ProblemOut

MEDIA_TYPE = "application/problem+json"

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
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


DESCRIPTIONS = {
    400: "Malformed body (`bad_request`)",
    401: "No valid API key (`unauthorized`)",
    404: "Unknown, expired or another tenant's (`not_found`)",
    409: "Not ready yet (`not_ready`), or the first request with this Idempotency-Key still runs "
    "(`idempotency_in_progress`)",
    413: "Body or image too large (`payload_too_large`, `image_too_large`)",
    415: "Wrong body media type, or an image that is not PNG, JPEG or WebP (`unsupported_media_type`)",
    422: "Invalid request, with an `errors` list (`invalid_parameter`, `invalid_image`, `gamma_unstable`, "
    "`unknown_model`, `idempotency_key_reused`, `webhooks_disabled`, `webhook_url_forbidden`)",
    429: "Too many submissions, unfinished jobs or open event streams (`rate_limited`, with Retry-After)",
    503: "Queue full (`queue_full`) or the job store unavailable (`unavailable`), with Retry-After",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the problems an operation can answer with (``document`` files their
    schema under ``application/problem+json``)."""
    return {
        status: {"model": ProblemOut, "content": {MEDIA_TYPE: {}}, "description": DESCRIPTIONS[status]}
        for status in statuses
    }


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Finish FastAPI's OpenAPI document (in place): a problem's schema moves from the route's media type
    (where FastAPI files a response model) to ``application/problem+json``, and FastAPI's own 422
    ``HTTPValidationError`` entries go (its validation errors are rendered as problems, and an operation
    lists 422 only where it can answer it)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.get("responses", {})
            for status, response in list(answers.items()):
                content = response.get("content", {})
                if MEDIA_TYPE in content and not content[MEDIA_TYPE]:
                    for media_type, entry in list(content.items()):
                        if entry.get("schema", {}).get("$ref", "").endswith("/ProblemOut"):
                            content[MEDIA_TYPE] = content.pop(media_type)
                if "HTTPValidationError" in str(content.get("application/json", {}).get("schema", {})):
                    del answers[status]
    components = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in str(schema.get("paths")):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return schema
