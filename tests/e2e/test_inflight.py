"""One job makes an inversion at a time, and a crashed request does not hold its Idempotency-Key:
through the real API and worker processes."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import httpx
import redis
from support import REDIS_URL, Deployment, announce_models, assert_problem, make_png, model_record, start_deployment

from bdia.client import BdiaClient
from bdia.jobqueue.settings import Settings


def test_identical_inversions_sent_together_make_one_job(deployment: Deployment, client: BdiaClient) -> None:
    n, image = 20, make_png(501, (64, 48))
    barrier = threading.Barrier(n)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=deployment.url, timeout=60) as http:
            http.get("/healthz")  # connected before the release, so that the requests arrive together
            barrier.wait(30)
            return http.post("/v1/inversions", files={"image": ("a.png", image, "image/png")}, data={"steps": "60"})

    with ThreadPoolExecutor(n) as pool:
        responses = list(pool.map(post, range(n)))
    assert {r.status_code for r in responses} <= {200, 202}, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    (inversion_id,) = {b["inversion_id"] for b in bodies}
    jobs = {b["id"] if "kind" in b else b["job_id"] for b in bodies if "kind" in b or b["job_id"]}
    assert len(jobs) == 1, jobs  # every request got the one job (or, once it finished, its inversion)
    (job_id,) = jobs
    job = client.wait(job_id, timeout=120)
    assert job.status == "succeeded" and job.metrics["inversion_nfe"] > 0
    made = [j.id for j in client.all_jobs(kind=["invert"]) if j.inversion_id == inversion_id]
    assert made == [job_id]  # one job computed it
    assert client.inversion(inversion_id).fingerprint_id == job.result["fingerprint_id"]


def test_an_edit_sent_while_its_inversion_runs_does_not_invert_again(client: BdiaClient) -> None:
    # The README's client example: invert, then edit at once, while the inversion is still being made.
    submitted = client.invert(make_png(502), "a gradient", steps=150)
    edit = client.edit(submitted.inversion_id, "a red gradient")
    assert client.job(submitted.job.id).status in ("queued", "running")  # sent while it was being made
    inverted = client.wait(submitted.job.id, timeout=120)
    edited = client.wait(edit.id, timeout=120)
    assert inverted.status == edited.status == "succeeded"
    assert edited.metrics["inversion_cached"] is True and edited.metrics["inversion_nfe"] == 0
    total = inverted.metrics["nfe"] + edited.metrics["nfe"]
    assert total == inverted.metrics["inversion_nfe"] + edited.metrics["regenerate_nfe"]  # 150 + K, not 150 + 150 + K
    assert edited.started_at >= inverted.finished_at


def test_a_crashed_request_frees_its_idempotency_key_after_the_lease(redis_client: redis.Redis, tmp_path: Path) -> None:
    lease = 1.0
    stack = start_deployment(redis_client, tmp_path / "logs", [], idempotency_lease_s=str(lease))
    announce_models(Settings(redis_url=REDIS_URL, key_prefix=stack.prefix), [model_record()])  # no worker runs it
    files = {"image": ("a.png", make_png(503), "image/png")}
    key = {"Idempotency-Key": "crash-1"}
    try:
        # The first request waits for its job (no worker runs it), holding its key past several leases.
        def first() -> None:
            with httpx.Client(base_url=stack.url, timeout=60) as http, suppress(httpx.TransportError):
                http.post("/v1/inversions", files=files, data={"steps": "4"}, headers={**key, "Prefer": "wait=60"})

        waiting = threading.Thread(target=first)
        waiting.start()
        deadline = time.monotonic() + 20
        while not redis_client.zcard(stack.keys.tenant_history("public")):
            assert time.monotonic() < deadline, stack.log("api")
            time.sleep(0.05)
        (queued,) = redis_client.zrange(stack.keys.tenant_history("public"), 0, -1)
        time.sleep(2.5 * lease)
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            assert_problem(http.post("/v1/inversions", files=files, data={"steps": "4"}, headers=key), 409)

        # Its API process dies mid-request (the request fails): nothing releases the key; a new process
        # takes over.
        assert stack.api is not None
        stack.api.kill()
        stack.api.wait(10)
        waiting.join(30)
        stack.start_api()
        stack.wait_ready(0)
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            deadline = time.monotonic() + lease + 10
            while True:
                retry = http.post("/v1/inversions", files=files, data={"steps": "4"}, headers=key)
                if retry.status_code != 409 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert retry.status_code == 202, retry.text
            assert retry.json()["id"] == queued.decode()  # the job the crashed request queued
            replay = http.post("/v1/inversions", files=files, data={"steps": "4"}, headers=key)
            assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == retry.json()
        (slot,) = redis_client.scan_iter(match=f"{stack.prefix}:idem:*")
        assert redis_client.ttl(slot) > 3600  # a completed response is kept for the full TTL
    finally:
        stack.close()
