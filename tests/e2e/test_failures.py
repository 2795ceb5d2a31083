"""Failures with real processes and a real Redis: workers killed again and again mid-job, Redis
killed and restarted (AOF) with jobs queued and with a worker waiting, and a poisoned job."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from redis.asyncio import Redis
from support import (
    Deployment,
    announce_models,
    assert_problem,
    delete_prefix,
    free_port,
    make_png,
    model_record,
    start_deployment,
)

from bdia.client import BdiaClient
from bdia.jobqueue.cache import InversionCache, InversionSpec, sha256
from bdia.jobqueue.jobs import Job, JobQueue
from bdia.jobqueue.settings import Settings

EDIT = {"steps": 24, "strength": 1.0}  # 24 inversion + 24 regeneration NFE on tiny-random


def _running_owner(deployment: Deployment, client: redis.Redis, job_ids: list[str]) -> tuple[str, str] | None:
    """A (job, worker) pair where the worker is mid-job and is one of ours, alive."""
    for job_id in job_ids:
        fields = client.hmget(deployment.keys.job(job_id), ["status", "worker", "progress"])
        status, worker, progress = (json.loads(f) if f else None for f in fields)
        alive = worker in deployment.workers and deployment.workers[worker].poll() is None
        if status == "running" and progress and alive:
            return job_id, worker
    return None


def test_repeated_worker_kills_lose_nothing_and_change_no_bit(redis_client, tmp_path, tiny_model) -> None:
    from bdia.workers.tasks import Task, run_task

    deployment = start_deployment(
        redis_client, tmp_path / "logs", ["k0", "k1", "k2", "k3"], lease_s="1.0", max_deliveries="20"
    )
    try:
        images = {seed: make_png(seed, (40, 32)) for seed in range(6)}
        with BdiaClient(deployment.url, timeout=30) as client:
            jobs = [
                (n % 6, client.edit_image(images[n % 6], "a gradient", f"edit {n % 6}", **EDIT).id) for n in range(30)
            ]
            job_ids = [job_id for _, job_id in jobs]
            kills, spawned, deadline = 0, 4, time.monotonic() + 240
            while kills < 12 and time.monotonic() < deadline:
                target = _running_owner(deployment, redis_client, job_ids)
                if target is None:
                    if all(client.job(j).status in ("succeeded", "failed", "canceled") for j in job_ids):
                        break
                    time.sleep(0.05)
                    continue
                deployment.kill_worker(target[1])
                kills += 1
                deployment.start_worker(f"k{spawned}")
                spawned += 1
                time.sleep(0.1)
            finals = {job_id: client.wait(job_id, timeout=max(10, deadline - time.monotonic())) for job_id in job_ids}
            results = {job_id: client.result(job_id) for job_id in job_ids}
            events = {job_id: [e.event for e in client.events(job_id)] for job_id in job_ids}
        assert kills >= 10, f"only {kills} kills: the jobs finished too fast"
        assert all(job.status == "succeeded" for job in finals.values()), {j: f.error for j, f in finals.items()}
        for job_id, names in events.items():  # finished exactly once
            terminal = Counter(n for n in names if n in ("succeeded", "failed", "canceled"))
            assert terminal == {"succeeded": 1}, (job_id, names)
        restarted = sum(names.count("started") - 1 for names in events.values())
        assert restarted >= 10, f"only {restarted} jobs were taken over after a kill"

        for seed, image in images.items():  # bit-identical to an uninterrupted in-process run
            spec = InversionSpec(model="tiny-random", image_sha256=sha256(image), prompt="a gradient", **EDIT)
            params = {"prompt": f"edit {seed}", "guidance_scale": 1.0, "negative_prompt": "", "masked": False}
            reference = run_task(tiny_model, Task("edit", spec, params, image=image), gamma_bound=30.0).image_png
            assert {results[j] for s, j in jobs if s == seed} == {reference}, seed
    finally:
        deployment.stop()
        delete_prefix(redis_client, deployment.prefix)


class PrivateRedis:
    """A redis-server of our own, with AOF (fsync always), that can be killed and restarted."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.dir = free_port(), workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_restarted_with_aof_keeps_queued_jobs_and_workers_reconnect(tmp_path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    deployment = Deployment("bdia-aof", tmp_path, {})
    from support import deployment_env

    deployment.env = deployment_env("bdia-aof", redis_url=server.url, redis_timeout_s="1")
    deployment.start_api()
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{deployment.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        # A worker of the model was here a moment ago (its registry record outlives it by BDIA_MODEL_TTL_S),
        # so the API queues its jobs rather than refusing them with 503 model_unavailable.
        announce_models(Settings(redis_url=server.url, key_prefix="bdia-aof"), [model_record("tiny-random")])
        with BdiaClient(deployment.url, timeout=10) as client:
            queued = [client.invert(make_png(seed), "a gradient", steps=8).job.id for seed in range(3)]
            server.kill()  # between enqueue and pickup: no worker is running
            for method, path in [("GET", f"/v1/jobs/{queued[0]}"), ("GET", "/readyz"), ("POST", "/v1/inversions")]:
                started = time.monotonic()
                response = client.http.request(
                    method, path, files={"image": ("a.png", make_png(), "image/png")} if method == "POST" else None
                )
                assert time.monotonic() - started < 1.5, path
                assert_problem(response, 503)
            server.start()
            assert {client.job(job_id).status for job_id in queued} == {"queued"}

            deployment.start_worker("survivor")
            assert {client.wait(job_id, timeout=120).status for job_id in queued} == {"succeeded"}

            server.kill()  # the worker waits for Redis with backoff, then carries on
            time.sleep(2.5)
            assert deployment.workers["survivor"].poll() is None, deployment.log("survivor")
            server.start()
            later = client.invert(make_png(9), "a gradient", steps=8).job.id
            assert client.wait(later, timeout=60).status == "succeeded"
        assert "Redis" in deployment.log("survivor")
    finally:
        deployment.stop()
        if server.process and server.process.poll() is None:
            server.kill()


def test_a_malformed_job_fails_once_and_blocks_nothing_and_a_long_job_times_out(redis_client, tmp_path) -> None:
    deployment = start_deployment(redis_client, tmp_path / "logs", ["p0"], max_deliveries="2", job_timeout_s="2")
    try:
        settings = Settings(redis_url=deployment.env["BDIA_REDIS_URL"], key_prefix=deployment.prefix)

        async def poison() -> str:  # an edit without a prompt (no API makes one): the worker refuses it
            redis_async = Redis.from_url(settings.redis_url)
            cache, queue = InversionCache(redis_async, settings), JobQueue(redis_async, settings)
            digest = await cache.put_blob(make_png(77))
            spec = InversionSpec(model="tiny-random", image_sha256=digest, steps=4)
            await cache.put_spec(spec)
            job = await queue.submit(Job(kind="edit", model="tiny-random", inversion_id=spec.inversion_id, params={}))
            await redis_async.aclose()
            return job.id

        poisoned = asyncio.run(poison())
        with BdiaClient(deployment.url, timeout=10) as client:
            healthy = [client.invert(make_png(seed), "x", steps=4).job.id for seed in range(3)]
            assert {client.wait(job_id, timeout=120).status for job_id in healthy} == {"succeeded"}
            failed = client.wait(poisoned, timeout=120, raise_on_failure=False)
        # Refused on its first delivery, not retried: dead-lettering is for faults (tests/e2e/test_states.py).
        assert failed.status == "failed" and failed.error.code == "invalid_parameter"
        assert failed.metrics["attempts"] == 1
        assert redis_client.xlen(deployment.keys.dead_letter) == 0

        with BdiaClient(deployment.url, timeout=10) as client:
            endless = client.invert(make_png(5), "x", steps=900).job.id
            timed_out = client.wait(endless, timeout=60, raise_on_failure=False)
        assert timed_out.status == "failed" and timed_out.error.code == "job_timeout"
    finally:
        deployment.stop()
        delete_prefix(redis_client, deployment.prefix)
