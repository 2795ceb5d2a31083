"""Load benchmark. A script, not a test:

    .venv/bin/python benchmarks/load.py [--clients 16] [--duration 20] [--max-requests 20000] [--steps 4]

Starts the real stack on loopback (``bdia.jobqueue.stack``: a private redis-server unless
BDIA_REDIS_URL is set, the API and one ``tiny-random`` worker) with API keys on, then runs N
concurrent clients for a fixed time: each submits an inversion of an image of its own and polls
``GET /v1/jobs/{id}`` every 50 ms until the job has finished, then submits the next. Stops by
itself after ``--duration`` seconds or ``--max-requests`` requests. Reports requests/s, p50/p99
latency per request kind and errors (target: 0).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdia.jobqueue.stack import LocalStack

KEY = "load-test-key-0123456789abcdef"


def image(seed: int) -> bytes:
    picture = Image.new("RGB", (32, 32))
    picture.putdata(
        [((x * 7 + seed * 31) % 256, (y * 5 + seed * 17) % 256, seed % 256) for y in range(32) for x in range(32)]
    )
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


async def client_loop(n: int, url: str, steps: int, stop_at: float, budget: list[int], stats: dict) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        seed = n * 1_000_000
        while time.monotonic() < stop_at and budget[0] > 0:
            seed += 1
            budget[0] -= 1
            started = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/inversions", files={"image": ("a.png", image(seed), "image/png")}, data={"steps": str(steps)}
                )
            except httpx.HTTPError as exc:
                stats["errors"].append(f"submit: {exc!r}")
                continue
            stats["submit"].append(time.perf_counter() - started)
            if response.status_code not in (200, 202):
                stats["errors"].append(f"submit: HTTP {response.status_code} {response.text[:200]}")
                continue
            if response.status_code == 200:
                continue
            job_id = response.json()["id"]
            while time.monotonic() < stop_at + 30 and budget[0] > 0:
                budget[0] -= 1
                started = time.perf_counter()
                try:
                    polled = await http.get(f"/v1/jobs/{job_id}")
                except httpx.HTTPError as exc:
                    stats["errors"].append(f"poll: {exc!r}")
                    break
                stats["poll"].append(time.perf_counter() - started)
                if polled.status_code != 200:
                    stats["errors"].append(f"poll: HTTP {polled.status_code}")
                    break
                status = polled.json()["status"]
                if status in ("succeeded", "failed", "canceled"):
                    stats["jobs"].append(status)
                    if status != "succeeded":
                        stats["errors"].append(f"job {job_id} {status}")
                    break
                await asyncio.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run(url: str, clients: int, duration: float, max_requests: int, steps: int) -> dict:
    stats: dict[str, list] = defaultdict(list)
    budget = [max_requests]
    started = time.monotonic()
    await asyncio.gather(*(client_loop(n, url, steps, started + duration, budget, stats) for n in range(clients)))
    stats["elapsed"] = [time.monotonic() - started]
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (then in-flight jobs finish)")
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=4, help="inversion steps per job (tiny-random)")
    args = parser.parse_args(argv)
    settings = {"model": "tiny-random", "models": "tiny-random", "api_keys": f"load:{KEY}", "max_jobs_per_tenant": 1000}
    with tempfile.TemporaryDirectory() as logs, LocalStack(logs, settings) as stack:
        stats = asyncio.run(run(stack.url, args.clients, args.duration, args.max_requests, args.steps))
    elapsed = stats["elapsed"][0]
    requests = len(stats["submit"]) + len(stats["poll"])
    print(
        f"{args.clients} clients, {elapsed:.1f} s, {requests} requests, {requests / elapsed:.0f} requests/s, "
        f"{len(stats['jobs'])} jobs finished ({len(stats['jobs']) / elapsed:.1f} jobs/s)"
    )
    for kind in ("submit", "poll"):
        values = stats[kind]
        if values:
            print(
                f"  {kind:6s} n={len(values):6d}  p50 {percentile(values, 50) * 1000:7.1f} ms  "
                f"p99 {percentile(values, 99) * 1000:7.1f} ms"
            )
    print(f"  errors: {len(stats['errors'])}")
    for error in stats["errors"][:10]:
        print(f"    {error}")
    return 0 if not stats["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
