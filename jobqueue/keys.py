"""The Redis key layout: every key the API and the workers touch is named here and nowhere else.

{p}:queue:{model}              stream of job ids for one model's workers (consumer group ``workers``)
{p}:dead                       dead-letter stream: jobs that failed too many deliveries
{p}:job:{id}                   hash: the job record (``app.jobs.Job``)
{p}:job:{id}:events            stream: the job's events, replayed to late SSE subscribers
{p}:job:{id}:result            string: the output PNG
{p}:job:{id}:mask              string: the edit mask the output used, PNG at its size (white = changed), if any
{p}:inv:{id}                   hash: a cached latent pair (safetensors bytes, checksum, metadata)
{p}:inv:{id}:spec              string: what the inversion is of (JSON ``InversionSpec``), to recompute it
{p}:inv:{id}:job               string: the id of the unfinished job making the inversion (cleared when it finishes)
{p}:inv:{id}:waiting           list: ids of jobs queued behind that job, put on the queue when it finishes
{p}:inv:{id}:deleted           string: the tenant that deleted the inversion (``DELETE``): until it is requested
                               again, no job stores it; a repeated ``DELETE`` is answered 204 while this lasts
{p}:cache:lru                  sorted set: inversion id → last use (seconds)
{p}:cache:sizes                hash: inversion id → bytes held
{p}:blob:{sha256}              string: uploaded file bytes, content-addressed
{p}:blob:{sha256}:refs         sorted set: inversion id → when its spec expires (the inversions made from the upload)
{p}:bytes:{kind}               hash: key of a stored value → bytes, in the byte budget of ``uploads`` or ``results``
{p}:bytes:{kind}:expiry        sorted set: key of a stored value → when it expires (seconds)
{p}:bytes:{kind}:total         string: the bytes the kind holds
{p}:idem:{scope}:{key}         string: an ``Idempotency-Key``'s reservation (a short lease) or its stored response
{p}:model:{name}               string: the model's registry record (``models.ModelRecord``), renewed by its workers'
                               heartbeats, expiring ``model_ttl_s`` after the last
{p}:workers:{model}            sorted set: worker id → last heartbeat (seconds)
{p}:worker:{id}                string: JSON worker info, expires unless renewed
{p}:stats                      hash: service-wide counters for ``/metrics``
{p}:histograms                 hash: service-wide histogram samples for ``/metrics`` (``app.stats``)
{p}:rate:{tenant}:{minute}     counter for rate limiting
{p}:tenant:{tenant}:jobs       sorted set: the tenant's unfinished job ids → created (seconds)
{p}:tenant:{tenant}:history    sorted set: the tenant's job ids → created (seconds): ``GET /v1/jobs``
{p}:tenant:{tenant}:inversions sorted set: the tenant's inversion ids → first stored (seconds): ``GET /v1/inversions``
{p}:webhooks                   stream: outbox of the job events webhooks asked for (consumer group ``webhooks``)
{p}:webhooks:attempts          hash: outbox entry id → deliveries tried
{p}:webhooks:retry             sorted set: outbox entry id → when to try it again (seconds)
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "workers"
"""The consumer group every worker of a model reads its queue through."""
WEBHOOK_GROUP = "webhooks"
"""The consumer group webhook dispatchers read the outbox through."""


@dataclass(frozen=True)
class BudgetKeys:
    """The records of one byte budget (``bdia.jobqueue.storage.Budget``)."""

    sizes: str
    expiry: str
    total: str


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix (one deployment, or one test run)."""

    prefix: str = "bdia"

    def queue(self, model: str) -> str:
        return f"{self.prefix}:queue:{model}"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}:dead"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:result"

    def mask(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:mask"

    def inversion(self, inversion_id: str) -> str:
        return f"{self.prefix}:inv:{inversion_id}"

    def inversion_spec(self, inversion_id: str) -> str:
        return f"{self.prefix}:inv:{inversion_id}:spec"

    def inversion_job(self, inversion_id: str) -> str:
        return f"{self.prefix}:inv:{inversion_id}:job"

    def inversion_waiting(self, inversion_id: str) -> str:
        return f"{self.prefix}:inv:{inversion_id}:waiting"

    def inversion_deleted(self, inversion_id: str) -> str:
        return f"{self.prefix}:inv:{inversion_id}:deleted"

    @property
    def cache_lru(self) -> str:
        return f"{self.prefix}:cache:lru"

    @property
    def cache_sizes(self) -> str:
        return f"{self.prefix}:cache:sizes"

    def blob(self, sha256: str) -> str:
        return f"{self.prefix}:blob:{sha256}"

    def blob_refs(self, sha256: str) -> str:
        return f"{self.prefix}:blob:{sha256}:refs"

    def is_blob(self, key: str) -> bool:
        """Whether ``key`` is an upload's (``blob``), not another key under it."""
        head = self.blob("")
        return key.startswith(head) and len(key) > len(head) and ":" not in key[len(head) :]

    def budget(self, kind: str) -> BudgetKeys:
        base = f"{self.prefix}:bytes:{kind}"
        return BudgetKeys(base, f"{base}:expiry", f"{base}:total")

    def idempotency(self, scope: str, key: str) -> str:
        return f"{self.prefix}:idem:{scope}:{key}"

    def model_info(self, model: str) -> str:
        return f"{self.prefix}:model:{model}"

    def workers(self, model: str) -> str:
        return f"{self.prefix}:workers:{model}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"

    @property
    def histograms(self) -> str:
        return f"{self.prefix}:histograms"

    def rate(self, tenant: str, minute: int) -> str:
        return f"{self.prefix}:rate:{tenant}:{minute}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def tenant_history(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:history"

    def tenant_inversions(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:inversions"

    @property
    def webhooks(self) -> str:
        return f"{self.prefix}:webhooks"

    @property
    def webhook_attempts(self) -> str:
        return f"{self.prefix}:webhooks:attempts"

    @property
    def webhook_retry(self) -> str:
        return f"{self.prefix}:webhooks:retry"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key under this prefix (tests clean up with it)."""
        return f"{self.prefix}:*"
