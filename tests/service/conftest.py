"""Fixtures for the service tests: a real Redis (own key prefix, cleaned up), and deployments of the
API and ``tiny-random`` workers as separate processes, as in production."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from bdia.client import BdiaClient
from bdia.app.demo import free_port
from bdia.jobqueue.keys import Keys
from bdia.app.main import create_app
from bdia.jobqueue.settings import Settings

REDIS_URL = os.environ.get("BDIA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 180


def make_png(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    """A small deterministic RGB gradient PNG; different seeds give different images."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [((x * 5 + seed * 37) % 256, (y * 6 + seed * 11) % 256, (x + y + seed) % 256) for y in range(height)
         for x in range(width)]
    )  # fmt: skip
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=Keys(prefix).pattern, count=1000))
    if keys:
        client.delete(*keys)


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


@dataclass
class Deployment:
    """An API process and worker processes sharing one Redis key prefix."""

    prefix: str
    logs: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    api: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the process owns it)
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_api(self) -> None:
        self.api = self._spawn("api", ["-c", f"from bdia.app.main import serve; serve('127.0.0.1', {self.port})"])

    def start_worker(self, name: str) -> subprocess.Popen:
        self.workers[name] = self._spawn(name, ["-m", "bdia.workers", "--name", name])
        return self.workers[name]

    def wait_ready(self, workers: int) -> None:
        """Until the API answers and ``workers`` workers have a heartbeat."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in [("api", self.api), *self.workers.items()]:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=2)
                if ready.status_code == 200 and sum(ready.json()["workers"].values()) >= workers:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"deployment not ready: {self.log('api')}")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill_worker(self, name: str) -> None:
        process = self.workers.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        processes = [*self.workers.values(), *([self.api] if self.api else [])]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def deployment_env(prefix: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDIA_")}
    env.update(
        BDIA_REDIS_URL=REDIS_URL,
        BDIA_KEY_PREFIX=prefix,
        BDIA_MODEL="tiny-random",
        BDIA_LEASE_S="1.5",
        BDIA_WORKER_THREADS="1",
        BDIA_WORKER_BLOCK_S="0.2",
        BDIA_BATCH_SIZE="1",  # these tests count one running job per worker; tests/test_batching.py batches
        PYTHONUNBUFFERED="1",
    )
    env.update({f"BDIA_{k.upper()}": v for k, v in settings.items()})
    return env


def start_deployment(redis_client: redis.Redis, logs: Path, workers: list[str], **settings: str) -> Deployment:
    prefix = f"bdia-test-{uuid.uuid4().hex[:10]}"
    logs.mkdir(parents=True, exist_ok=True)
    deployment = Deployment(prefix, logs, deployment_env(prefix, **settings))
    for name in workers:
        deployment.start_worker(name)
    deployment.start_api()
    try:
        deployment.wait_ready(len(workers))
    except BaseException:
        deployment.stop()
        delete_prefix(redis_client, prefix)
        raise
    return deployment


@pytest.fixture(scope="session")
def deployment(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The shared deployment: the API and two ``tiny-random`` workers (``test_recovery`` kills one)."""
    running = start_deployment(redis_client, tmp_path_factory.mktemp("deployment"), ["w0", "w1"])
    yield running
    running.stop()
    delete_prefix(redis_client, running.prefix)


@pytest.fixture
def client(deployment: Deployment) -> Iterator[BdiaClient]:
    with BdiaClient(deployment.url, timeout=30) as c:
        yield c


@pytest.fixture
def http(deployment: Deployment) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=deployment.url, timeout=30) as c:
        yield c
