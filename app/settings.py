"""Configuration from ``BDIA_*`` environment variables, shared by the API, the workers and the demo."""

from __future__ import annotations

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of a deployment; each field is read from ``BDIA_<FIELD>`` (e.g. ``BDIA_REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="BDIA_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "bdia"
    model: str = "tiny-random"
    """The default model: used when a request names none, and the one ``bdia worker`` loads."""
    models: str = ""
    """Comma-separated models this deployment serves; empty means just ``model``."""
    api_keys: str = ""
    """Comma-separated bearer tokens; empty means no authentication."""
    access_log: bool = False
    """uvicorn's per-request access log (``/metrics`` counts requests either way)."""

    # Limits on what a request may ask.
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_prompt_chars: int = 1000
    max_steps: int = 1000
    gamma_bound: float = 30.0
    max_guidance_scale: float = 100.0
    max_queue: int = 1000
    """Queued jobs per model beyond which submissions get 503 ``queue_full``."""
    rate_limit_per_minute: int = 0
    """Submissions (POSTs) per client per minute; 0 turns rate limiting off."""

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
    worker_threads: int = 1
    """torch CPU threads per worker (0: torch's default). Part of the numerics fingerprint, so workers
    with equal settings reproduce each other's bits on any CPU; one thread also avoids oversubscribing
    a machine that runs several workers (scale with processes)."""
    worker_block_s: float = 1.0
    """How long one blocking read of the queue waits before the worker looks around again."""

    @property
    def served_models(self) -> tuple[str, ...]:
        names = [m.strip() for m in self.models.split(",") if m.strip()]
        return tuple(dict.fromkeys(names or [self.model]))

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def heartbeat_s(self) -> float:
        """How often a worker renews its lease and its presence: three times per lease."""
        return self.lease_s / 3


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
