"""Fixtures for the production tests: the service tests' real Redis and process deployments, and an
in-process API (no worker needed to authenticate, limit or refuse a request)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from service.conftest import REDIS_URL, prefix, redis_client  # noqa: F401 (fixtures)

from app.main import create_app
from app.settings import Settings

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef"
KEYS = f"alice:{ALICE},bob:{BOB}"


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


@pytest.fixture
def api(prefix: str) -> Iterator[Callable[..., TestClient]]:  # noqa: F811
    """Make an in-process API over this test's key prefix with any settings (webhooks not delivered)."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = Settings(**{"redis_url": REDIS_URL, "key_prefix": prefix, "api_webhooks": False, **overrides})
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
