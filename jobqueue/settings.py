"""Configuration from ``BDIA_*`` environment variables, shared by the API, the workers and the demo."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bdia.params import DEFAULT_GAMMA_BOUND, default_model


class Settings(BaseSettings):
    """Every knob of a deployment; each field is read from ``BDIA_<FIELD>`` (e.g. ``BDIA_REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="BDIA_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "bdia"
    model: str = Field(default_factory=default_model)
    """The default model: used when a request names none, and the one ``bdia worker`` loads (default: the
    bundled ``shapes`` model, as for the CLI; ``tiny-random`` where its weights are not installed)."""
    models: str = ""
    """Comma-separated models this deployment serves; empty means just ``model``."""
    redis_timeout_s: float = 2.0
    """Connect and read timeout of Redis calls: an unreachable Redis fails requests fast (503)."""
    api_keys: str = ""
    """Comma-separated ``tenant:key`` pairs (a bare ``key`` belongs to tenant ``default``); ``tenant:sha256:HEX``
    names a key by its digest. Empty, with no ``api_keys_file``, means no authentication (a warning is logged)."""
    api_keys_file: str = ""
    """A file of the same entries, one a line (``#`` comments); read at start."""
    access_log: bool = False
    """uvicorn's per-request access log (``/metrics`` counts requests either way)."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line, with ``job_id`` when the message names a job."""
    log_level: str = "INFO"

    # Limits on what a request may ask.
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_aspect_ratio: float = 20.0
    """Longer side over shorter side: beyond it an upload is refused (fitting it would blow up or lose it)."""
    max_prompt_chars: int = 1000
    max_steps: int = 1000
    gamma_bound: float = DEFAULT_GAMMA_BOUND
    """The largest error growth γ^−(K−1) an inversion may have (docs/numerics.md); the engine's default."""
    max_guidance_scale: float = 100.0
    max_queue: int = 1000
    """Queued jobs per model beyond which submissions get 503 ``queue_full``."""
    rate_limit_per_minute: int = 0
    """Submissions (POSTs) per tenant (per client address when open) per minute; 0 turns it off."""
    max_jobs_per_tenant: int = 100
    """Unfinished (queued or running) jobs one tenant may have; more get 429 ``rate_limited``. 0: no cap."""
    job_timeout_s: float = 900.0
    """A job running longer than this fails with ``job_timeout`` (enforced by the worker); 0: no limit."""
    max_wait_s: float = 60.0
    """The longest ``Prefer: wait=N`` a POST honours (RFC 7240): it answers 200 with the finished job, or 202
    when this (or N, if less) runs out first. 0 turns waiting off."""
    cors_origins: str = ""
    """Comma-separated origins that browsers may call the API from (CORS), or ``*``; empty: CORS is off."""

    # Retention.
    job_ttl_s: int = 24 * 3600
    inversion_ttl_s: int = 7 * 24 * 3600
    """Inversions (and their uploads) expire this long after their last use."""
    cache_max_bytes: int = 2 * 1024**3
    """Latent-pair cache budget; the least recently used entries go first."""
    idempotency_ttl_s: int = 24 * 3600

    # Workers.
    lease_s: float = 30.0
    """A running job whose worker has not renewed its lease for this long is reclaimed."""
    max_deliveries: int = 3
    """A job delivered this many times without finishing goes to the dead-letter stream."""
    batch_size: int | None = None
    """The most jobs a worker runs side by side, and the widest batch layout it opens (unset: 8 on CUDA,
    4 on CPU; ``bdia.workers.worker.default_batch_size``)."""
    batch_policy: Literal["adaptive", "fixed"] = "adaptive"
    """``adaptive``: each job's batch layout is chosen when it is admitted, from the demand then (a lone
    job runs at batch size 1, a busy worker fills wide batches up to ``batch_size``); ``fixed``: every
    job runs at ``batch_size``."""
    worker_threads: int | None = None
    """torch CPU threads per worker (0: torch's default; unset: 1 on CUDA, on CPU the usable cores but one,
    1 to 8; ``bdia.workers.worker.default_threads``). Part of the numerics fingerprint: CPU workers that
    should reproduce each other's bits need equal thread counts, so set it explicitly for workers on
    machines with different core counts."""
    worker_block_s: float = 1.0
    """How long one blocking read of the queue waits before the worker looks around again."""
    reconnect_max_s: float = 30.0
    """Longest wait between a worker's attempts to reach Redis again (the wait doubles from 0.5 s)."""

    # Webhooks.
    webhook_secret: str = ""
    """The deployment's Standard Webhooks signing secret (``whsec_`` + base64); empty: webhooks are refused."""
    webhook_secrets: str = ""
    """Comma-separated ``tenant:whsec_…`` secrets that override ``webhook_secret`` for those tenants."""
    webhook_max_attempts: int = 8
    """Deliveries of one event before it is given up (and counted in ``bdia_webhooks_total``)."""
    webhook_backoff_s: float = 1.0
    """Wait before the second delivery; it doubles for each further attempt, up to 10 minutes."""
    webhook_timeout_s: float = 10.0
    """How long a receiver may take to answer one delivery."""
    webhook_progress_s: float = 5.0
    """A job whose request asked for ``progress`` webhooks gets at most one every this many seconds."""
    api_webhooks: bool = True
    """The API process also runs a webhook dispatcher (any number may run: they share the outbox)."""

    @property
    def served_models(self) -> tuple[str, ...]:
        names = [m.strip() for m in self.models.split(",") if m.strip()]
        return tuple(dict.fromkeys(names or [self.model]))

    @property
    def max_request_bytes(self) -> int:
        """The largest request body: two images (an image and a mask) and the form fields."""
        return 2 * self.max_upload_bytes + 1024 * 1024

    @property
    def heartbeat_s(self) -> float:
        """How often a worker renews its lease and its presence: three times per lease."""
        return self.lease_s / 3


PUBLIC_TENANT = "public"
"""The tenant of every request when no API keys are configured."""


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
