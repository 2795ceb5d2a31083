"""CORS, ``Prefer: wait``, the ``/v1/edits`` form compatibility path and webhook event filters, in-process
over a real Redis (the workers' side of a job is played by ``JobQueue`` itself where one is needed)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from redis.asyncio import Redis
from support import REDIS_URL, WEBHOOK_SECRET, assert_problem, make_png

from bdia.jobqueue.jobs import Job, JobQueue
from bdia.jobqueue.keys import Keys
from bdia.jobqueue.settings import Settings

ORIGIN = "https://editor.example"


def _files(seed: int = 0) -> dict:
    return {"image": ("a.png", make_png(seed), "image/png")}


# --- CORS ---------------------------------------------------------------------------------------


def test_cors_is_off_by_default(api) -> None:
    client = api()
    response = client.get("/v1/models", headers={"Origin": ORIGIN})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = client.options("/v1/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_the_configured_origins(api) -> None:
    client = api(cors_origins=f"{ORIGIN}, https://other.example", api_keys="secret-1")
    preflight = client.options(
        "/v1/inversions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, idempotency-key, prefer, content-type",
        },
    )
    assert preflight.status_code == 200  # no key needed for a preflight
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert {"authorization", "idempotency-key", "prefer"} <= set(
        preflight.headers["access-control-allow-headers"].lower().replace(" ", "").split(",")
    )
    refused = client.get("/v1/models", headers={"Origin": ORIGIN})  # errors carry CORS headers too
    assert_problem(refused, 401, "unauthorized")
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    allowed = client.get("/v1/models", headers={"Origin": ORIGIN, "Authorization": "Bearer secret-1"})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "Preference-Applied" in allowed.headers["access-control-expose-headers"]
    stranger = client.get("/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer secret-1"})
    assert "access-control-allow-origin" not in stranger.headers
    bad_preflight = client.options(
        "/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert bad_preflight.status_code == 400 and "access-control-allow-origin" not in bad_preflight.headers


def test_cors_wildcard(api) -> None:
    response = api(cors_origins="*").get("/healthz", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == "*"


# --- Prefer: wait -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefer", "applied", "at_least"),
    [
        ("wait=0.4", "wait=0.4", 0.4),
        ("wait=100", "wait=0.6", 0.6),  # bounded by BDIA_MAX_WAIT_S
        ('wait="0.4"', "wait=0.4", 0.4),
        ("handling=lenient, wait=0.4", "wait=0.4", 0.4),
        ("respond-async, wait=5", None, 0),
        ("wait=soon", None, 0),  # not understood: ignored (RFC 7240)
        ("wait=-3", None, 0),
        ("", None, 0),
    ],
)
def test_prefer_wait_answers_202_when_time_runs_out(api, prefer, applied, at_least) -> None:
    client = api(max_wait_s=0.6)
    started = time.monotonic()
    response = client.post("/v1/inversions", files=_files(), data={"steps": "4"}, headers={"Prefer": prefer})
    elapsed = time.monotonic() - started
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert response.headers.get("Preference-Applied") == applied
    assert at_least <= elapsed < at_least + 2.0


def test_prefer_wait_answers_200_with_the_job_that_finished_meanwhile(api, prefix) -> None:
    """A stand-in worker finishes the job while the request waits."""
    client = api(max_wait_s=10)

    async def finish_soon() -> None:
        redis = Redis.from_url(REDIS_URL)
        queue = JobQueue(redis, Settings(redis_url=REDIS_URL, key_prefix=prefix), Keys(prefix))
        try:
            for _ in range(200):
                found = [key async for key in redis.scan_iter(match=f"{prefix}:job:*") if key.count(b":") == 2]
                if found:
                    job = await queue.get(found[0].decode().rsplit(":", 1)[1])
                    await asyncio.sleep(0.3)
                    assert await queue.start(job, "stand-in", 1)
                    job = await queue.get(job.id)
                    assert await queue.finish(job, "succeeded", result={"inversion_id": job.inversion_id})
                    return
                await asyncio.sleep(0.02)
        finally:
            await redis.aclose()

    helper = threading.Thread(target=lambda: asyncio.run(finish_soon()))
    helper.start()
    started = time.monotonic()
    response = client.post("/v1/inversions", files=_files(3), data={"steps": "4"}, headers={"Prefer": "wait=10"})
    helper.join(timeout=20)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded" and response.headers["Preference-Applied"] == "wait=10"
    assert "Location" not in response.headers and time.monotonic() - started < 5


def test_prefer_wait_is_off_with_max_wait_zero(api) -> None:
    response = api(max_wait_s=0).post("/v1/inversions", files=_files(), headers={"Prefer": "wait=30"})
    assert response.status_code == 202 and "Preference-Applied" not in response.headers


# --- /v1/edits: JSON, and forms kept working ----------------------------------------------------


def test_forms_posted_to_v1_edits_are_answered_as_uploads(api) -> None:
    client = api()
    old = client.post("/v1/edits", files=_files(5), data={"prompt": "p", "steps": "4"})
    new = client.post("/v1/edits/upload", files=_files(5), data={"prompt": "q", "steps": "4"})
    assert old.status_code == new.status_code == 202
    assert old.json()["kind"] == "edit" and old.json()["inversion_id"] == new.json()["inversion_id"]
    assert_problem(client.post("/v1/edits/upload", json={"prompt": "p"}), 415, "unsupported_media_type")
    assert_problem(
        client.post("/v1/edits/upload", files=_files(), data={"prompt": "p", "colour": "red"}), 422, "invalid_parameter"
    )
    for value in ("None", "null"):  # no such model: what an old generated client sent for a left-out field
        assert_problem(
            client.post("/v1/edits/upload", files=_files(), data={"prompt": "p", "model": value}), 422, "unknown_model"
        )


# --- webhook event filters ----------------------------------------------------------------------


def _outbox(redis_client, prefix: str) -> list[tuple[str, str]]:
    entries = redis_client.xrange(Keys(prefix).webhooks)
    return [(fields[b"job"].decode(), fields[b"event"].decode()) for _, fields in entries]


def _play_worker(prefix: str, job_id: str, steps: int, pause_s: float) -> None:
    """Run the job as a worker would: start, ``steps`` progress events ``pause_s`` apart, succeed."""

    async def play() -> None:
        redis = Redis.from_url(REDIS_URL)
        queue = JobQueue(redis, Settings(redis_url=REDIS_URL, key_prefix=prefix, webhook_progress_s=0.3), Keys(prefix))
        try:
            job = await queue.get(job_id)
            assert await queue.start(job, "stand-in", 1)
            for step in range(1, steps + 1):
                assert await queue.progress(job_id, step, steps, "invert") is False
                await asyncio.sleep(pause_s)
            assert await queue.finish(await queue.get(job_id), "succeeded", result={})
        finally:
            await redis.aclose()

    asyncio.run(play())


def test_webhook_events_choose_what_is_delivered(api, redis_client, prefix) -> None:
    client = api(webhook_secret=WEBHOOK_SECRET, webhook_allow_hosts="127.0.0.1")  # the hooks go to 127.0.0.1
    hook = "http://127.0.0.1:9/hook"
    default = client.post("/v1/inversions", files=_files(1), data={"webhook": hook}).json()
    chosen = client.post(
        "/v1/inversions",
        files=_files(2),
        data={"webhook": hook, "webhook_events": ["started", "progress"]},
    ).json()
    commas = client.post(
        "/v1/inversions", files=_files(3), data={"webhook": hook, "webhook_events": "started,completed"}
    ).json()
    silent = client.post("/v1/inversions", files=_files(4), data={"webhook_events": "progress"}).json()  # no webhook

    _play_worker(prefix, default["id"], steps=3, pause_s=0)
    _play_worker(prefix, chosen["id"], steps=12, pause_s=0.05)  # 0.6 s: at most one progress hook per 0.3 s
    _play_worker(prefix, commas["id"], steps=2, pause_s=0)
    _play_worker(prefix, silent["id"], steps=2, pause_s=0)
    outbox = _outbox(redis_client, prefix)
    assert [e for j, e in outbox if j == default["id"]] == ["succeeded"]
    chosen_events = [e for j, e in outbox if j == chosen["id"]]
    assert chosen_events[0] == "started" and "succeeded" not in chosen_events
    assert 2 <= chosen_events.count("progress") <= 3, chosen_events
    assert [e for j, e in outbox if j == commas["id"]] == ["started", "succeeded"]
    assert not [e for j, e in outbox if j == silent["id"]]
    stored = Job.from_hash(redis_client.hgetall(Keys(prefix).job(chosen["id"])))
    assert stored.webhook_events == ["started", "progress"]


def test_bad_webhook_events_are_refused(api, redis_client, prefix) -> None:
    client = api(webhook_secret=WEBHOOK_SECRET, webhook_allow_hosts="127.0.0.1")  # the hooks go to 127.0.0.1
    hook = "http://127.0.0.1:9/hook"
    for events in ("finished", "started,never", ""):
        data = {"webhook": hook, "webhook_events": events}
        if events == "":
            response = client.post(
                "/v1/reconstructions", json={"inversion_id": "inv_x", "webhook": hook, "webhook_events": []}
            )
        else:
            response = client.post("/v1/inversions", files=_files(), data=data)
        body = assert_problem(response, 422, "invalid_parameter")
        assert body["errors"][0]["loc"][:2] == ["body", "webhook_events"], body
    for events in ([{}], [1], ["started", None], 5, None):  # JSON of the wrong shape
        response = client.post("/v1/edits", json={"inversion_id": "inv_x", "prompt": "p", "webhook_events": events})
        assert_problem(response, 422, "invalid_parameter")
    assert not redis_client.xlen(Keys(prefix).queue("tiny-random"))
    # One name, or names separated by commas, as a string: accepted (then 404: no such inversion).
    response = client.post("/v1/reconstructions", json={"inversion_id": "inv_x", "webhook_events": "started"})
    assert_problem(response, 404, "not_found")
