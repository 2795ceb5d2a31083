"""API keys and tenants: ``Authorization: Bearer <key>``; each key belongs to one tenant.

Keys are held as their sha256 digests only (the keys file may hold nothing else), so a leaked
configuration or heap does not give the keys away; the lookup compares digests, never keys. With
no keys configured the service is open: every request is tenant ``public`` and a warning is logged.
Jobs, inversions, cache entries and idempotency keys all belong to a tenant: another tenant's id
answers 404.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from bdia.jobqueue.settings import PUBLIC_TENANT, Settings

from .problems import Problem

log = logging.getLogger("bdia.auth")

DEFAULT_TENANT = "default"
"""The tenant of a key configured without one."""
TENANT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


SECURITY = [
    Depends(HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")),
    Depends(APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key, as an alternative")),
]
"""The ``/v1`` routers' dependencies that declare the two ways to give the key (OpenAPI security schemes,
the Authorize button of ``/docs``); checking it is ``Authenticate``'s, before any route runs."""


def digest(key: str) -> str:
    """How a key is held at rest: its sha256, hex (keys are high-entropy; no salt or stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(request: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer …`` (or ``X-API-Key``)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key")


def tenant_of(request: Request) -> str:
    """The tenant ``Authenticate`` found for this request."""
    return request.scope.get("state", {}).get("tenant", PUBLIC_TENANT)


@dataclass(frozen=True)
class ApiKeys:
    """Key digests and the tenant each belongs to."""

    tenants: dict[str, str]
    """sha256 hex digest of a key → its tenant."""

    @classmethod
    def parse(cls, entries: list[str]) -> ApiKeys:
        """From ``tenant:key``, ``key`` or ``tenant:sha256:HEX`` entries; ``ValueError`` names a bad one."""
        tenants: dict[str, str] = {}
        for entry in (e.strip() for e in entries):
            if not entry or entry.startswith("#"):
                continue
            tenant, sep, secret = entry.partition(":")
            if not sep:
                tenant, secret = DEFAULT_TENANT, entry
            if not TENANT_NAME.match(tenant) or not secret:
                raise ValueError(f"bad API key entry for tenant {tenant[:64]!r}: want tenant:key")
            hashed = DIGEST.match(secret)
            tenants[hashed.group(1) if hashed else digest(secret)] = tenant
        return cls(tenants)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        entries = settings.api_keys.split(",")
        if settings.api_keys_file:
            entries += Path(settings.api_keys_file).read_text().splitlines()
        keys = cls.parse(entries)
        if not keys.tenants:
            log.warning("no API keys configured (BDIA_API_KEYS, BDIA_API_KEYS_FILE): the API is open to anyone")
        return keys

    def tenant(self, key: str | None) -> str | None:
        """The tenant whose key this is; None for an unknown key."""
        return self.tenants.get(digest(key)) if key else None


class Authenticate:
    """ASGI middleware: find the request's tenant; 401 ``unauthorized`` on ``/v1/`` without a valid key.

    A middleware rather than a dependency, so that status polling pays one dict lookup for it.
    """

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            tenant = PUBLIC_TENANT
            if self.keys.tenants and scope["path"].startswith("/v1/"):
                found = self.keys.tenant(bearer_token(Request(scope)))
                if found is None:
                    problem = Problem(
                        401, "unauthorized", "a valid API key is required", headers={"WWW-Authenticate": "Bearer"}
                    )
                    await problem.response(scope["path"])(scope, receive, send)
                    return
                tenant = found
            scope.setdefault("state", {})["tenant"] = tenant
        await self.app(scope, receive, send)
