"""Fixtures every layer shares: the tiny random model, a test image, the real Redis (a fresh key prefix
per test, deleted afterwards) and in-process APIs over it. Helpers that are not fixtures: ``support``."""

from __future__ import annotations

import os

# Tiny models run fastest on one thread, and worker processes started by tests inherit the
# setting, so every process computes with the same numerics fingerprint.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import uuid
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image
from support import REDIS_URL, announce_models, delete_prefix, model_record

from bdia.app.main import create_app
from bdia.jobqueue.settings import Settings


@pytest.fixture(scope="session")
def tiny_model():
    import bdia

    model = bdia.load_model("tiny-random", device="cpu")
    bdia.configure_determinism(model)  # exact mode's flags, set once as the CLI and the worker do
    return model


@pytest.fixture(scope="session")
def test_image() -> Image.Image:
    """A deterministic 64×48 RGB image with structure at several scales (not the model's size)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:48, 0:64]
    base = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.float64)
    base[10:30, 20:40] = [220, 40, 40]
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, "RGB")


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
    """Make in-process APIs over this test's key prefix with any settings (webhooks not delivered).

    There is no worker, so the served models are announced in the model registry as a ``tiny-random``
    worker would announce them (``announced``: only these names), else every request would get 503
    ``model_unavailable``."""
    clients: list[TestClient] = []

    def make(announced: Iterable[str] | None = None, **overrides: object) -> TestClient:
        settings = Settings(**{"redis_url": REDIS_URL, "key_prefix": prefix, "api_webhooks": False, **overrides})
        names = settings.served_models if announced is None else announced
        announce_models(settings, [model_record(name) for name in names])
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
