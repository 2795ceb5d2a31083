"""The job state machine: the table itself, and the Lua scripts of ``JobQueue`` enforcing it on a real Redis."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis
from support import REDIS_URL

from bdia.jobqueue.jobs import Job, JobQueue
from bdia.jobqueue.settings import Settings
from bdia.jobqueue.states import (
    STATUSES,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    check,
    lua_tables,
    sources,
)

MODEL = "tiny-random"
LEGAL = {(t.source, t.target): t.event for t in TRANSITIONS}
PAIRS = list(itertools.product(STATUSES, STATUSES))
ILLEGAL = [
    ("queued", "succeeded"),
    ("queued", "queued"),
    ("succeeded", "running"),
    ("succeeded", "failed"),
    ("canceled", "queued"),
    ("canceled", "running"),
    ("failed", "succeeded"),
    ("failed", "queued"),
]

# --- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target", "event"), [(t.source, t.target, t.event) for t in TRANSITIONS])
def test_each_legal_transition_is_allowed_with_its_event(source: str, target: str, event: str) -> None:
    assert check(source, target) == event
    assert source in sources(target)


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_illegal_transitions_are_refused(source: str, target: str) -> None:
    with pytest.raises(IllegalTransition, match=f"from '{source}' to '{target}'"):
        check(source, target)
    assert source not in sources(target)


def test_the_table() -> None:
    assert STATUSES == ("queued", "running", "succeeded", "failed", "canceled")
    assert frozenset({"succeeded", "failed", "canceled"}) == TERMINAL
    assert len(LEGAL) == len(TRANSITIONS), "one row per (source, target)"
    assert not [pair for pair in LEGAL if pair[0] in TERMINAL], "a final status is final"
    assert sources("running") == ("queued", "running")
    assert sources("queued") == ("running",)
    assert sources("succeeded") == ("running",)
    assert set(sources("failed")) == {"queued", "running"}
    assert set(sources("canceled")) == {"queued", "running"}
    for source, target in PAIRS:
        if (source, target) not in LEGAL:
            with pytest.raises(IllegalTransition):
                check(source, target)
    with pytest.raises(IllegalTransition):
        check("nonsense", "running")


def test_the_lua_tables_are_generated_from_the_table() -> None:
    lua = lua_tables()
    assert "running = {running = 'started', queued = 'queued', succeeded = 'succeeded'" in lua
    assert "succeeded = {}, failed = {}, canceled = {}}" in lua
    assert "local TERMINAL = {succeeded = true, failed = true, canceled = true}" in lua


def test_the_jobs_module_still_exports_the_names() -> None:
    from bdia.jobqueue import jobs, states

    for name in ("TERMINAL", "JobKind", "JobStatus", "EventName"):
        assert getattr(jobs, name) is getattr(states, name)


# --- the table as Redis enforces it -------------------------------------------------------------


def _run(prefix: str, scenario: Callable[[JobQueue], Awaitable[None]]) -> None:
    async def main() -> None:
        queue = JobQueue(Redis.from_url(REDIS_URL), Settings(redis_url=REDIS_URL, key_prefix=prefix))
        try:
            await queue.ensure_group(MODEL)
            await scenario(queue)
        finally:
            await queue.redis.aclose()

    asyncio.run(main())


async def _move(queue: JobQueue, job: Job, target: str) -> bool:
    """Ask for ``target`` through the JobQueue method that moves a job there."""
    if target == "running":
        return await queue.start(job, "w", 1)
    if target == "queued":
        return await queue.requeue(job, {"code": "worker_error", "detail": "boom"})
    return await queue.finish(job, target, error={"code": "x", "detail": "y"} if target == "failed" else None)  # type: ignore[arg-type]


async def _job_in(queue: JobQueue, status: str) -> Job:
    """A submitted job brought to ``status`` by legal moves."""
    job = await queue.submit(Job(kind="edit", model=MODEL, inversion_id="inv_0", params={}, webhook="http://h/x"))
    if status == "running":
        assert await queue.start(job, "w", 1)
    elif status == "succeeded":
        assert await queue.start(job, "w", 1)
        assert await queue.finish(job, "succeeded", result={"url": "u"})
    elif status == "failed":
        assert await queue.finish(job, "failed", error={"code": "x", "detail": "y"})
    elif status == "canceled":
        assert await queue.cancel(job.id) == "canceled"
    stored = await queue.get(job.id)
    assert stored is not None and stored.status == status
    return stored


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_the_scripts_allow_exactly_the_table(prefix: str, source: str, target: str) -> None:
    legal = (source, target) in LEGAL

    async def scenario(queue: JobQueue) -> None:
        job = await _job_in(queue, source)
        events = [e.event for e in await queue.events(job.id)]
        outbox = await queue.redis.xlen(queue.keys.webhooks)
        counted = await queue.redis.zscore(queue.keys.tenant_jobs(job.tenant), job.id) is not None

        assert await _move(queue, job, target) is legal

        after = await queue.get(job.id)
        assert after is not None and after.status == (target if legal else source)
        new_events = [e.event for e in await queue.events(job.id)][len(events) :]
        assert new_events == ([LEGAL[source, target]] if legal else [])
        finished = legal and target in TERMINAL
        assert await queue.redis.xlen(queue.keys.webhooks) == outbox + finished
        still_counted = await queue.redis.zscore(queue.keys.tenant_jobs(job.tenant), job.id) is not None
        assert still_counted == (counted and not finished)

    _run(prefix, scenario)


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_illegal_moves_leave_the_stored_record_untouched(prefix: str, source: str, target: str) -> None:
    async def scenario(queue: JobQueue) -> None:
        job = await _job_in(queue, source)
        before = await queue.redis.hgetall(queue.keys.job(job.id))
        assert not await _move(queue, job, target)
        assert await queue.redis.hgetall(queue.keys.job(job.id)) == before

    _run(prefix, scenario)


def test_finish_refuses_queued_to_succeeded_and_a_status_that_is_not_final(prefix: str) -> None:
    async def scenario(queue: JobQueue) -> None:
        job = await _job_in(queue, "queued")
        assert not await queue.finish(job, "succeeded", result={"url": "u"})
        with pytest.raises(IllegalTransition):
            await queue.finish(job, "running")  # type: ignore[arg-type]
        stored = await queue.get(job.id)
        assert stored is not None and stored.status == "queued" and stored.result is None
        assert [e.event for e in await queue.events(job.id)] == ["queued"]
        assert await queue.redis.hget(queue.keys.stats, 'jobs_finished_total{status="succeeded"}') is None

    _run(prefix, scenario)


@pytest.mark.parametrize("source", STATUSES)
def test_cancel_goes_through_the_table(prefix: str, source: str) -> None:
    """Queued: canceled now and its stream entry deleted; running: asked to stop; final: unchanged."""

    async def scenario(queue: JobQueue) -> None:
        job = await _job_in(queue, source)
        events = len(await queue.events(job.id))
        expected = "canceled" if source == "queued" else source
        assert await queue.cancel(job.id) == expected
        after = await queue.get(job.id)
        assert after is not None and after.status == expected
        assert after.cancel_requested == (source in ("queued", "running", "canceled"))
        new_events = [e.event for e in await queue.events(job.id)][events:]
        assert new_events == (["canceled"] if source == "queued" else [])
        if source == "queued":
            assert await queue.redis.xlen(queue.keys.queue(MODEL)) == 0
            assert after.finished_at is not None

    _run(prefix, scenario)


def test_cancel_of_a_missing_job_and_moves_of_a_missing_job(prefix: str) -> None:
    async def scenario(queue: JobQueue) -> None:
        ghost = Job(kind="edit", model=MODEL, inversion_id="inv_0", params={})
        assert await queue.cancel(ghost.id) is None
        assert not await queue.start(ghost, "w", 1)
        assert not await queue.finish(ghost, "failed")
        assert await queue.get(ghost.id) is None

    _run(prefix, scenario)


@pytest.mark.parametrize("source", ["queued", "running"])
def test_dead_letter_fails_a_queued_or_running_job(prefix: str, source: str) -> None:
    async def scenario(queue: JobQueue) -> None:
        job = await _job_in(queue, source)
        if source == "queued":  # a given-back attempt: running, then queued again, then delivered once more
            assert await queue.start(job, "w", 1)
            assert await queue.requeue(job, {"code": "worker_stopped", "detail": "worker w stopped"})
        delivery = await queue.claim(MODEL, "w", block_ms=10)
        assert delivery is not None and delivery.job_id == job.id
        await queue.dead_letter(job, delivery)
        after = await queue.get(job.id)
        assert after is not None and after.status == "failed"
        assert after.error["code"] == "max_deliveries_exceeded"
        (entry,) = await queue.redis.xrange(queue.keys.dead_letter)
        assert json.loads(entry[1][b"error"])["code"] == "max_deliveries_exceeded"

    _run(prefix, scenario)
