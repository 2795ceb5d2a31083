"""``/metrics`` in the Prometheus text format: this process's HTTP counters and the service's state:
queue depth, workers, cache usage and hit ratio, job counters and latency histograms, NFE spent and saved."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bdia.jobqueue.stats import labels as _labels

from .deps import Services

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name; any other (clients may send made-up ones) counts as ``other``, so the label
set stays bounded: methods × route templates (unmatched paths share one) × status codes."""


@dataclass
class HttpCounters:
    """Requests and their total seconds, by method, route template and status."""

    requests: dict[tuple[str, str, int], int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[tuple[str, str, int], float] = field(default_factory=lambda: defaultdict(float))


class CountRequests:
    """Pure ASGI middleware (cheap enough for the status-polling path) that fills ``HttpCounters``."""

    def __init__(self, app: ASGIApp, counters: HttpCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            labels = (method, route, status)
            self.counters.requests[labels] += 1
            self.counters.seconds[labels] += time.perf_counter() - start


async def render(services: Services, counters: HttpCounters) -> str:
    """The exposition text: HTTP counters, queue depth, workers, cache usage and job counters."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP bdia_{name} {help_text}", f"# TYPE bdia_{name} {kind}"])
        lines.extend(f"bdia_{name}{labels} {value:g}" for labels, value in samples)

    metric(
        "http_requests_total",
        "counter",
        "HTTP requests served by this API process.",
        [(_labels(method=m, route=r, status=s), n) for (m, r, s), n in sorted(counters.requests.items())],
    )
    metric(
        "http_request_seconds_total",
        "counter",
        "Seconds spent serving HTTP requests, by route.",
        [(_labels(method=m, route=r, status=s), t) for (m, r, s), t in sorted(counters.seconds.items())],
    )
    settings, keys, redis = services.settings, services.keys, services.redis
    now = time.time()
    depth, workers = [], []
    for model in settings.served_models:
        depth.append((_labels(model=model), await services.queue.depth(model)))
        alive = await redis.zcount(keys.workers(model), now - settings.lease_s, "+inf")
        workers.append((_labels(model=model), alive))
    metric("queue_depth", "gauge", "Jobs waiting for a worker.", depth)
    metric("workers", "gauge", "Workers with a live heartbeat.", workers)
    entries, size = await services.cache.usage()
    metric("cache_entries", "gauge", "Inversions held in the latent-pair cache.", [("", entries)])
    metric("cache_bytes", "gauge", "Bytes held in the latent-pair cache.", [("", size)])
    families: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for name, value in (await redis.hgetall(keys.stats)).items():
        base, _, labels = name.decode().partition("{")
        families[base].append(("{" + labels if labels else "", float(value)))
    for base, samples in sorted(families.items()):
        metric(base, "counter", f"Service-wide {base.replace('_', ' ')}.", sorted(samples))
    hits = sum(v for _, v in families["cache_hits_total"] + families["inversion_requests_cached_total"])
    looked_up = hits + sum(v for _, v in families["cache_misses_total"])
    metric(
        "cache_hit_ratio",
        "gauge",
        "Inversions needed that the cache already held.",
        [("", hits / looked_up if looked_up else 0.0)],
    )
    histograms: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for name, value in (await redis.hgetall(keys.histograms)).items():
        sample, _, labels = name.decode().partition("{")
        histograms[sample.rsplit("_", 1)[0]].append((sample, "{" + labels if labels else "", float(value)))
    for base, samples in sorted(histograms.items()):
        lines.extend([f"# HELP bdia_{base} Seconds, service-wide.", f"# TYPE bdia_{base} histogram"])
        lines.extend(f"bdia_{sample}{labels} {value:g}" for sample, labels, value in sorted(samples))
    return "\n".join(lines) + "\n"
