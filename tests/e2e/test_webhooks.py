"""Webhooks delivered to a real HTTP receiver on 127.0.0.1: Standard Webhooks signatures, retries
with backoff on the terminal event; plus ``/metrics`` and the JSON logs of the same deployment."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from support import ALICE, BOB, WEBHOOK_SECRET, assert_problem, bearer, make_png

from bdia.app.webhooks import sign, verify
from bdia.client import BdiaClient


def _standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks v1 signature, computed from the spec (not from bdia.app.webhooks)."""
    key = base64.b64decode(secret.split("_", 1)[1])
    return (
        "v1,"
        + base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()
    )


class Receiver:
    """A local HTTP server that fails the first ``failures`` deliveries, then accepts."""

    def __init__(self, failures: int) -> None:
        self.failures, self.deliveries = failures, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(receiver.deliveries) <= receiver.failures else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


def test_signatures_follow_the_standard() -> None:
    body = b'{"type":"job.succeeded"}'
    signature = sign(WEBHOOK_SECRET, "msg_1", 1_700_000_000, body)
    assert signature == _standard_signature(WEBHOOK_SECRET, "msg_1", "1700000000", body)
    now = str(int(time.time()))
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": now,
        "webhook-signature": "v1,bogus " + sign(WEBHOOK_SECRET, "msg_1", int(now), body),
    }
    assert verify(WEBHOOK_SECRET, headers, body)
    assert not verify(WEBHOOK_SECRET, headers, body + b" ")
    assert not verify(WEBHOOK_SECRET, {**headers, "webhook-timestamp": "1700000000"}, body)  # replayed


def test_the_final_event_is_delivered_signed_after_retries(production) -> None:
    receiver = Receiver(failures=2)
    try:
        with BdiaClient(production.url, api_key=ALICE, timeout=30) as client:
            job = client.invert(make_png(31), "a gradient", steps=4, webhook=receiver.url).job
            assert client.wait(job.id, timeout=60).status == "succeeded"
            deadline = time.monotonic() + 30
            while len(receiver.deliveries) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(receiver.deliveries) == 3, receiver.deliveries
        (t0, first, _), (t1, _, _), (t2, last, body) = receiver.deliveries
        assert t1 - t0 >= 0.15 and t2 - t1 >= 0.35  # 0.2 s, then 0.4 s
        assert first["webhook-id"] == last["webhook-id"]  # one message, retried
        expected = _standard_signature(WEBHOOK_SECRET, last["webhook-id"], last["webhook-timestamp"], body)
        assert last["webhook-signature"] == expected
        event = json.loads(body)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job.id
        assert event["data"]["status"] == "succeeded" and "webhook" not in event["data"]
    finally:
        receiver.close()


def test_webhook_urls_are_checked(production) -> None:
    with httpx.Client(base_url=production.url, headers=bearer(BOB), timeout=10) as http:
        for url in ("ftp://x/y", "http://", "not a url"):
            response = http.post("/v1/reconstructions", json={"inversion_id": "inv_x", "webhook": url})
            assert_problem(response, 422, "invalid_parameter")


def test_metrics_and_json_logs(production) -> None:
    with BdiaClient(production.url, api_key=ALICE, timeout=30) as client:
        submitted = client.invert(make_png(32), "x", steps=4)
        client.wait(submitted.job.id, timeout=60)
        assert client.invert(make_png(32), "x", steps=4).cached
        edit = client.wait(client.edit(submitted.inversion_id, "y").id, timeout=60)
        assert edit.metrics["inversion_cached"]
    text = httpx.get(f"{production.url}/metrics", timeout=10).text
    samples = [
        'bdia_queue_depth{model="tiny-random"}',
        "bdia_cache_hit_ratio ",
        "# TYPE bdia_job_seconds histogram",
        'bdia_job_seconds_bucket{kind="invert",status="succeeded",le="+Inf"}',
        'bdia_nfe_spent_total{kind="edit"}',
        'bdia_nfe_saved_total{kind="edit"}',
        "bdia_job_queue_seconds_count",
        "bdia_job_run_seconds_sum",
    ]
    for sample in samples:
        assert sample in text, sample
    saved = [line for line in text.splitlines() if line.startswith('bdia_nfe_saved_total{kind="edit"}')]
    assert float(saved[0].split()[-1]) >= 4
    for name in ("api", "prod0"):
        lines = [json.loads(line) for line in production.log(name).splitlines()[1:] if line.startswith("{")]
        assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line.get("job_id") == edit.id for line in map(json.loads, production.log("prod0").splitlines()[1:]))


def test_webhook_events_started_and_throttled_progress(production) -> None:
    """Asked for, ``started`` and ``progress`` are delivered too; progress at most once per
    ``BDIA_WEBHOOK_PROGRESS_S`` (5 s here) however many steps run."""
    receiver = Receiver(failures=0)
    try:
        with BdiaClient(production.url, api_key=ALICE, timeout=30) as client:
            events = ["started", "progress", "completed"]
            job = client.invert(make_png(33), "", steps=300, webhook=receiver.url, webhook_events=events).job
            done = client.wait(job.id, timeout=120)
            only_final = client.reconstruct(job.inversion_id, webhook=receiver.url, webhook_events=["completed"])
            client.wait(only_final.id, timeout=60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                json.loads(body)["data"]["id"] == only_final.id for _, _, body in receiver.deliveries
            ):
                time.sleep(0.05)
        delivered = [json.loads(body) for _, _, body in receiver.deliveries]
        mine = [event["type"] for event in delivered if event["data"]["id"] == job.id]
        assert sorted(set(mine)) == ["job.progress", "job.started", "job.succeeded"], mine
        assert mine.count("job.started") == 1 and mine.count("job.succeeded") == 1
        assert 1 <= mine.count("job.progress") <= done.metrics.run_seconds / 5 + 1, (mine, done.metrics)
        progress = [e for e in delivered if e["data"]["id"] == job.id and e["type"] == "job.progress"]
        assert all(e["data"]["progress"] is not None for e in progress)
        assert [e["type"] for e in delivered if e["data"]["id"] == only_final.id] == ["job.succeeded"]
    finally:
        receiver.close()
