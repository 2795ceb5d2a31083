"""Idempotency keys, cancellation and Server-Sent Events, through the real worker."""

from __future__ import annotations

import time

import httpx
from support import Deployment, make_png

from bdia.client import BdiaClient

LONG_STEPS = 400  # long enough to be caught running, canceled after its first steps


def _files(seed: int) -> dict:
    return {"image": ("a.png", make_png(seed), "image/png")}


def test_same_key_same_body_replays_the_response(http: httpx.Client, redis_client, deployment: Deployment) -> None:
    headers = {"Idempotency-Key": "key-1"}
    first = http.post("/v1/inversions", files=_files(10), data={"steps": "4"}, headers=headers)
    assert first.status_code == 202
    second = http.post("/v1/inversions", files=_files(10), data={"steps": "4"}, headers=headers)
    assert second.status_code == 202 and second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert redis_client.hget(deployment.keys.stats, 'jobs_submitted_total{kind="invert"}') is not None

    # The same key with another body is refused, and queues nothing.
    depth = int(redis_client.xlen(deployment.keys.queue("tiny-random")))
    other = http.post("/v1/inversions", files=_files(11), data={"steps": "4"}, headers=headers)
    assert other.status_code == 422 and other.headers["content-type"] == "application/problem+json"
    assert other.json()["code"] == "idempotency_key_reused"
    assert int(redis_client.xlen(deployment.keys.queue("tiny-random"))) <= depth

    # JSON bodies too: same key, same edit → one job.
    inversion_id = first.json()["inversion_id"]
    BdiaClient(deployment.url).wait(first.json()["id"])
    body = {"inversion_id": inversion_id, "prompt": "an edit"}
    a = http.post("/v1/edits", json=body, headers={"Idempotency-Key": "key-2"})
    b = http.post("/v1/edits", json=body, headers={"Idempotency-Key": "key-2"})
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    c = http.post("/v1/edits", json={**body, "prompt": "another"}, headers={"Idempotency-Key": "key-2"})
    assert c.status_code == 422 and c.json()["code"] == "idempotency_key_reused"


def test_cancel_running_and_queued_jobs(client: BdiaClient, deployment: Deployment) -> None:
    # One more long job than there are workers: the last one waits in the queue.
    jobs = [client.invert(make_png(20 + n), "", steps=LONG_STEPS).job for n in range(len(deployment.workers) + 1)]
    for event in client.events(jobs[0].id):  # until the first step has run
        if event.event == "progress":
            break
    deadline = time.monotonic() + 60
    while (states := [client.job(j.id) for j in jobs]) and sum(s.status == "running" for s in states) < len(
        deployment.workers
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (waiting,) = [s for s in states if s.status == "queued"]
    assert waiting.queue_position == 1

    canceled = client.cancel(waiting.id)
    assert canceled.status == "canceled" and canceled.queue_position is None
    assert client.cancel(waiting.id).status == "canceled"  # idempotent
    assert [e.event for e in client.events(waiting.id)] == ["queued", "canceled"]

    for running in [s for s in states if s.status == "running"]:
        asked = client.cancel(running.id)
        assert asked.cancel_requested and asked.status in ("running", "canceled")
        final = client.wait(running.id, raise_on_failure=False, timeout=60)
        assert final.status == "canceled"
        assert final.progress is None or final.progress.step < LONG_STEPS
        assert 0 < final.metrics["nfe"] < LONG_STEPS  # the steps it ran before it stopped
        assert client.cancel(running.id).status == "canceled"
        events = [e.event for e in client.events(running.id)]
        assert events[0] == "queued" and events[-1] == "canceled" and "started" in events


def test_events_late_subscriber_and_resume(client: BdiaClient) -> None:
    job = client.invert(make_png(30), "", steps=5).job
    live = list(client.events(job.id))  # subscribed early: follows the job to its end
    late = list(client.events(job.id))  # subscribed after the end: gets the past events
    assert [e.id for e in late] == [e.id for e in live]
    names = [e.event for e in late]
    assert names[:2] == ["queued", "started"] and names[-1] == "succeeded"
    progress = [e.data for e in late if e.event == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5]
    assert all(p["total"] == 5 and p["stage"] == "invert" for p in progress)
    assert late[-1].data["result"]["inversion_id"] == job.inversion_id

    resumed = list(client.events(job.id, last_event_id=late[2].id))
    assert [e.id for e in resumed] == [e.id for e in late[3:]]


def test_events_stream_is_server_sent_events(http: httpx.Client, client: BdiaClient) -> None:
    job = client.wait(client.invert(make_png(31), "", steps=3).job)
    with http.stream("GET", f"/v1/jobs/{job.id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert text.startswith("id: ") and "event: queued\ndata: " in text and text.endswith("\n\n")


def test_waiting_by_polling_reports_progress(client: BdiaClient) -> None:
    seen: list[int] = []
    started = time.monotonic()
    job = client.wait(
        client.invert(make_png(32), "", steps=40).job,
        stream=False,
        poll_interval=0.05,
        on_progress=lambda p: seen.append(p.step),
    )
    assert job.status == "succeeded" and time.monotonic() - started < 120
    assert seen == sorted(seen)
