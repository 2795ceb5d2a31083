"""Service-wide statistics in Redis, shared by every API process and worker: counters and histograms.

Counters live in the ``stats`` hash as ``name{labels}`` → value; histograms in the ``histograms``
hash as Prometheus samples (cumulative ``_bucket{…,le=…}``, ``_sum``, ``_count``). ``app.metrics``
renders both.
"""

from __future__ import annotations

from typing import Any

SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def labels(**values: object) -> str:
    """``{a="x",b="y"}`` (empty for no labels), quotes in values replaced."""
    if not values:
        return ""
    return "{" + ",".join(f'{k}="{str(v).replace(chr(34), chr(39))}"' for k, v in values.items()) + "}"


def observe(pipe: Any, key: str, name: str, value: float, **values: object) -> None:
    """Queue on a Redis pipeline the increments that record ``value`` in histogram ``name``."""
    for bound in (*SECONDS_BUCKETS, "+Inf"):
        if bound == "+Inf" or value <= float(bound):
            pipe.hincrby(key, f"{name}_bucket{labels(**values, le=bound)}", 1)
    pipe.hincrbyfloat(key, f"{name}_sum{labels(**values)}", value)
    pipe.hincrby(key, f"{name}_count{labels(**values)}", 1)
