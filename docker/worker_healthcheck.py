"""A worker container's health check: healthy while a worker in this container has a live heartbeat in Redis.

The worker image runs it (``python /srv/bdia/worker_healthcheck.py``; docker/worker.Dockerfile, docker-compose.yml).
It reads the same ``BDIA_*`` settings as the worker (``BDIA_REDIS_URL``, ``BDIA_KEY_PREFIX``, …), so it looks
where the worker writes: ``{prefix}:worker:{hostname}-{pid}-{token}`` (``bdia.jobqueue.keys``), which expires
unless the worker renews it. Exit 0: healthy; 1: no live worker here, or Redis does not answer.
"""

from __future__ import annotations

import re
import socket
import sys

import redis

from bdia.jobqueue.keys import Keys
from bdia.jobqueue.settings import get_settings


def main() -> int:
    settings = get_settings()
    glob = re.sub(r"([\\*?\[\]])", r"\\\1", Keys(settings.key_prefix).worker(socket.gethostname())) + "-*"
    timeout = settings.redis_timeout_s
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        alive = next(iter(client.scan_iter(match=glob, count=1000)), None) is not None
    except redis.RedisError as exc:
        print(f"unhealthy: Redis does not answer ({exc})", file=sys.stderr)
        return 1
    if not alive:
        print(f"unhealthy: no worker heartbeat at {glob}", file=sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
