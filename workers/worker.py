"""The worker: load one model, then claim, run and finish that model's jobs until told to stop.

    bdia worker [--model NAME] [--redis-url URL] [--threads N]

A worker holds a lease on the job it runs (renewed every ``lease_s / 3``) and registers its model
and a heartbeat so that ``/readyz`` and ``GET /v1/models`` see it. Jobs whose worker died are
reclaimed by another; a job is acknowledged only after its outcome is stored. The numerics run
in a thread (``workers.tasks.run_task``) while the event loop keeps the lease and publishes
progress; cancellation is checked between steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cache import InversionCache
from app.jobs import Delivery, Job, JobQueue
from app.keys import Keys
from app.settings import Settings

if TYPE_CHECKING:
    import bdia

log = logging.getLogger("bdia.worker")


@dataclass
class Running:
    """The job a worker is running, and why it should stop early (if it should)."""

    job: Job
    delivery: Delivery
    stop: threading.Event = field(default_factory=threading.Event)
    steps: int = 0
    """Steps run so far: the NFE a job stopped early has spent."""
    abandon: str | None = None
    """Set when the worker must give the job up rather than cancel it: ``shutdown`` or ``lease lost``."""

    def cancel_requested(self) -> None:
        self.stop.set()

    def give_up(self, reason: str) -> None:
        self.abandon = reason
        self.stop.set()


class Worker:
    """Runs the jobs queued for one loaded model."""

    def __init__(self, settings: Settings, model: bdia.DiffusionModel, *, model_name: str | None = None,
                 name: str | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.model = model
        self.model_name = model_name or model.name
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.keys = Keys(settings.key_prefix)
        self.redis = Redis.from_url(settings.redis_url)
        self.queue = JobQueue(self.redis, settings, self.keys)
        self.cache = InversionCache(self.redis, settings, self.keys)
        self.stopping = asyncio.Event()
        self.running: Running | None = None
        self.jobs_done = 0

    def stop(self) -> None:
        """Stop taking jobs; a running job is given back to the queue for another worker."""
        if not self.stopping.is_set():
            log.info("worker %s stopping", self.id)
        self.stopping.set()
        if self.running is not None:
            self.running.give_up("shutdown")

    async def run(self) -> None:
        """Consume jobs until ``stop()``."""
        await self.queue.ensure_group(self.model_name)
        await self.beat()
        heartbeat = asyncio.create_task(self._heartbeats())
        log.info("worker %s serving %s (lease %.1fs)", self.id, self.model_name, self.settings.lease_s)
        try:
            while not self.stopping.is_set():
                try:
                    delivery = await self.queue.claim(
                        self.model_name, self.id, int(self.settings.worker_block_s * 1000)
                    )
                    if delivery is not None and self.stopping.is_set():  # stopped while waiting: give it back
                        await self.queue.release(self.model_name, delivery.message_id, self.id)
                    elif delivery is not None:
                        await self.process(delivery)
                except RedisError as exc:
                    log.error("Redis error: %s; retrying in 1s", exc)
                    await asyncio.sleep(1)
        finally:
            heartbeat.cancel()
            await self._unregister()
            await self.redis.aclose()

    # --- one job ------------------------------------------------------------------------------

    async def process(self, delivery: Delivery) -> None:
        """Run one delivered job to an outcome that is stored before the delivery is acknowledged."""
        queue, model = self.queue, self.model_name
        job = await queue.get(delivery.job_id)
        if job is None or job.done:  # expired, or canceled while queued
            await queue.ack(model, delivery.message_id)
            return
        if delivery.deliveries > self.settings.max_deliveries:
            log.warning("job %s dead-lettered after %d deliveries", job.id, delivery.deliveries)
            await queue.dead_letter(job, delivery)
            await self._release_maker(job)
            return
        if not await queue.start(job, self.id, delivery.deliveries):
            await queue.ack(model, delivery.message_id)
            return
        job = await queue.get(job.id) or job
        running = self.running = Running(job, delivery)
        if job.cancel_requested:
            running.cancel_requested()
        log.info("job %s (%s) started, delivery %d", job.id, job.kind, delivery.deliveries)
        try:
            await self._run(running)
        finally:
            self.running = None
            self.jobs_done += 1

    async def _run(self, running: Running) -> None:
        import bdia

        job, delivery, queue = running.job, running.delivery, self.queue
        try:
            outcome = await self._execute(running)
        except bdia.Canceled:
            if running.abandon is None:
                await queue.finish(job, "canceled", metrics=self._metrics(job, {"nfe": running.steps}))
                await self._acknowledge(job, delivery)
                log.info("job %s canceled", job.id)
            elif running.abandon == "shutdown":
                await queue.requeue(job, {"code": "worker_stopped", "detail": f"worker {self.id} stopped"})
                await queue.release(self.model_name, delivery.message_id, self.id)
                log.info("job %s given back: worker stopping", job.id)
            else:
                log.warning("job %s abandoned: %s", job.id, running.abandon)
            return
        except bdia.BdiaError as exc:
            error = {"code": exc.code, "detail": str(exc)}
            await queue.finish(job, "failed", error=error, metrics=self._metrics(job, {"nfe": running.steps}))
            await self._acknowledge(job, delivery)
            log.info("job %s failed: %s", job.id, exc)
            return
        except RedisError:
            raise
        except Exception as exc:  # a fault of this attempt, not of the job: deliver it again
            log.exception("job %s: attempt %d failed", job.id, delivery.deliveries)
            await queue.requeue(job, {"code": "worker_error", "detail": f"{type(exc).__name__}: {exc}"})
            await queue.release(self.model_name, delivery.message_id, self.id)
            return
        if running.abandon is not None:  # the lease was lost: another worker owns the job now
            return
        if outcome.inversion is not None:
            await self.cache.put(job.inversion_id, outcome.inversion, outcome.inversion_meta)
        result, metrics = self._result(job, outcome), self._metrics(job, outcome.metrics)
        await queue.finish(job, "succeeded", result=result, metrics=metrics, output=outcome.image_png)
        await self._acknowledge(job, delivery)
        log.info("job %s succeeded (nfe %s)", job.id, outcome.metrics.get("nfe"))

    async def _execute(self, running: Running) -> Any:
        """Gather the job's inputs from Redis, run its numerics in a thread, return the outcome."""
        from .tasks import InputsGone, Task, run_task

        job = running.job
        spec = await self.cache.spec(job.inversion_id)
        if spec is None:
            raise InputsGone(f"inversion {job.inversion_id} has expired: submit the image again")
        cached = await self.cache.get(job.inversion_id)
        image = None
        if cached is None or job.kind == "reconstruct":
            image = await self.cache.blob(spec.image_sha256)
        if cached is not None:
            await self.queue.publish(job.id, "cache_hit", {"inversion_id": job.inversion_id})
            await self.redis.hincrby(self.keys.stats, "cache_hits_total", 1)
        else:
            await self.redis.hincrby(self.keys.stats, "cache_misses_total", 1)
        mask_sha = job.inputs.get("mask_sha256")
        mask = await self.cache.blob(mask_sha) if mask_sha else None
        if mask_sha and mask is None:
            raise InputsGone("the mask upload has expired: submit the edit again")
        task = Task(job.kind, spec, job.params, image=image, cached=cached.data if cached else None, mask=mask)
        loop = asyncio.get_running_loop()

        def progress(p: Any) -> None:  # called from the compute thread between steps
            running.steps += 1
            publish = self.queue.progress(job.id, p.step, p.total, p.stage)
            if asyncio.run_coroutine_threadsafe(publish, loop).result(timeout=30):
                running.cancel_requested()

        return await asyncio.to_thread(
            run_task, self.model, task,
            gamma_bound=self.settings.gamma_bound, callback=progress, cancel=running.stop.is_set,
        )  # fmt: skip

    async def _acknowledge(self, job: Job, delivery: Delivery) -> None:
        await self.queue.ack(self.model_name, delivery.message_id)
        await self._release_maker(job)

    async def _release_maker(self, job: Job) -> None:
        if job.kind == "invert":
            await self.cache.release_maker(job.inversion_id, job.id)

    def _result(self, job: Job, outcome: Any) -> dict[str, Any]:
        if job.kind == "invert":
            return outcome.result
        return {"url": f"/v1/jobs/{job.id}/result", **outcome.result}

    def _metrics(self, job: Job, metrics: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        started = job.started_at or now
        return {
            **metrics,
            "queue_seconds": round(started - job.created_at, 6),
            "run_seconds": round(now - started, 6),
            "attempts": job.attempts,
        }

    # --- presence and leases ------------------------------------------------------------------

    async def beat(self) -> None:
        """Announce this worker and its model; renew the lease on the running job."""
        now = time.time()
        info = self.model.info()
        presence = {"id": self.id, "model": self.model_name, "host": socket.gethostname(), "pid": os.getpid(),
                    "jobs_done": self.jobs_done, "running": self.running.job.id if self.running else None}  # fmt: skip
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers(self.model_name), {self.id: now})
            pipe.zremrangebyscore(self.keys.workers(self.model_name), "-inf", now - 10 * self.settings.lease_s)
            pipe.set(self.keys.worker(self.id), json.dumps(presence), ex=max(1, int(self.settings.lease_s * 2)))
            pipe.set(self.keys.model_info(self.model_name), json.dumps(info), ex=24 * 3600)
            await pipe.execute()
        running = self.running
        if running is not None and running.abandon is None:
            owned = await self.queue.renew(self.model_name, running.delivery.message_id, self.id)
            if not owned:
                log.warning("lost the lease on job %s", running.job.id)
                running.give_up("lease lost")
            elif await self.redis.hget(self.keys.job(running.job.id), "cancel_requested") == b"true":
                running.cancel_requested()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self.beat()
            except RedisError as exc:
                log.error("heartbeat failed: %s", exc)

    async def _unregister(self) -> None:
        try:
            await self.redis.zrem(self.keys.workers(self.model_name), self.id)
            await self.redis.delete(self.keys.worker(self.id))
        except RedisError:
            pass


def main(argv: list[str] | None = None) -> int:
    """``bdia worker``: load the model, then serve its queue until SIGTERM or Ctrl-C. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="bdia worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="the model to load and serve (default: $BDIA_MODEL)")
    parser.add_argument("--redis-url", help="default: $BDIA_REDIS_URL")
    parser.add_argument("--device", help="torch device (default: CUDA when available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: $BDIA_WORKER_THREADS)")
    parser.add_argument("--name", help="worker id (default: host-pid-random)")
    parser.add_argument("--log-level", default=os.environ.get("BDIA_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = {k: v for k, v in {"model": args.model, "redis_url": args.redis_url,
                                   "worker_threads": args.threads}.items() if v is not None}  # fmt: skip
    settings = Settings(**overrides)
    import torch

    import bdia

    if settings.worker_threads > 0:
        torch.set_num_threads(settings.worker_threads)
    try:
        model = bdia.load_model(settings.model, device=args.device)
    except bdia.BdiaError as exc:
        print(f"bdia worker: {exc}")
        return 2
    worker = Worker(settings, model, model_name=settings.model, name=args.name)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    try:
        asyncio.run(serve())
    except RedisError as exc:
        print(f"bdia worker: cannot use Redis at {settings.redis_url}: {exc}")
        return 1
    return 0
