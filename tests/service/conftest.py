"""Fixtures for the service tests: a real Redis (own key prefix, cleaned up), and deployments of the
API and ``tiny-random`` workers as separate processes (``bdia.jobqueue.stack``), as in production."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from bdia.app.main import create_app
from bdia.jobqueue.settings import Settings
from bdia.jobqueue.stack import LocalStack, delete_prefix, environment, free_port  # noqa: F401 (tests import them here)
from fastapi.testclient import TestClient
from PIL import Image

from bdia.client import BdiaClient

REDIS_URL = os.environ.get("BDIA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180


def make_png(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small deterministic RGB gradient PNG; different seeds give different images."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 5 + seed * 37) % 256, (y * 6 + seed * 11) % 256, (x + y + seed) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL} (start one: redis-server --port 6379)")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh key prefix for one test, deleted afterwards."""
    name = f"bdia-test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(redis_client, name)


@pytest.fixture
def api(prefix: str) -> Iterator[Callable[..., TestClient]]:
    """Make in-process APIs over this test's key prefix with any settings (webhooks not delivered)."""
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


SETTINGS = {
    "model": "tiny-random",
    "lease_s": "1.5",
    "worker_threads": "1",
    "worker_block_s": "0.2",
    "batch_size": "1",  # these tests count one running job per worker; tests/test_batching.py batches
}
"""What every test deployment runs with, unless a test says otherwise."""


class Deployment(LocalStack):
    """An API process and worker processes sharing one Redis key prefix: a ``LocalStack`` on the tests'
    Redis with ``SETTINGS``, or with ``env`` when given (replacing ``env`` changes later processes)."""

    def __init__(
        self,
        prefix: str,
        logs: Path,
        env: dict[str, str] | None = None,
        *,
        workers: list[str] | tuple[str, ...] = (),
        **settings: str,
    ) -> None:
        env = env if env is not None else deployment_env(prefix, **settings)
        redis_url = env.get("BDIA_REDIS_URL", REDIS_URL)
        super().__init__(logs, workers=workers, redis_url=redis_url, prefix=prefix, timeout_s=STARTUP_TIMEOUT_S)
        self.env = env


def deployment_env(prefix: str, **settings: str) -> dict[str, str]:
    """A test process's environment: none of this one's ``BDIA_*``, the tests' Redis, ``SETTINGS``, ``settings``."""
    return environment({"redis_url": REDIS_URL, **SETTINGS, **settings}, prefix=prefix, inherit=False)


def start_deployment(redis_client: redis.Redis, logs: Path, workers: list[str], **settings: str) -> Deployment:
    """A ready deployment with these workers under a fresh prefix; ``close()`` stops it and deletes its keys."""
    prefix = f"bdia-test-{uuid.uuid4().hex[:10]}"
    return Deployment(prefix, logs, workers=workers, **settings).start()


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
