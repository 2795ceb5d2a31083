"""Fixtures of the end-to-end tests: deployments of the API and ``tiny-random`` workers as separate
processes on the real Redis, as in production."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from support import KEYS, WEBHOOK_SECRET, Deployment, start_deployment

from bdia.client import BdiaClient


@pytest.fixture(scope="session")
def deployment(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The shared deployment: the API and two ``tiny-random`` workers (``test_recovery`` kills one)."""
    running = start_deployment(redis_client, tmp_path_factory.mktemp("deployment"), ["w0", "w1"])
    yield running
    running.close()


@pytest.fixture
def client(deployment: Deployment) -> Iterator[BdiaClient]:
    with BdiaClient(deployment.url, timeout=30) as c:
        yield c


@pytest.fixture
def http(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def production(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
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
