"""``/v1/webhooks/secret``: the calling tenant's webhook signing secret, for its receiver to verify with."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ..auth import SECURITY, tenant_of
from ..deps import ServicesDep
from ..problems import Problem, responses
from ..webhooks import secret_for

router = APIRouter(prefix="/v1", tags=["webhooks"], dependencies=SECURITY)


class WebhookSecretOut(BaseModel):
    """A tenant's Standard Webhooks signing secret."""

    tenant: str = Field(description="the tenant the API key belongs to")
    secret: str = Field(description="`whsec_` + base64: verify the `webhook-signature` header with it")


@router.get("/webhooks/secret", responses=responses(401, 404))
async def get_webhook_secret(request: Request, services: ServicesDep) -> WebhookSecretOut:
    """The secret that signs this tenant's webhooks (its own: no other tenant's key can forge them).
    404 `not_found` when the deployment has webhooks off (no `BDIA_WEBHOOK_SECRET`)."""
    tenant = tenant_of(request)
    secret = secret_for(services.settings, tenant)
    if secret is None:
        raise Problem(404, "not_found", "webhooks are off in this deployment (no BDIA_WEBHOOK_SECRET is set)")
    return WebhookSecretOut(tenant=tenant, secret=secret)
