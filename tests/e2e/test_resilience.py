"""Attacks on a real ``bdia serve`` process that used to take the API down: many open event streams,
reconnects at a finished job's final event, a hung Redis, uploads that are costly to decode, and
clients that send their requests slowly (slowloris)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import signal
import statistics
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Iterator

import httpx
import pytest
import redis
from PIL import Image
from redis.asyncio import Redis
from support import ALICE, BOB, KEYS, Deployment, assert_problem, bearer, free_port, start_deployment

from bdia.client import BdiaClient
from bdia.jobqueue.jobs import Job, JobQueue
from bdia.jobqueue.settings import Settings

STREAMS = 150
"""Open event streams in the attack: more than the old shared pool (100 connections) could hold."""
HEAD_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 2.0


@pytest.fixture(scope="module")
def limited(redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An API (no workers: jobs stay queued) with a small Redis pool, a stream cap and short deadlines."""
    running = start_deployment(
        redis_client,
        tmp_path_factory.mktemp("limited"),
        [],
        api_keys=KEYS,
        redis_max_connections="8",
        max_streams_per_tenant=str(STREAMS),
        http_header_timeout_s=str(HEAD_TIMEOUT_S),
        http_body_timeout_s=str(BODY_TIMEOUT_S),
    )
    yield running
    running.close()


def _submit(redis_url: str, prefix: str, tenant: str, count: int) -> list[str]:
    """Queue ``count`` invert jobs of ``tenant`` straight into Redis (no worker will take them)."""

    async def submit() -> list[str]:
        client = Redis.from_url(redis_url)
        queue = JobQueue(client, Settings(redis_url=redis_url, key_prefix=prefix))
        try:
            jobs = []
            for _ in range(count):
                job = Job(
                    kind="invert", model="tiny-random", tenant=tenant, inversion_id=f"inv_{uuid.uuid4().hex}", params={}
                )
                jobs.append((await queue.submit(job)).id)
            return jobs
        finally:
            await client.aclose()

    return asyncio.run(submit())


async def _request_head(port: int, path: str, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _read_until(reader: asyncio.StreamReader, marker: bytes, timeout_s: float = 20) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while marker not in data:
        chunk = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
        if not chunk:
            break
        data += chunk
    return data


def _wait(url: str, job_id: str, timeout: float) -> None:
    with BdiaClient(url, api_key=ALICE) as client:
        client.wait(job_id, timeout=timeout)


def test_many_event_streams_hold_no_pooled_connection_and_a_tenant_has_a_cap(limited: Deployment) -> None:
    jobs = _submit(limited.redis_url, limited.prefix, "alice", 5)
    (bobs,) = _submit(limited.redis_url, limited.prefix, "bob", 1)
    port = limited.port

    async def attack() -> None:
        streams, heads = [], []
        for start in range(0, STREAMS, 25):  # 25 at a time: the attack is streams held open, not a burst
            batch = await asyncio.gather(
                *(
                    _request_head(port, f"/v1/jobs/{jobs[n % len(jobs)]}/events", ALICE)
                    for n in range(start, start + 25)
                )
            )
            heads += await asyncio.gather(*(_read_until(reader, b"event: queued") for reader, _ in batch))
            streams += batch
        bad = [head for head in heads if not (head.startswith(b"HTTP/1.1 200") and b"event: queued" in head)]
        assert not bad, (len(bad), bad[0])

        async with httpx.AsyncClient(base_url=limited.url, headers=bearer(ALICE), timeout=10) as http:
            answers = await asyncio.gather(*(http.get(f"/v1/jobs/{job}") for job in jobs * 4), http.get("/v1/jobs"))
            assert [a.status_code for a in answers] == [200] * len(answers), answers[-1].text

            over = await http.get(f"/v1/jobs/{jobs[0]}/events")  # alice's 151st stream
            assert_problem(over, 429, "rate_limited")
            # The client's wait() then polls instead of failing (it times out here: no worker runs the job).
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(_wait, limited.url, jobs[0], 1.0)
            async with http.stream("GET", f"/v1/jobs/{bobs}/events", headers=bearer(BOB)) as other:
                assert other.status_code == 200  # another tenant's streams count apart

            _, writer = streams.pop()  # a closed stream frees its slot
            writer.close()
            for _ in range(50):
                probe, probe_writer = await _request_head(port, f"/v1/jobs/{jobs[0]}/events", ALICE)
                head = await _read_until(probe, b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 200"):
                    streams.append((probe, probe_writer))
                    break
                probe_writer.close()
                await asyncio.sleep(0.1)
            else:
                pytest.fail("closing a stream did not free its slot")

            for job in jobs:  # live events reach every stream through the one reader; each stream then ends
                assert (await http.post(f"/v1/jobs/{job}/cancel")).status_code == 200
        tails = await asyncio.gather(*(_read_until(reader, b"\r\n0\r\n\r\n") for reader, _ in streams))
        ended = [tail for tail in tails if b"event: canceled" in tail and tail.endswith(b"\r\n0\r\n\r\n")]
        assert len(ended) == STREAMS, next(tail for tail in tails if tail not in ended)
        for _, writer in streams:
            writer.close()

    asyncio.run(attack())


def test_a_reconnect_at_the_final_event_ends_and_a_bad_last_event_id_is_refused(limited: Deployment) -> None:
    (job,) = _submit(limited.redis_url, limited.prefix, "alice", 1)
    with httpx.Client(base_url=limited.url, headers=bearer(ALICE), timeout=5) as http:
        assert http.post(f"/v1/jobs/{job}/cancel").status_code == 200
        log = http.get(f"/v1/jobs/{job}/events")
        ids = [line.removeprefix("id: ") for line in log.text.splitlines() if line.startswith("id: ")]
        names = [line.removeprefix("event: ") for line in log.text.splitlines() if line.startswith("event: ")]
        assert names == ["queued", "canceled"], log.text

        started = time.monotonic()
        rest = http.get(f"/v1/jobs/{job}/events", headers={"Last-Event-ID": ids[-1]})  # EventSource's reconnect
        assert rest.status_code == 200 and "event:" not in rest.text, rest.text
        assert time.monotonic() - started < 2
        tail = http.get(f"/v1/jobs/{job}/events", headers={"Last-Event-ID": ids[0]})
        assert [line for line in tail.text.splitlines() if line.startswith("event: ")] == ["event: canceled"]

        for bad in ["garbage", "1-2-3", "-1", "99999999999999999999999-0"]:
            body = assert_problem(http.get(f"/v1/jobs/{job}/events", headers={"Last-Event-ID": bad}), 422)
            assert body["code"] == "invalid_parameter" and body["errors"][0]["loc"] == ["header", "Last-Event-ID"]


def _refused_png(size: int = 4000) -> bytes:
    """A ``size``² PNG (16 MP) with good chunk checksums whose pixel data ends early: it passes every check
    but a full decode, which costs the server hundreds of milliseconds and then refuses it."""
    encoded = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 60)).save(encoded, "PNG", compress_level=1)
    png = encoded.getvalue()
    idat, position, head = b"", 8, b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        if kind == b"IHDR":
            head = png[position : position + 12 + length]
        elif kind == b"IDAT":
            idat += png[position + 8 : position + 8 + length]
        position += 12 + length
    cut = idat[: len(idat) * 9 // 10]  # the zlib stream breaks off after about 90 % of the rows

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return png[:8] + head + chunk(b"IDAT", cut) + chunk(b"IEND", b"")


def _healthz_p50(url: str, count: int = 40) -> float:
    with httpx.Client(base_url=url, timeout=10) as http:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            times.append(time.perf_counter() - started)
            time.sleep(0.02)
    return statistics.median(times)


def test_decoding_uploads_does_not_stall_the_event_loop(limited: Deployment) -> None:
    png = _refused_png()
    files = {"image": ("big.png", png, "image/png")}
    with httpx.Client(base_url=limited.url, headers=bearer(ALICE), timeout=30) as http:
        refused = http.post("/v1/inversions", files=files, data={"prompt": "x"})
        assert_problem(refused, 422, "invalid_image")  # decoded whole, then refused

    idle = _healthz_p50(limited.url)
    stop = threading.Event()
    posted: list[int] = []

    def upload() -> None:
        with httpx.Client(base_url=limited.url, headers=bearer(ALICE), timeout=30) as http:
            while not stop.is_set():
                answer = http.post(
                    "/v1/inversions", files={"image": ("big.png", png, "image/png")}, data={"prompt": "x"}
                )
                posted.append(answer.status_code)

    uploaders = [threading.Thread(target=upload) for _ in range(2)]
    for thread in uploaders:
        thread.start()
    try:
        time.sleep(0.5)
        loaded = _healthz_p50(limited.url)
    finally:
        stop.set()
        for thread in uploaders:
            thread.join(60)
    print(f"/healthz p50: {idle * 1000:.1f} ms idle, {loaded * 1000:.1f} ms with 2 clients uploading 16 MP PNGs")
    assert len(posted) >= 2 and set(posted) == {422}, posted
    assert loaded < max(0.06, 10 * idle), (idle, loaded)


def test_slow_clients_are_cut_off(limited: Deployment) -> None:
    port = limited.port

    async def slowloris() -> None:
        async def dribble_head() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            try:
                for n in range(40):  # one header line every 0.2 s, never the blank line
                    writer.write(f"X-Slow-{n}: a\r\n".encode())
                    await writer.drain()
                    if await _closed(reader, 0.2):
                        return time.monotonic() - started
            except ConnectionError:
                return time.monotonic() - started
            finally:
                writer.close()
            return float("inf")

        async def say_nothing() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            closed = await _closed(reader, 8)
            writer.close()
            return time.monotonic() - started if closed else float("inf")

        async def dribble_body() -> tuple[float, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(
                b"POST /v1/inversions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer " + ALICE.encode() + b"\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
            )
            answer = b""
            try:
                for _ in range(40):  # one byte every 0.2 s
                    writer.write(b"x")
                    await writer.drain()
                    try:
                        chunk = await asyncio.wait_for(reader.read(65536), 0.2)
                    except asyncio.TimeoutError:
                        continue
                    answer += chunk
                    if not chunk:
                        break
            except ConnectionError:
                pass
            finally:
                writer.close()
            return time.monotonic() - started, answer

        heads = await asyncio.gather(*(dribble_head() for _ in range(20)), *(say_nothing() for _ in range(20)))
        assert max(heads) < HEAD_TIMEOUT_S + 1.5, heads
        took, answer = await dribble_body()
        assert took < BODY_TIMEOUT_S + 1.5, (took, answer)
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout", answer
        assert b"application/problem+json" in rest and b'"code":"request_timeout"' in rest, answer

    asyncio.run(slowloris())
    assert httpx.get(f"{limited.url}/healthz", timeout=5).status_code == 200


async def _closed(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection within ``timeout_s`` (sending nothing first)."""
    try:
        return await asyncio.wait_for(reader.read(1), timeout_s) == b""
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        return True


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_a_hung_redis_answers_503_within_two_seconds(tmp_path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deployment = Deployment(f"bdia-test-{uuid.uuid4().hex[:10]}", tmp_path, redis_url=url, api_keys=KEYS)
    try:
        with redis.Redis.from_url(url) as client:
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
        deployment.start()
        (job,) = _submit(url, deployment.prefix, "alice", 1)
        with httpx.Client(base_url=deployment.url, headers=bearer(ALICE), timeout=10) as http:
            assert http.get(f"/v1/jobs/{job}").status_code == 200
            with http.stream("GET", f"/v1/jobs/{job}/events") as stream:  # a follower while Redis hangs
                assert stream.status_code == 200
                server.send_signal(signal.SIGSTOP)
                try:
                    paths = ["/readyz", f"/v1/jobs/{job}", "/v1/jobs", f"/v1/jobs/{job}/events"] * 3

                    async def hung() -> list[tuple[float, httpx.Response]]:
                        async with httpx.AsyncClient(base_url=deployment.url, headers=bearer(ALICE), timeout=10) as c:

                            async def timed(path: str) -> tuple[float, httpx.Response]:
                                started = time.monotonic()
                                response = await c.get(path)
                                return time.monotonic() - started, response

                            return await asyncio.gather(*(timed(path) for path in paths))

                    for took, response in asyncio.run(hung()):
                        body = assert_problem(response, 503, "unavailable")
                        assert took < 2.5, (took, response.request.url, body)
                finally:
                    server.send_signal(signal.SIGCONT)
            for _ in range(50):  # and it recovers
                if http.get(f"/v1/jobs/{job}").status_code == 200:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the API did not recover after Redis did")
            assert json.loads(http.get(f"/v1/jobs/{job}").text)["status"] == "queued"
    finally:
        deployment.stop()
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(10)
