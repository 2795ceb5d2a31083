"""Redis's memory limit and policy in the compose file agree with the app's own byte budgets (checked
statically: no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bdia.jobqueue.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
"""Redis's memory units (``redis.conf``: ``1gb`` is 1024³ bytes, ``1g`` 10⁹)."""
HEADROOM = 512 * 1024**2
"""What maxmemory must leave above the budgets at least: job records, event streams, Redis's overhead."""


def _redis_command() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return [str(part) for part in compose["services"]["redis"]["command"]]


def _option(command: list[str], name: str) -> str:
    assert name in command, f"the Redis service sets no {name}"
    return command[command.index(name) + 1]


def _bytes(value: str) -> int:
    default = re.fullmatch(r"\$\{\w+:-(.+)\}", value)  # ${VAR:-default}: compose's default
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", (default[1] if default else value).lower()).groups()
    return int(number) * UNITS[unit]


def test_redis_never_evicts_on_its_own_and_its_limit_holds_the_budgets() -> None:
    """noeviction: the app's budgets decide what goes (volatile-lru would drop job records and specs, which
    all carry TTLs). maxmemory leaves room above the sum of the budgets, each of which may overshoot by
    one value (the newest result, an upload's submission)."""
    command = _redis_command()
    assert _option(command, "--maxmemory-policy") == "noeviction"
    settings = Settings()
    budgets = settings.cache_max_bytes + settings.uploads_max_bytes + settings.results_max_bytes
    overshoot = 2 * settings.max_upload_bytes + settings.max_pixels * 4
    assert _bytes(_option(command, "--maxmemory")) >= budgets + overshoot + HEADROOM


def test_operations_documents_the_budgets_and_the_policy() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    for name in ("BDIA_CACHE_MAX_BYTES", "BDIA_UPLOADS_MAX_BYTES", "BDIA_RESULTS_MAX_BYTES", "noeviction", "maxmemory"):
        assert name in text, f"docs/operations.md does not mention {name}"
