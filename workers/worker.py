"""The worker: load one model, then claim, run and finish that model's jobs until told to stop.

    bdia worker [--model NAME] [--redis-url URL] [--threads N] [--batch-size B] [--batch-policy P]

Continuous batching: a worker keeps up to B jobs active (``--batch-size``, ``$BDIA_BATCH_SIZE``;
default from the device: ``default_batch_size``) and advances them together, one network call per
batch layout per step (``bdia.batching``). Jobs join and leave between steps: a finished job's place
is refilled from the queue before the next step.

Each job keeps one numerics layout, slot ``s`` of a batch of ``b`` ≤ B, for its whole life, and its
fingerprints record it, so batching never costs exactness. The layout is chosen when the job is
admitted (``bdia.workers.tasks.place``): with the ``adaptive`` policy (the default) from the demand
then — a lone job runs at batch size 1, a busy worker fills wide batches, and a job still in the
first quarter of its first stage may restart from scratch in a wider batch that a burst opens —;
with ``fixed``, always at B. A reconstruction runs in its inversion's layout, whatever the policy;
an edit of a cached inversion takes that inversion's slot when the policy's choice allows.

A worker holds a lease on each job it runs (renewed every ``lease_s / 3``) and registers its model
(``bdia.jobqueue.models``: family, size, schedule, defaults) and a heartbeat so that ``/readyz``, the
API's checks and ``GET /v1/models`` see it. Jobs whose worker died are
reclaimed by another; a job is acknowledged only after its outcome is stored. The numerics run
in a thread while the event loop keeps the leases and publishes progress; cancellation is
checked between steps.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bdia.jobqueue.cache import InversionCache
from bdia.jobqueue.jobs import Delivery, Job, JobQueue
from bdia.jobqueue.keys import Keys
from bdia.jobqueue.logs import configure_logging
from bdia.jobqueue.models import ModelRecord, ModelRegistry
from bdia.jobqueue.settings import Settings

if TYPE_CHECKING:
    import bdia
    from bdia.batching import Lane, Layout

log = logging.getLogger("bdia.worker")

REGROUP_SHARE = 4
"""A job placed by the adaptive policy may be restarted in a wider batch (``bdia.workers.tasks.place``)
until it has run 1/``REGROUP_SHARE`` of its first stage's evaluations (and at least 2): the most a
burst's first job loses, while the call it saves would cost as much for the rest of its life."""


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_batch_size(device_type: str) -> int:
    """The widest batch when ``BDIA_BATCH_SIZE`` is unset (docs/operations.md; measured in docs/benchmarks.md).

    CUDA: 8 (on an H200 a batch of 8 costs ~1.14× a batch of 1: 7× the throughput). CPU: 4 (a call's
    cost there grows nearly with its rows, so wider batches gain little and pad more).
    """
    return 8 if device_type == "cuda" else 4


def default_threads(device_type: str, cores: int | None = None) -> int:
    """torch CPU threads when ``BDIA_WORKER_THREADS`` is unset (docs/operations.md; docs/benchmarks.md).

    CUDA: 1 (the network runs on the GPU). CPU: every usable core but one, which is left to the rest of
    the service (the worker's event loop, the API, Redis); at least 1, at most 8 (a cap not measured:
    only 2 cores were). On 2 cores a worker with 2 threads took ~1.8× as long for a lone edit as one
    with 1 thread, for the other processes kept pre-empting one of its two threads (a parallel
    region waits for its slowest thread).
    """
    if device_type == "cuda":
        return 1
    return max(1, min(8, (cores or usable_cores()) - 1))


@dataclass
class Running:
    """A job the worker is running, its lane of the batch, and why it should stop early (if it should)."""

    job: Job
    delivery: Delivery
    lane: Lane
    task: Any
    """Its ``bdia.workers.tasks.Task``, whose ``layout`` is where it runs."""
    movable: bool = False
    """Placed by the adaptive policy (not pinned to a recorded layout): it may be restarted in a wider batch."""
    discarded: int = 0
    """Network evaluations of earlier lanes of this job, restarted in another layout."""
    published: int = 0
    """The lane evaluations its latest progress event counted (a restarted lane stays quiet until past it)."""
    canceled: bool = False
    abandon: str | None = None
    """Set when the worker must give the job up rather than cancel it: ``shutdown`` or ``lease lost``."""
    admitted: float = dataclasses.field(default_factory=time.monotonic)
    timed_out: bool = False

    @property
    def layout(self) -> Layout:
        return self.task.layout

    @property
    def steps(self) -> int:
        """Steps run so far: the NFE a job stopped early has spent (restarted lanes included)."""
        return self.discarded + self.lane.evaluations

    @property
    def seat(self) -> Any:
        """Its ``bdia.workers.tasks.Seat``: where it runs, and whether it may still move."""
        from .tasks import Seat

        request = self.lane.request
        budget = max(2, request.progress.total // REGROUP_SHARE) if request is not None else 2
        young = self.steps < budget and self.lane.live
        return Seat(self.layout, self.movable and young and not self.canceled and self.abandon is None)

    def cancel_requested(self) -> None:
        self.canceled = True

    def give_up(self, reason: str) -> None:
        self.abandon = reason


Action = Literal["requeue", "fail", "cancel", "succeed", "abandon"]


@dataclass(frozen=True)
class Verdict:
    """What becomes of a job that leaves its lane, and the error it is stored (or requeued) with."""

    action: Action
    error: dict[str, Any] | None = None


def decide(running: Running, worker: str, timeout_s: float) -> Verdict:
    """The outcome of a job that left its lane, first match wins:

    ========================  =======  ==================================================
    the job                   action   status change
    ========================  =======  ==================================================
    its worker is stopping    requeue  running → queued, given back to another worker
    lost its lease            abandon  none: the worker that reclaimed it owns it now
    ran past the timeout      fail     running → failed (``job_timeout``)
    raised a ``BdiaError``    fail     running → failed (the error's code)
    raised anything else      requeue  running → queued (``worker_error``), retried
    canceled before its end   cancel   running → canceled
    finished                  succeed  running → succeeded
    ========================  =======  ==================================================
    """
    import bdia

    error = running.lane.error
    if running.abandon == "shutdown":
        return Verdict("requeue", {"code": "worker_stopped", "detail": f"worker {worker} stopped"})
    if running.abandon is not None:
        return Verdict("abandon")
    if running.timed_out:
        return Verdict("fail", {"code": "job_timeout", "detail": f"ran longer than {timeout_s:g}s"})
    if isinstance(error, bdia.BdiaError):
        return Verdict("fail", {"code": error.code, "detail": str(error)})
    if error is not None:  # a fault of this attempt, not of the job: deliver it again
        return Verdict("requeue", {"code": "worker_error", "detail": f"{type(error).__name__}: {error}"})
    if running.canceled and not running.lane.done:
        return Verdict("cancel")
    return Verdict("succeed")


class Backoff:
    """A doubling pause (0.5 s up to ``limit``) between attempts to reach Redis; ``reset`` after a success."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.next = 0.5

    def reset(self) -> None:
        self.next = 0.5

    async def wait(self, why: str) -> None:
        log.error("%s; retrying in %.1fs", why, self.next)
        await asyncio.sleep(self.next)
        self.next = min(self.next * 2, self.limit)


class Worker:
    """Runs the jobs queued for one loaded model, up to ``batch_size`` of them side by side.

    ``batch_size`` (else ``settings.batch_size``, else ``default_batch_size``) is the most jobs it runs
    at once and the widest layout it opens; ``policy`` (else ``settings.batch_policy``) how it lays them
    out: ``adaptive`` chooses each job's width from the demand when it is admitted, ``fixed`` gives
    every job ``batch_size``.
    """

    def __init__(
        self,
        settings: Settings,
        model: bdia.DiffusionModel,
        *,
        model_name: str | None = None,
        name: str | None = None,
        batch_size: int | None = None,
        policy: str | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.model_name = model_name or model.name
        self.batch_size = batch_size or settings.batch_size or default_batch_size(model.device.type)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        self.policy = policy or settings.batch_policy
        if self.policy not in ("adaptive", "fixed"):
            raise ValueError(f"batch policy must be adaptive or fixed, got {self.policy!r}")
        self.id = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.keys = Keys(settings.key_prefix)
        self.redis = Redis.from_url(settings.redis_url)
        self.queue = JobQueue(self.redis, settings, self.keys)
        self.cache = InversionCache(self.redis, settings, self.keys)
        self.models = ModelRegistry(self.redis, settings, self.keys)
        self.stopping = asyncio.Event()
        self.active: dict[str, Running] = {}
        self.jobs_done = 0

    def stop(self) -> None:
        """Stop taking jobs; running jobs are given back to the queue for another worker."""
        if not self.stopping.is_set():
            log.info("worker %s stopping", self.id)
        self.stopping.set()
        for running in self.active.values():
            running.give_up("shutdown")

    async def run(self) -> None:
        """Consume jobs until ``stop()``: settle finished jobs, refill their places, run one step, repeat.

        While Redis is unreachable the worker waits and tries again, the wait doubling from 0.5 s up to
        ``reconnect_max_s``."""
        pause = Backoff(self.settings.reconnect_max_s)
        while not self.stopping.is_set():
            try:
                await self.queue.ensure_group(self.model_name)
                await self.beat()
                break
            except RedisError as exc:
                await pause.wait(f"Redis unreachable at start ({exc})")
        heartbeat = asyncio.create_task(self._heartbeats())
        log.info(
            "worker %s serving %s (batch size %d, %s layouts, lease %.1fs)",
            self.id,
            self.model_name,
            self.batch_size,
            self.policy,
            self.settings.lease_s,
        )
        try:
            while not self.stopping.is_set() or self.active:
                try:
                    await self._settle()
                    if not self.stopping.is_set():
                        await self._fill()
                    await self._step()
                    pause.reset()
                except RedisError as exc:
                    await pause.wait(f"Redis error ({exc})")
        finally:
            heartbeat.cancel()
            await self._unregister()
            await self.redis.aclose()

    # --- joining: claim jobs into free places ----------------------------------------------------

    async def _fill(self) -> None:
        """Claim jobs until ``batch_size`` are active; wait for one only when none is."""
        while len(self.active) < self.batch_size and not self.stopping.is_set():
            block = None if self.active else int(self.settings.worker_block_s * 1000)
            delivery = await self.queue.claim(self.model_name, self.id, block)  # type: ignore[arg-type]
            if delivery is None:
                return
            if self.stopping.is_set():  # stopped while waiting: give it back
                await self.queue.release(self.model_name, delivery.message_id, self.id)
                return
            await self._admit(delivery)

    async def _admit(self, delivery: Delivery) -> None:
        """Start a delivered job and give it a lane, or settle it at once (expired, finished, dead).

        A job delivered too often fails from queued or running (dead-lettered); any other starts
        (queued or reclaimed running → running) and fails at once if its inputs are gone."""
        import bdia
        from bdia.batching import Lane

        from .tasks import task_job

        queue = self.queue
        job = await queue.get(delivery.job_id)
        if job is None or job.done:  # expired, or canceled while queued: nothing to do
            await queue.ack(self.model_name, delivery.message_id)
            return
        if delivery.deliveries > self.settings.max_deliveries:
            log.warning("job %s dead-lettered after %d deliveries", job.id, delivery.deliveries)
            await queue.dead_letter(job, delivery)
            return
        if not await queue.start(job, self.id, delivery.deliveries):  # finished meanwhile
            await queue.ack(self.model_name, delivery.message_id)
            return
        job = await queue.get(job.id) or job
        try:
            task = await self._task(job)
        except bdia.BdiaError as exc:
            await self._conclude(job, delivery, Verdict("fail", {"code": exc.code, "detail": str(exc)}), nfe=0)
            return
        task, movable = await self._place(job, task)
        lane = Lane(task_job(self.model, task, gamma_bound=self.settings.gamma_bound))
        running = Running(job, delivery, lane, task, movable=movable, canceled=job.cancel_requested)
        self.active[job.id] = running
        log.info(
            "job %s (%s) started in slot %d/%d, delivery %d",
            job.id,
            job.kind,
            running.layout.slot,
            running.layout.batch_size,
            delivery.deliveries,
        )

    async def _task(self, job: Job) -> Any:
        """Gather the job's inputs from Redis (its layout is chosen by ``_place``)."""
        from .tasks import InputsGone, Task

        spec = await self.cache.spec(job.inversion_id)
        if spec is None:
            raise InputsGone(f"inversion {job.inversion_id} has expired: submit the image again")
        cached = await self.cache.get(job.inversion_id)
        image = None
        if cached is None or job.kind == "reconstruct" or job.inputs.get("mask_sha256"):  # a mask needs its size
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
        return Task(job.kind, spec, job.params, image=image, cached=cached.data if cached else None, mask=mask)

    async def _place(self, job: Job, task: Any) -> tuple[Any, bool]:
        """The task in its layout, and whether the policy chose it freely (so it may move later).

        A reconstruction runs in its inversion's layout, whatever the policy; everything else goes
        where ``bdia.workers.tasks.place`` puts it, and the young jobs it moves are restarted there.
        """
        from bdia.batching import Lane

        from .tasks import place, preferred_layout, task_job

        preferred = preferred_layout(task)
        if job.kind == "reconstruct" and preferred is not None:
            return dataclasses.replace(task, layout=preferred), False
        seats = {job_id: running.seat for job_id, running in self.active.items()}
        demand = len(self.active) + 1
        if self.policy == "adaptive":
            demand += await self.queue.depth(self.model_name)
        layout, moves = place(seats, batch_size=self.batch_size, demand=demand, policy=self.policy, preferred=preferred)
        for job_id, moved in moves.items():
            running = self.active[job_id]
            running.lane.close()
            lost = running.lane.evaluations
            running.discarded += lost
            running.task = dataclasses.replace(running.task, layout=moved)
            running.lane = Lane(task_job(self.model, running.task, gamma_bound=self.settings.gamma_bound))
            log.info("job %s restarted in slot %d/%d (%d steps discarded)", job_id, moved.slot, moved.batch_size, lost)
        return dataclasses.replace(task, layout=layout), self.policy == "adaptive" and layout != preferred

    # --- one step of every active job -----------------------------------------------------------

    async def _step(self) -> None:
        """One network evaluation for every live job, in shared calls; then publish each job's progress."""
        from bdia.batching import advance

        live = [r for r in self.active.values() if r.lane.live and not r.canceled and r.abandon is None]
        if not live:
            return
        await asyncio.to_thread(advance, self.model, [r.lane for r in live])
        # A restarted job publishes again once it is past the progress it had published before.
        stepped = [r for r in live if r.lane.evaluations > r.published]
        for running in stepped:
            running.published = running.lane.evaluations
        flags = await asyncio.gather(
            *(self.queue.progress(r.job.id, p.step, p.total, p.stage) for r in stepped if (p := r.lane.progress))
        )
        for running, cancel in zip(stepped, flags, strict=True):
            if cancel:
                running.cancel_requested()

    # --- leaving: store outcomes, free places -----------------------------------------------------

    async def _settle(self) -> None:
        """Finish every job that is done, failed, canceled or given up, freeing its place."""
        timeout = self.settings.job_timeout_s
        for running in list(self.active.values()):
            lane = running.lane
            if timeout > 0 and lane.live and time.monotonic() - running.admitted > timeout:
                running.timed_out = True
            if running.abandon is None and not running.canceled and lane.live and not running.timed_out:
                continue
            del self.active[running.job.id]
            if lane.live:
                lane.close()
            try:
                await self._finish(running)
            finally:
                self.jobs_done += 1

    async def _finish(self, running: Running) -> None:
        """Store what ``decide`` makes of a job that left its lane."""
        job, delivery, lane = running.job, running.delivery, running.lane
        verdict = decide(running, self.id, self.settings.job_timeout_s)
        if verdict.action == "abandon":
            log.warning("job %s abandoned: %s", job.id, running.abandon)
        elif verdict.action == "succeed":
            outcome = lane.result
            if outcome.inversion is not None:
                await self.cache.put(job.inversion_id, outcome.inversion, outcome.inversion_meta)
            result, metrics = self._result(job, outcome), self._metrics(job, outcome.metrics)
            if outcome.mask_png is not None:  # beside the result: its TTL and budget, stored before success shows
                await self.queue.results.store(self.keys.mask(job.id), outcome.mask_png, self.settings.job_ttl_s)
            await self.queue.finish(job, "succeeded", result=result, metrics=metrics, output=outcome.image_png)
            await self._acknowledge(job, delivery)
            log.info("job %s succeeded (nfe %s)", job.id, outcome.metrics.get("nfe"))
        else:
            if verdict.action == "requeue" and lane.error is not None:
                log.error("job %s: attempt %d failed", job.id, delivery.deliveries, exc_info=lane.error)
            await self._conclude(job, delivery, verdict, nfe=running.steps)

    async def _conclude(self, job: Job, delivery: Delivery, verdict: Verdict, *, nfe: int) -> None:
        """Carry out a verdict that stores no output: requeue the job and give it back, or fail or cancel it."""
        error = verdict.error or {}
        if verdict.action == "requeue":
            await self.queue.requeue(job, error)
            await self.queue.release(self.model_name, delivery.message_id, self.id)
            log.info("job %s given back: %s", job.id, error.get("detail"))
            return
        status: Literal["failed", "canceled"] = "failed" if verdict.action == "fail" else "canceled"
        await self.queue.finish(job, status, error=verdict.error, metrics=self._metrics(job, {"nfe": nfe}))
        await self._acknowledge(job, delivery)
        level = logging.WARNING if error.get("code") == "job_timeout" else logging.INFO
        log.log(level, "job %s %s%s", job.id, status, f": {error['detail']}" if error else "")

    async def _acknowledge(self, job: Job, delivery: Delivery) -> None:
        """Done with its stream entry (the job's final status, stored before, released what waited on it)."""
        await self.queue.ack(self.model_name, delivery.message_id)

    def _result(self, job: Job, outcome: Any) -> dict[str, Any]:
        if job.kind == "invert":
            return outcome.result
        mask = {"mask": f"/v1/jobs/{job.id}/mask"} if outcome.mask_png is not None else {}
        return {"url": f"/v1/jobs/{job.id}/result", **mask, **outcome.result}

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
        """Announce this worker and its model; renew the leases on its running jobs."""
        now = time.time()
        record = ModelRecord.from_info(self.model.info(), self.model_name)
        presence = {
            "id": self.id,
            "model": self.model_name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "jobs_done": self.jobs_done,
            "batch_size": self.batch_size,
            "batch_policy": self.policy,
            "running": list(self.active),
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers(self.model_name), {self.id: now})
            pipe.zremrangebyscore(self.keys.workers(self.model_name), "-inf", now - 10 * self.settings.lease_s)
            pipe.set(self.keys.worker(self.id), json.dumps(presence), ex=max(1, int(self.settings.lease_s * 2)))
            self.models.publish_in(pipe, record)  # the model's registry record, renewed with the heartbeat
            await pipe.execute()
        for running in list(self.active.values()):
            if running.abandon is not None:
                continue
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
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: $BDIA_WORKER_THREADS, else from the device)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        help="most jobs run side by side, widest batch layout (default: $BDIA_BATCH_SIZE, else from the device)",
    )
    parser.add_argument(
        "--batch-policy",
        choices=("adaptive", "fixed"),
        help="adaptive: each job's batch size from the demand when it starts; fixed: always --batch-size "
        "(default: $BDIA_BATCH_POLICY, else adaptive)",
    )
    parser.add_argument("--name", help="worker id (default: host-pid-random)")
    parser.add_argument("--log-level", default=os.environ.get("BDIA_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    given = {
        "model": args.model,
        "redis_url": args.redis_url,
        "worker_threads": args.threads,
        "batch_size": args.batch_size,
        "batch_policy": args.batch_policy,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = Settings(**overrides, log_level=args.log_level)
    configure_logging(settings)
    import torch

    import bdia

    try:
        model = bdia.load_model(settings.model, device=args.device)
    except bdia.BdiaError as exc:
        print(f"bdia worker: {exc}", file=sys.stderr)
        return 2
    threads = settings.worker_threads
    if threads is None:
        threads = default_threads(model.device.type)
    if threads > 0:
        torch.set_num_threads(threads)
    bdia.configure_determinism(model)
    worker = Worker(settings, model, model_name=settings.model, name=args.name)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    try:
        asyncio.run(serve())
    except RedisError as exc:
        print(f"bdia worker: cannot use Redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    return 0
