"""Configuration from ``BDIA_*`` environment variables, shared by the API, the workers and the demo."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bdia.params import DEFAULT_GAMMA_BOUND, default_model


class Settings(BaseSettings):
    """Every knob of a deployment; each field is read from ``BDIA_<FIELD>`` (e.g. ``BDIA_REDIS_URL``)."""

    model_config = SettingsConfigDict(env_prefix="BDIA_", extra="ignore", hide_input_in_errors=True)  # no secrets

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "bdia"
    model: str = Field(default_factory=default_model)
    """The default model: used when a request names none, and the one ``bdia worker`` loads (default: the
    bundled ``shapes`` model, as for the CLI; ``tiny-random`` where its weights are not installed)."""
    models: str = ""
    """Comma-separated models this deployment serves; empty means just ``model``."""
    redis_timeout_s: float = Field(1.0, gt=0)
    """The longest an API request waits on Redis for each step: a pooled connection, connecting, a reply. A
    hung or unreachable Redis fails requests with 503 ``unavailable`` within about twice this."""
    redis_max_connections: int = Field(50, ge=1)
    """Pooled Redis connections per API process (event streams share one more of their own,
    ``bdia.app.streams``); a request waits at most ``redis_timeout_s`` for a free one."""
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
    max_streams_per_tenant: int = Field(100, ge=0)
    """Event streams (``GET /v1/jobs/{id}/events``) one tenant may hold open per API process; more get 429
    ``rate_limited``. 0: no cap. (The default lets a tenant follow each of ``max_jobs_per_tenant`` jobs.)"""
    decode_threads: int = Field(2, ge=1)
    """Threads per API process that verify and decode uploaded images, off the event loop; further uploads
    wait for one."""
    cors_origins: str = ""
    """Comma-separated origins that browsers may call the API from (CORS), or ``*``; empty: CORS is off."""

    # Slow clients: the HTTP server's limits (``bdia serve``).
    http_header_timeout_s: float = Field(10.0, gt=0)
    """A connection must deliver a whole request head (request line and headers) within this, counted from
    when it opens or its previous response ends; else it is closed."""
    http_keepalive_timeout_s: float = Field(5.0, gt=0)
    """An idle keep-alive connection is closed after this."""
    http_body_timeout_s: float = Field(120.0, gt=0)
    """A request's body must arrive whole within this, counted from its head; else 408 ``request_timeout``
    and the connection is closed."""
    http_max_connections: int = Field(1000, ge=1)
    """Open connections (or requests in progress) per API process beyond which new requests get 503."""
    http_max_header_bytes: int = Field(16 * 1024, ge=1024)
    """Largest request head; a larger one gets 400 and the connection is closed."""

    # Retention.
    job_ttl_s: int = 24 * 3600
    inversion_ttl_s: int = 7 * 24 * 3600
    """Inversions (and their uploads) expire this long after their last use."""
    cache_max_bytes: int = 2 * 1024**3
    """Latent-pair cache budget; the least recently used entries go first."""
    uploads_max_bytes: int = 1024**3
    """Budget of stored uploads (images and masks); beyond it the least recently used go first (a queued job
    whose upload went fails ``inversion_expired``). Keep it well above 2 × ``max_upload_bytes``."""
    results_max_bytes: int = 1024**3
    """Budget of stored output images (results and edit masks); beyond it the oldest go first (their
    ``GET /v1/jobs/{id}/result`` or ``/mask`` answers 404 from then on)."""
    idempotency_ttl_s: int = 24 * 3600
    """How long a successful response to a request with an ``Idempotency-Key`` is kept and replayed."""
    idempotency_lease_s: float = 10.0
    """How long a request holds its ``Idempotency-Key`` while it runs, renewed every third of it: a request
    whose API process died frees its key this long after (retries get 409 until then)."""

    # Workers.
    lease_s: float = 30.0
    """A running job whose worker has not renewed its lease for this long is reclaimed."""
    model_ttl_s: float = 300.0
    """How long a model's registry record (``bdia.jobqueue.models``) outlives its workers' last heartbeat:
    requests for a model no worker has announced for this long get 503 ``model_unavailable`` instead of
    waiting in its queue; a worker that restarts within it loses no requests."""
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
    """The deployment's Standard Webhooks secret (``whsec_`` + base64 of 24 to 64 bytes): each tenant signs
    with its own secret derived from it (``bdia webhooks --secret-for TENANT``); empty: webhooks are refused."""
    webhook_secrets: str = ""
    """Comma-separated ``tenant:whsec_…`` secrets that replace the derived secret of those tenants."""
    webhook_allow_hosts: str = ""
    """Comma-separated host names, IP addresses and CIDR networks webhooks may reach although they are not
    public (loopback, private, link-local…), for receivers inside the deployment's network."""
    webhook_concurrency: int = Field(32, ge=1)
    """Deliveries one dispatcher runs at once (a slow receiver holds one of them, up to ``webhook_timeout_s``)."""
    webhook_max_attempts: int = 8
    """Deliveries of one event before it is given up (and counted in ``bdia_webhooks_total``)."""
    webhook_backoff_s: float = 1.0
    """Wait before the second delivery; it doubles for each further attempt, up to 10 minutes."""
    webhook_timeout_s: float = Field(10.0, gt=0)
    """How long one delivery may take, from resolving the receiver's name to its answer's status line."""
    webhook_progress_s: float = 5.0
    """A job whose request asked for ``progress`` webhooks gets at most one every this many seconds."""
    api_webhooks: bool = True
    """The API process also runs a webhook dispatcher (any number may run: they share the outbox)."""

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: str) -> str:
        return check_whsec(value) if value else value

    @field_validator("webhook_secrets")
    @classmethod
    def _tenant_whsecs(cls, value: str) -> str:
        for entry in filter(None, (e.strip() for e in value.split(","))):
            tenant, _, secret = entry.partition(":")
            if not tenant or not secret:
                raise ValueError(f"entry {tenant[:64]!r}: want tenant:whsec_…")
            check_whsec(secret)
        return value

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: str) -> str:
        allowed_hosts(value)  # raises ValueError naming a bad entry
        return value

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


def check_whsec(secret: str) -> str:
    """A Standard Webhooks secret, checked: ``whsec_`` + base64 of 24 to 64 bytes (else ``ValueError``), so a
    malformed one stops a process at start rather than its first delivery."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith("whsec_") or not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret is whsec_ + base64 of 24 to 64 bytes (bdia.app.webhooks.new_secret)")
    return secret


HOST_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
"""A host name in ASCII (IDNA) form, lowercase, without a trailing dot."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_hosts(value: str) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """``webhook_allow_hosts`` read: the host names, and the networks (an address is a network of one);
    ``ValueError`` names an entry that is neither."""
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in filter(None, (e.strip().lower() for e in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            if not HOST_NAME.fullmatch(entry.rstrip(".")):
                raise ValueError(f"{entry[:64]!r} is neither a host name nor an IP address or network") from None
            names.add(entry.rstrip("."))
    return frozenset(names), tuple(networks)


PUBLIC_TENANT = "public"
"""The tenant of every request when no API keys are configured."""


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
