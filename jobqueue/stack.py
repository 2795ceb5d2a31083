"""A whole service on this machine: Redis, the API and named workers as child processes.

Used by ``bdia demo``, the service tests and the benchmarks::

    with LocalStack("out/logs", {"model": "tiny-random"}, workers=["w0", "w1"]) as stack:
        httpx.get(f"{stack.url}/readyz")
        stack.kill_worker("w1")

Redis is the one at ``redis_url``, else at ``$BDIA_REDIS_URL``, else a private ``redis-server`` on a
free port (``RedisMissing`` when there is none to start). Every process gets its own session (Ctrl-C
reaches only the parent) and logs to ``<logs>/<name>.log``. Torch-free and FastAPI-free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import httpx
import redis

from bdia.jobqueue.keys import Keys

REDIS_HELP = """\
redis-server is not installed, and BDIA_REDIS_URL is not set.
Install Redis and try again:
    Debian/Ubuntu:  sudo apt-get install redis-server
    Fedora:         sudo dnf install redis
    macOS:          brew install redis
or point BDIA_REDIS_URL at a running Redis (e.g. BDIA_REDIS_URL=redis://127.0.0.1:6379/0)."""
RESERVED = ("api", "redis")
"""Process names that are not worker names (their logs are ``api.log`` and ``redis.log``)."""


class RedisMissing(RuntimeError):
    """No Redis URL was given or set, and there is no ``redis-server`` to start."""

    def __init__(self, message: str = REDIS_HELP) -> None:
        super().__init__(message)


class StackFailed(RuntimeError):
    """A process of the stack exited, or the stack was not ready in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix``; returns how many there were."""
    keys = list(client.scan_iter(match=Keys(prefix).pattern, count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    return len(keys)


def environment(
    settings: Mapping[str, object] | None = None,
    *,
    prefix: str | None = None,
    redis_url: str | None = None,
    inherit: bool = True,
) -> dict[str, str]:
    """A child's environment: this one (without its ``BDIA_*`` unless ``inherit``), ``settings`` as
    ``BDIA_<NAME>`` (``{"batch_size": 4}`` → ``BDIA_BATCH_SIZE=4``), then the key prefix and Redis URL."""
    env = {k: v for k, v in os.environ.items() if inherit or not k.startswith("BDIA_")}
    env["PYTHONUNBUFFERED"] = "1"  # logs reach their files as they are written
    env.update({f"BDIA_{name.upper()}": str(value) for name, value in (settings or {}).items()})
    if prefix is not None:
        env["BDIA_KEY_PREFIX"] = prefix
    if redis_url is not None:
        env["BDIA_REDIS_URL"] = redis_url
    return env


class LocalStack:
    """The API on ``url`` and named workers, sharing one Redis and one key prefix.

    ``settings`` become ``BDIA_*`` variables of every process (``env``, which may be changed before a
    process starts). ``start()`` (or ``with``) starts Redis when needed, the workers and the API, and
    waits until they are ready; ``close()`` (or leaving ``with``) stops them, stops a private Redis
    and, unless ``delete_keys`` is false, deletes the prefix's keys from a shared one.
    """

    def __init__(
        self,
        logs: str | Path,
        settings: Mapping[str, object] | None = None,
        *,
        workers: Iterable[str] = ("worker",),
        redis_url: str | None = None,
        prefix: str | None = None,
        inherit: bool = True,
        delete_keys: bool = True,
        timeout_s: float = 600.0,
    ) -> None:
        self.logs = Path(logs)
        self.prefix = prefix or f"bdia-stack-{uuid.uuid4().hex[:10]}"
        self.redis_url = redis_url or os.environ.get("BDIA_REDIS_URL") or None
        self.env = environment(settings, prefix=self.prefix, redis_url=self.redis_url, inherit=inherit)
        self.port = free_port()
        self.worker_names = list(workers)
        self.delete_keys = delete_keys
        self.timeout_s = timeout_s
        self.redis_server: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def private_redis(self) -> bool:
        """Whether Redis is a ``redis-server`` of this stack's own."""
        return self.redis_server is not None

    def start(self, *, wait: bool = True) -> LocalStack:
        """Start Redis when needed, the workers and the API; with ``wait``, until they are ready.
        On any failure (or Ctrl-C) everything started is closed again."""
        try:
            self.start_redis()
            for name in self.worker_names:
                self.start_worker(name)
            self.start_api()
            if wait:
                self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def start_redis(self) -> str:
        """Check the Redis at ``redis_url`` answers, or start a private one; returns its URL."""
        if self.redis_url is not None:
            with redis.Redis.from_url(self.redis_url, socket_connect_timeout=5) as client:
                try:
                    client.ping()
                except redis.ConnectionError as exc:
                    raise StackFailed(f"no Redis answers at {self.redis_url}: {exc}") from None
            return self.redis_url
        server = shutil.which("redis-server")
        if server is None:
            raise RedisMissing
        port = free_port()
        url = f"redis://127.0.0.1:{port}/0"
        command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.redis_server = self._spawn("redis", command, dict(os.environ))
        deadline = time.monotonic() + 20
        with redis.Redis.from_url(url) as client:
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if self.redis_server.poll() is not None or time.monotonic() > deadline:
                        raise StackFailed(f"redis-server did not start{self._tail('redis')}") from None
                    time.sleep(0.05)
        self.redis_url = self.env["BDIA_REDIS_URL"] = url
        return url

    def start_api(self) -> subprocess.Popen:
        """Start the API (``python -m bdia.app``) on ``port``; it logs to ``api.log``."""
        command = [sys.executable, "-m", "bdia.app", "--host", "127.0.0.1", "--port", str(self.port)]
        self.api = self._spawn("api", command, self.env)
        return self.api

    def start_worker(self, name: str) -> subprocess.Popen:
        """Start a worker (``python -m bdia.workers --name NAME``); it logs to ``NAME.log``."""
        if name in RESERVED:
            raise ValueError(f"{name!r} names a process of the stack, not a worker")
        self.workers[name] = self._spawn(name, [sys.executable, "-m", "bdia.workers", "--name", name], self.env)
        return self.workers[name]

    def wait_ready(self, workers: int | None = None, timeout_s: float | None = None) -> None:
        """Until ``/readyz`` counts ``workers`` live workers (default: as many as were started); with 0,
        until the API answers ``/healthz``. Raises ``StackFailed`` as soon as a process exits."""
        workers = len(self.workers) if workers is None else workers
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            self._check_alive()
            try:
                if workers == 0:
                    if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        return
                else:
                    ready = httpx.get(f"{self.url}/readyz", timeout=2)
                    if ready.status_code == 200 and sum(ready.json()["workers"].values()) >= workers:
                        return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise StackFailed(f"not ready with {workers} worker(s) after {limit:g} s{self._tail('api')}")
            time.sleep(0.2)

    def kill_worker(self, name: str) -> subprocess.Popen:
        """SIGKILL the worker (no shutdown of its own) and forget it."""
        process = self.workers.pop(name)
        _signal(process, signal.SIGKILL)
        process.wait(10)
        return process

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the workers and the API, then SIGKILL what is still running after ``timeout_s``.
        Redis keeps running (``close()`` stops a private one)."""
        processes = [*self.workers.values(), *([self.api] if self.api is not None else [])]
        for process in processes:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()

    def close(self) -> None:
        """Stop everything; stop a private Redis, or delete the prefix's keys from a shared one."""
        try:
            self.stop()
        finally:
            if self.redis_server is not None:
                _signal(self.redis_server, signal.SIGTERM)
                try:
                    self.redis_server.wait(10)
                except subprocess.TimeoutExpired:
                    _signal(self.redis_server, signal.SIGKILL)
                    self.redis_server.wait()
                self.redis_server = None
            elif self.delete_keys and self.redis_url is not None:
                with redis.Redis.from_url(self.redis_url) as client, contextlib.suppress(redis.ConnectionError):
                    delete_prefix(client, self.prefix)

    def log(self, name: str, chars: int = 3000) -> str:
        """The last ``chars`` characters of a process's log (``api``, ``redis`` or a worker's name)."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _check_alive(self) -> None:
        named = [("redis", self.redis_server), ("api", self.api), *self.workers.items()]
        for name, process in named:
            if process is not None and process.poll() is not None:
                what = {"api": "the API", "redis": "redis-server"}.get(name, f"the worker {name!r}")
                raise StackFailed(f"{what} exited with code {process.returncode}{self._tail(name)}")

    def _tail(self, name: str) -> str:
        return f"; the end of {self.logs / (name + '.log')}:\n{self.log(name)}"


def _signal(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to a process that may have exited already."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
