"""Throughput of the worker with continuous batching against one job at a time. A script:

    .venv/bin/python benchmarks/throughput.py [--model shapes] [--jobs 8] [--batch-size 4] [--steps 20] [--json]

Runs the same K concurrent edits (each of a different image, so each inverts and then edits)
through the real API, Redis queue and one worker twice: with ``--batch-size B`` and with B = 1.
Reports jobs per second (K over first submission → last finish) and p50/p95 latency
(submission → finish, per job) for both, and their ratios. Each deployment edits one image first
to warm up. With ``--json`` the last line is one JSON object (``batched_jobs_per_s``,
``sequential_jobs_per_s``, …). Each deployment is a local stack (``bdia.jobqueue.stack``): a private
redis-server unless ``BDIA_REDIS_URL`` is set.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bdia.app.demo import EDITS, SOURCE_PROMPT
from bdia.client import BdiaClient
from bdia.jobqueue.stack import LocalStack
from bdia.params import default_model


def image(seed: int, size: int = 64) -> bytes:
    """A distinct PNG per seed (so no edit finds another's inversion cached)."""
    picture = Image.new("RGB", (size, size))
    picture.putdata(
        [
            ((x * 3 + seed * 41) % 256, (y * 5 + seed * 13) % 256, (x * y + seed * 7) % 256)
            for y in range(size)
            for x in range(size)
        ]
    )
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation (q in [0, 1])."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure(model: str, batch_size: int, jobs: int, params: dict[str, Any], logs: Path) -> dict[str, Any]:
    """Start a deployment with one worker of ``batch_size``; time ``jobs`` concurrent edits through it."""
    settings = {"model": model, "models": model, "batch_size": batch_size, "worker_threads": 1, "worker_block_s": 0.05}
    with LocalStack(logs / f"b{batch_size}", settings) as stack, BdiaClient(stack.url, timeout=600) as client:
        client.wait(client.edit_image(image(10_000 + batch_size), SOURCE_PROMPT, EDITS[0], **params).id, timeout=600)
        submitted = [client.edit_image(image(n), SOURCE_PROMPT, EDITS[n % len(EDITS)], **params) for n in range(jobs)]
        done = [client.wait(job.id, timeout=1800) for job in submitted]
    created = [_time(job.created_at) for job in done]
    finished = [_time(job.finished_at) for job in done]
    latencies = [f - c for c, f in zip(created, finished, strict=True)]
    wall = max(finished) - min(created)
    return {
        "batch_size": batch_size,
        "jobs": jobs,
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "p50_s": percentile(latencies, 0.5),
        "p95_s": percentile(latencies, 0.95),
        "nfe_per_job": done[0].metrics.get("nfe"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: bdia.params.default_model() (shapes when bundled)")
    parser.add_argument("--jobs", type=int, default=8, help="K, concurrent edits per mode")
    parser.add_argument("--batch-size", type=int, default=4, help="B of the batched worker")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--guidance-scale", type=float, default=None, help="edit guidance (default: the API's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    model = args.model or default_model()
    params: dict[str, Any] = {"steps": args.steps, "strength": args.strength}
    if args.guidance_scale is not None:
        params["guidance_scale"] = args.guidance_scale

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bdia-throughput-") as logs:
        batched = measure(model, args.batch_size, args.jobs, params, Path(logs))
        sequential = measure(model, 1, args.jobs, params, Path(logs))
    report = {
        "model": model,
        "jobs": args.jobs,
        "batch_size": args.batch_size,
        **{k: v for k, v in params.items()},
        "batched_jobs_per_s": batched["jobs_per_s"],
        "sequential_jobs_per_s": sequential["jobs_per_s"],
        "throughput_ratio": batched["jobs_per_s"] / sequential["jobs_per_s"],
        "batched_p50_s": batched["p50_s"],
        "batched_p95_s": batched["p95_s"],
        "sequential_p50_s": sequential["p50_s"],
        "sequential_p95_s": sequential["p95_s"],
        "p50_ratio": batched["p50_s"] / sequential["p50_s"],
        "p95_ratio": batched["p95_s"] / sequential["p95_s"],
        "nfe_per_job": batched["nfe_per_job"],
        "seconds": time.perf_counter() - started,
    }
    print(
        f"\n{args.jobs} concurrent edits, model {model}, {args.steps} steps, strength {args.strength}, "
        f"NFE per job {report['nfe_per_job']}, one worker, 1 torch thread\n"
    )
    print("| worker | jobs/s | p50 latency (s) | p95 latency (s) | wall (s) |")
    print("|---|---|---|---|---|")
    for name, row in ((f"batched, B = {args.batch_size}", batched), ("one at a time, B = 1", sequential)):
        print(f"| {name} | {row['jobs_per_s']:.3f} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | {row['wall_s']:.1f} |")
    print(
        f"\nbatched / sequential: throughput {report['throughput_ratio']:.2f}×, "
        f"p50 latency {report['p50_ratio']:.2f}×, p95 latency {report['p95_ratio']:.2f}×"
    )
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
