"""Webhooks delivered to a real HTTP receiver on 127.0.0.1: Standard Webhooks signatures with each
tenant's own secret, retries with backoff on the terminal event, and deliveries that no input can stop
(a malformed stored URL, a slow receiver, a name that resolves to loopback); SSRF destinations refused
at submission; plus ``/metrics`` and the JSON logs of the same deployment.

The receivers listen on 127.0.0.1, which webhooks may not reach by default: the ``hooks`` deployment
allows it (``BDIA_WEBHOOK_ALLOW_HOSTS=127.0.0.1``); ``production`` (no allow list) shows the defaults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import redis
from support import ALICE, BOB, KEYS, WEBHOOK_SECRET, Deployment, assert_problem, bearer, make_png, start_deployment

from bdia.app.webhooks import sign, verify
from bdia.client import BdiaClient
from bdia.jobqueue.jobs import Job


def _standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks v1 signature, computed from the spec (not from bdia.app.webhooks)."""
    key = base64.b64decode(secret.split("_", 1)[1])
    return (
        "v1,"
        + base64.b64encode(hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()).decode()
    )


def _tenant_secret(tenant: str) -> str:
    """A tenant's signing secret as docs/operations.md defines it (derived from the deployment's)."""
    key = base64.b64decode(WEBHOOK_SECRET.split("_", 1)[1])
    digest = hmac.new(key, f"bdia webhook secret v1:{tenant}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()


class Receiver:
    """A local HTTP server that fails the first ``failures`` deliveries, then accepts; each answer takes
    ``delay_s``. ``arrivals`` records when each request came in (before the delay)."""

    def __init__(self, failures: int = 0, delay_s: float = 0.0) -> None:
        self.failures, self.deliveries, self.arrivals = failures, [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.arrivals.append(time.monotonic())
                time.sleep(delay_s)
                receiver.deliveries.append((time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(receiver.deliveries) <= receiver.failures else 204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def wait(self, count: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.deliveries) >= count

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hooks(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The production settings, with webhooks allowed to reach 127.0.0.1 (where the receivers are)."""
    running = start_deployment(
        redis_client,
        tmp_path_factory.mktemp("hooks"),
        ["hook0"],
        api_keys=KEYS,
        webhook_secret=WEBHOOK_SECRET,
        webhook_backoff_s="0.2",
        webhook_allow_hosts="127.0.0.1",
        log_format="json",
    )
    yield running
    running.close()


def _stored_event(deployment: Deployment, redis_client: redis.Redis, url: str, tenant: str = "alice") -> str:
    """A finished job whose webhook URL went into Redis unchecked (as the API stored them before URLs were
    checked), and its outbox entry, as the job's final transition appends it; returns the job's id."""
    job = Job(
        kind="reconstruct",
        model="tiny-random",
        tenant=tenant,
        webhook=url,
        inversion_id="inv_" + "0" * 32,
        params={},
        status="canceled",
        finished_at=time.time(),
    )
    redis_client.hset(deployment.keys.job(job.id), mapping=job.to_hash())
    redis_client.xadd(deployment.keys.webhooks, {"job": job.id, "event": "canceled"})
    return job.id


def _outcomes(deployment: Deployment, redis_client: redis.Redis) -> dict[str, int]:
    stats = redis_client.hgetall(deployment.keys.stats)
    prefix = b'webhooks_total{outcome="'
    return {k[len(prefix) : -2].decode(): int(v) for k, v in stats.items() if k.startswith(prefix)}


def _log_lines(deployment: Deployment, job_id: str) -> list[str]:
    lines = [json.loads(line) for line in deployment.log("api", 1_000_000).splitlines() if line.startswith("{")]
    return [line["message"] for line in lines if job_id in line["message"]]


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


def test_the_final_event_is_delivered_signed_after_retries(hooks) -> None:
    receiver = Receiver(failures=2)
    try:
        with BdiaClient(hooks.url, api_key=ALICE, timeout=30) as client:
            job = client.invert(make_png(31), "a gradient", steps=4, webhook=receiver.url).job
            assert client.wait(job.id, timeout=60).status == "succeeded"
            deadline = time.monotonic() + 30
            while len(receiver.deliveries) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert len(receiver.deliveries) == 3, receiver.deliveries
        (t0, first, _), (t1, _, _), (t2, last, body) = receiver.deliveries
        assert t1 - t0 >= 0.15 and t2 - t1 >= 0.35  # 0.2 s, then 0.4 s
        assert first["webhook-id"] == last["webhook-id"]  # one message, retried
        expected = _standard_signature(_tenant_secret("alice"), last["webhook-id"], last["webhook-timestamp"], body)
        assert last["webhook-signature"] == expected
        event = json.loads(body)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job.id
        assert event["data"]["status"] == "succeeded" and "webhook" not in event["data"]
    finally:
        receiver.close()


def test_webhook_urls_are_checked(production, redis_client) -> None:
    """Malformed URLs (one that made the dispatcher die, one that made the API answer 500) and internal
    destinations in any spelling are refused at submission, and nothing is queued."""
    malformed = (
        "ftp://x/y",
        "http://",
        "not a url",
        "http://127.0.0.1:notaport/x",
        "http://[::1/",
        "http://u:pw@x.io/",
    )
    forbidden = (
        "http://127.0.0.1:8000/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest",
        "http://0x7f000001/x",
        "http://2130706433/x",
        "http://127.1/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://10.0.0.1/x",
        "http://localhost/x",
    )
    queued = redis_client.xlen(production.keys.queue("tiny-random"))
    with httpx.Client(base_url=production.url, headers=bearer(BOB), timeout=10) as http:
        for urls, code in ((malformed, "invalid_parameter"), (forbidden, "webhook_url_forbidden")):
            for url in urls:
                response = http.post("/v1/reconstructions", json={"inversion_id": "inv_x", "webhook": url})
                assert_problem(response, 422, code)
            upload = http.post("/v1/inversions", files={"image": ("a.png", make_png(34))}, data={"webhook": urls[-1]})
            assert_problem(upload, 422, code)
    assert redis_client.xlen(production.keys.queue("tiny-random")) == queued


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


def test_webhook_events_started_and_throttled_progress(hooks) -> None:
    """Asked for, ``started`` and ``progress`` are delivered too; progress at most once per
    ``BDIA_WEBHOOK_PROGRESS_S`` (5 s here) however many steps run."""
    receiver = Receiver(failures=0)
    try:
        with BdiaClient(hooks.url, api_key=ALICE, timeout=30) as client:
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


def test_a_malformed_stored_url_stops_no_delivery(hooks, redis_client) -> None:
    """Entries whose URL the dispatcher cannot even parse (stored before URLs were checked) are refused
    one by one; the good entries queued behind them, and after them, are delivered."""
    receiver = Receiver()
    try:
        before = _outcomes(hooks, redis_client).get("refused", 0)
        poisoned = [
            _stored_event(hooks, redis_client, url)
            for url in ("http://127.0.0.1:notaport/x", "http://[::1/", "http://u:pw@127.0.0.1:notaport/x", "x:/")
        ]
        first = _stored_event(hooks, redis_client, receiver.url)
        assert receiver.wait(1, timeout_s=10), _outcomes(hooks, redis_client)
        second = _stored_event(hooks, redis_client, receiver.url, tenant="bob")
        assert receiver.wait(2, timeout_s=10), "the dispatcher stopped after a malformed URL"
        delivered = [json.loads(body)["data"]["id"] for _, _, body in receiver.deliveries]
        assert delivered == [first, second]
        deadline = time.monotonic() + 10
        while _outcomes(hooks, redis_client).get("refused", 0) < before + len(poisoned) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _outcomes(hooks, redis_client).get("refused", 0) == before + len(poisoned)
        mine = {*poisoned, first, second}
        while mine & {f[b"job"].decode() for _, f in redis_client.xrange(hooks.keys.webhooks)}:
            assert time.monotonic() < deadline, "an entry was left in the outbox"
            time.sleep(0.05)
    finally:
        receiver.close()


def test_a_slow_receiver_delays_only_itself(hooks, redis_client) -> None:
    """Bob's receiver takes 5 s to answer; Alice's event, queued while Bob's is being delivered, arrives
    within a fraction of that."""
    slow, fast = Receiver(delay_s=5.0), Receiver()
    try:
        _stored_event(hooks, redis_client, slow.url, tenant="bob")
        deadline = time.monotonic() + 10
        while not slow.arrivals and time.monotonic() < deadline:
            time.sleep(0.02)
        assert slow.arrivals, "the slow receiver was never called"
        queued = time.monotonic()
        job_id = _stored_event(hooks, redis_client, fast.url)
        assert fast.wait(1, timeout_s=10)
        took = fast.deliveries[0][0] - queued
        assert took < 2.0, f"Alice's webhook took {took:.2f} s behind Bob's slow receiver"
        assert json.loads(fast.deliveries[0][2])["data"]["id"] == job_id
        assert slow.wait(1, timeout_s=10)  # and Bob's still arrives
    finally:
        slow.close()
        fast.close()


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(production, redis_client) -> None:
    """``localhost`` is refused at submission; stored anyway (as before the checks), the dispatcher
    resolves it, finds loopback addresses, and neither connects nor tries again."""
    receiver = Receiver()
    try:
        before = _outcomes(production, redis_client).get("refused", 0)
        job_id = _stored_event(production, redis_client, f"http://localhost:{receiver.port}/hook")
        deadline = time.monotonic() + 10
        while _outcomes(production, redis_client).get("refused", 0) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _outcomes(production, redis_client).get("refused", 0) == before + 1
        time.sleep(0.5)
        assert not receiver.deliveries and not receiver.arrivals
        (line,) = _log_lines(production, job_id)
        assert "refused: localhost:" in line and "is not a public address (loopback)" in line, line
    finally:
        receiver.close()


def test_credentials_in_urls_never_reach_the_logs(hooks, redis_client) -> None:
    """A URL with credentials is refused at submission without being echoed; stored anyway, and with a
    token in its query, the log names the receiver without either."""
    with httpx.Client(base_url=hooks.url, headers=bearer(ALICE), timeout=10) as http:
        url = "http://user:hunter2-pw@example.com/hook"
        response = http.post("/v1/reconstructions", json={"inversion_id": "inv_x", "webhook": url})
        assert_problem(response, 422, "invalid_parameter")
        assert "hunter2" not in response.text
    with_credentials = _stored_event(hooks, redis_client, "http://user:hunter2-pw@127.0.0.1:1/in?token=tok-hunter3")
    with_token = _stored_event(hooks, redis_client, "http://127.0.0.1:1/in?token=tok-hunter4")  # nothing listens
    deadline = time.monotonic() + 10
    while not (_log_lines(hooks, with_credentials) and _log_lines(hooks, with_token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    (refused,), failed = _log_lines(hooks, with_credentials), _log_lines(hooks, with_token)
    assert "to http://127.0.0.1:1/in?… refused" in refused, refused
    assert failed and "to http://127.0.0.1:1/in?… attempt 1 failed" in failed[0], failed
    log = hooks.log("api", 1_000_000)
    assert "hunter2" not in log and "tok-hunter" not in log


def test_tenants_cannot_forge_each_others_webhooks(hooks) -> None:
    """Each tenant's webhooks are signed with its own secret: Alice's verify with Alice's secret only, so
    a tenant who knows its own secret cannot sign an event another tenant's receiver accepts."""
    receiver = Receiver()
    try:
        with BdiaClient(hooks.url, api_key=ALICE, timeout=30) as client:
            job = client.invert(make_png(35), "x", steps=4, webhook=receiver.url).job
            client.wait(job.id, timeout=60)
        assert receiver.wait(1, timeout_s=30)
        _, headers, body = receiver.deliveries[0]
        assert verify(_tenant_secret("alice"), headers, body)
        assert not verify(_tenant_secret("bob"), headers, body)
        assert not verify(WEBHOOK_SECRET, headers, body)
        forged = {
            **headers,
            "webhook-signature": sign(
                _tenant_secret("bob"), headers["webhook-id"], int(headers["webhook-timestamp"]), body
            ),
        }
        assert not verify(_tenant_secret("alice"), forged, body)
    finally:
        receiver.close()
