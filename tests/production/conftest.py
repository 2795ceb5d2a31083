"""Fixtures for the production tests: the service tests' real Redis and process deployments
(``bdia.jobqueue.stack``), and an in-process API (no worker needed to authenticate, limit or refuse a request)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from service.conftest import (  # noqa: F401
    REDIS_URL,
    Deployment,
    api,
    prefix,
    redis_client,
    start_deployment,
)

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
KEYS = f"alice:{ALICE},bob:{BOB}"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response, status: int, code: str | None = None) -> dict:
    """The response is RFC 9457 problem+json with ``status`` (and ``code``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status and (code is None or body["code"] == code), body
    return body


@pytest.fixture(scope="session")
def production(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:  # noqa: F811
    """The API and one worker configured as in production: two tenants' keys, webhooks, JSON logs."""
    running = start_deployment(
        redis_client,
        tmp_path_factory.mktemp("production"),
        ["prod0"],
        api_keys=KEYS,
        webhook_secret=WEBHOOK_SECRET,
        webhook_backoff_s="0.2",
        log_format="json",
        max_upload_bytes=str(2 * 1024 * 1024),
    )
    yield running
    running.close()
