"""Service benchmarks. A script, not a test:

    .venv/bin/python benchmarks/service.py [--model tiny-random] [--duration 5] [--pickups 200] [--repeats 5]

Starts a local stack (``bdia.jobqueue.stack``: a private redis-server unless BDIA_REDIS_URL is set,
the API and one worker) and measures, in one run:

1. status polling: GET /v1/jobs/{id} of a finished job, against a bare FastAPI endpoint that reads
   the same Redis hash, both one uvicorn process with the same settings (target: ≥ 60 % of bare);
2. enqueue-to-pickup latency: job created (API, just before XADD) → started (worker), p50 and p99,
   one job at a time on an idle worker (target: p50 ≤ 5 ms on loopback);
3. the wall time of an edit whose inversion is cached against one that must invert first
   (target: cached ≤ 0.55× uncached).

Load comes from ``wrk`` when it is on PATH, else from an httpx/asyncio client (slower: it then
measures the client as much as the server).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdia.client import BdiaClient
from bdia.jobqueue.stack import LocalStack, free_port


def image(seed: int, size: int = 64) -> bytes:
    picture = Image.new("RGB", (size, size))
    picture.putdata(
        [((x * 3 + seed * 41) % 256, (y * 5 + seed * 13) % 256, 90) for y in range(size) for x in range(size)]
    )
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


# --- 1. status polling ------------------------------------------------------------------------


def serve_bare(port: int, redis_url: str, key: str) -> None:
    """The baseline: a bare FastAPI endpoint that returns one Redis hash (run in its own process)."""
    import uvicorn
    from fastapi import FastAPI
    from redis.asyncio import Redis

    app = FastAPI()
    redis = Redis.from_url(redis_url)

    @app.get("/bare")
    async def bare() -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def load(url: str, seconds: float, connections: int) -> float:
    """Requests per second that ``url`` sustains."""
    if shutil.which("wrk"):
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", url]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise RuntimeError(f"{url}: {errors.group(1)} error responses")
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return asyncio.run(_load_httpx(url, seconds, connections))


async def _load_httpx(url: str, seconds: float, connections: int) -> float:
    done = 0
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                (await client.get(url)).raise_for_status()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return done / (time.perf_counter() - start)


def polling(stack: LocalStack, client: BdiaClient, seconds: float, connections: int, port: int, rounds: int) -> dict:
    job = client.wait(client.invert(image(0), "", steps=2).job)
    key = stack.keys.job(job.id)
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import service; "
        f"service.serve_bare({port}, {stack.redis_url!r}, {key!r})"
    )
    bare = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        bare_url = f"http://127.0.0.1:{port}/bare"
        for _ in range(200):
            try:
                if httpx.get(bare_url).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        api_url = f"{stack.url}/v1/jobs/{job.id}"
        load(api_url, 1, connections), load(bare_url, 1, connections)  # warm up
        api, base = [], []
        for _ in range(rounds):  # interleaved, so that both see the same (shared, noisy) machine
            base.append(load(bare_url, seconds, connections))
            api.append(load(api_url, seconds, connections))
    finally:
        bare.terminate()
        bare.wait()
    ratios = [a / b for a, b in zip(api, base, strict=True)]
    return {
        "api": statistics.median(api),
        "bare": statistics.median(base),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
    }


# --- 2. enqueue-to-pickup ---------------------------------------------------------------------


def pickups(client: BdiaClient, count: int) -> list[float]:
    """Seconds from a job's creation to its start, one job at a time (reconstructions of K = 1)."""
    inversion_id = client.wait(client.invert(image(1), "", steps=1).job).inversion_id
    latencies = []
    for _ in range(count):
        job = client.reconstruct(inversion_id)
        while (job := client.job(job.id)).status not in ("succeeded", "failed", "canceled"):
            time.sleep(0.002)
        latencies.append(job.metrics["queue_seconds"])
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- 3. cached vs uncached edits --------------------------------------------------------------


def edits(client: BdiaClient, repeats: int, steps: int) -> tuple[list[float], list[float], dict]:
    uncached, cached = [], []
    for n in range(repeats):
        start = time.perf_counter()
        first = client.wait(client.edit_image(image(100 + n), "a gradient", "a red gradient", steps=steps))
        uncached.append(time.perf_counter() - start)
        start = time.perf_counter()
        second = client.wait(client.edit(first.inversion_id, "a blue gradient"))
        cached.append(time.perf_counter() - start)
        assert not first.metrics["inversion_cached"] and second.metrics["inversion_cached"]
    return uncached, cached, {"uncached": first.metrics, "cached": second.metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("BDIA_MODEL", "tiny-random"))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved throughput rounds (median reported)")
    parser.add_argument("--pickups", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="edit pairs (uncached, cached)")
    parser.add_argument("--steps", type=int, default=25, help="steps of the timed edits")
    parser.add_argument("--out", type=Path, default=Path("out/benchmark"))
    args = parser.parse_args(argv)

    settings = {"model": args.model, "models": args.model}
    with LocalStack(args.out / "logs", settings) as stack, BdiaClient(stack.url) as client:
        generator = "wrk -t1" if shutil.which("wrk") else "httpx (asyncio)"
        print(
            f"load generator: {generator}, {args.connections} connections; {os.cpu_count()} CPUs; "
            f"load average before: {os.getloadavg()[0]:.1f}"
        )
        rates = polling(stack, client, args.duration, args.connections, free_port(), args.rounds)
        latencies = pickups(client, args.pickups)
        uncached, cached, metrics = edits(client, args.repeats, args.steps)

    ratio = rates["ratio"]
    p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    edit_ratio = statistics.median(cached) / statistics.median(uncached)
    rows = [
        (f"GET /v1/jobs/{{id}}, requests/s (median of {args.rounds})", f"{rates['api']:.0f}", ""),
        ("bare FastAPI + one Redis HGETALL, requests/s", f"{rates['bare']:.0f}", ""),
        ("status polling vs bare (median of the per-round ratios)", f"{ratio:.0%}", "≥ 60 %"),
        (f"enqueue-to-pickup p50 ({len(latencies)} jobs)", f"{p50:.2f} ms", "≤ 5 ms"),
        ("enqueue-to-pickup p99", f"{p99:.2f} ms", ""),
        (
            f"uncached edit, median of {len(uncached)} ({args.steps} steps, model {args.model})",
            f"{statistics.median(uncached):.3f} s",
            "",
        ),
        (f"cached edit, median of {len(cached)}", f"{statistics.median(cached):.3f} s", ""),
        ("cached / uncached", f"{edit_ratio:.2f}×", "≤ 0.55×"),
    ]
    print("\n| measure | value | target |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nper-round polling ratios: {', '.join(f'{r:.0%}' for r in rates['ratios'])}")
    print(
        f"NFE: uncached {metrics['uncached']['nfe']}, cached {metrics['cached']['nfe']}; "
        f"load average after: {os.getloadavg()[0]:.1f}"
    )
    met = ratio >= 0.6 and p50 <= 5 and edit_ratio <= 0.55
    print("all targets met" if met else "some targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
