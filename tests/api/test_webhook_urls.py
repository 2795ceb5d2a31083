"""Webhook URLs and secrets, without a deployment: what a request may name (422 with a stable code, the
URL never echoed), what a delivery may connect to once the name is resolved, and settings that stop a
process at start (a malformed secret, a bad allow-list entry)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError
from support import ALICE, BOB, KEYS, REDIS_URL, WEBHOOK_SECRET, assert_problem, bearer

from bdia.app.webhook_urls import DestinationRefused, PinnedBackend, Policy, WebhookUrlError, redact, scrub
from bdia.app.webhooks import secret_for, sign, verify
from bdia.jobqueue.settings import Settings

FORBIDDEN = [
    "http://127.0.0.1/x",
    "http://127.0.0.1:8000/x",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest",
    "http://0x7f000001/x",
    "http://2130706433/x",
    "http://127.1/x",
    "http://0177.0.0.1/x",
    "http://[::1]:8080/x",
    "http://[::ffff:127.0.0.1]/x",
    "http://[::ffff:a9fe:a9fe]/x",  # 169.254.169.254, mapped
    "http://[64:ff9b::a9fe:a9fe]/x",  # NAT64
    "http://[2002:7f00:1::]/x",  # 6to4
    "http://0.0.0.0/x",
    "http://[::]/x",
    "http://10.1.2.3/x",
    "http://172.16.0.1/x",
    "http://192.168.0.1/x",
    "http://100.64.0.1/x",
    "http://100.100.100.200/x",
    "http://192.0.0.192/x",
    "http://224.0.0.1/x",
    "http://[ff02::1]/x",
    "http://[fe80::1]/x",
    "http://240.0.0.1/x",
    "http://localhost:9/x",
    "http://LocalHost./x",
    "http://api.localhost/x",
    "http://metadata.google.internal/computeMetadata/v1/",
]

MALFORMED = [
    "http://127.0.0.1:notaport/x",
    "http://[::1/",
    "http://example.com:0/x",
    "http://example.com:70000/x",
    "http://user:hunter2@example.com/x",
    "http://token@example.com/x",
    "ftp://example.com/x",
    "file:///etc/passwd",
    "http://",
    "not a url",
    "http://exa mple.com/",
    "http://example.com\\@evil.com/",
    "http://a..b/x",
    "http://example.123/x",
    "http://[fe80::1%25eth0]/x",
    "https://example.com/" + "a" * 3000,
]

PUBLIC = ["https://hooks.example.com/x?token=abc", "http://8.8.8.8:8080/x", "http://[2001:4860:4860::8888]/x"]


def test_urls_are_parsed_and_checked() -> None:
    policy = Policy()
    for url in FORBIDDEN:
        with pytest.raises(WebhookUrlError) as refused:
            policy.check(url)
        assert refused.value.code == "webhook_url_forbidden", url
    for url in MALFORMED:
        with pytest.raises(WebhookUrlError) as refused:
            policy.check(url)
        assert refused.value.code == "invalid_parameter", url
    for url in PUBLIC:
        assert policy.check(url).port in (80, 443, 8080)
    numeric = policy.check("http://0x08080808:81/a b".replace(" ", "%20"))
    assert (numeric.host, numeric.port, numeric.target) == ("8.8.8.8", 81, "/a%20b")
    assert policy.check("https://bücher.example/ü?q=1").host == "xn--bcher-kva.example"


def test_the_allow_list_opens_named_hosts_and_networks() -> None:
    policy = Policy.from_settings(Settings(webhook_allow_hosts="127.0.0.1, 10.0.0.0/8, fd12::/16, hooks.corp"))
    for url in ("http://127.0.0.1:9/x", "http://2130706433/x", "http://10.9.9.9/x", "http://[fd12::1]/x"):
        policy.check(url)
    for url in ("http://127.0.0.2/x", "http://169.254.169.254/x", "http://[fd00:ec2::254]/x", "http://localhost/x"):
        with pytest.raises(WebhookUrlError):
            policy.check(url)
    assert Policy.from_settings(Settings(webhook_allow_hosts="localhost")).check("http://localhost:9/x").host == (
        "localhost"
    )


def test_delivery_checks_every_resolved_address_and_connects_to_a_checked_one(monkeypatch) -> None:
    """A name is judged by every address it resolves to; the connection goes to the address that was
    checked (no second lookup that DNS rebinding could answer differently)."""
    answers = {"mixed.example": ["93.184.216.34", "127.0.0.1"], "public.example": ["93.184.216.34"]}
    lookups: list[str] = []
    connected: list[str] = []

    async def getaddrinfo(host, port, **_):
        lookups.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
        backend = PinnedBackend(Policy())

        async def connect_tcp(host, port, *args):
            connected.append(host)
            answers["public.example"] = ["127.0.0.1"]  # rebinding: the next lookup would say loopback
            return object()

        monkeypatch.setattr(backend.inner, "connect_tcp", connect_tcp)
        with pytest.raises(DestinationRefused, match=r"127\.0\.0\.1 is not a public address"):
            await backend.connect_tcp("mixed.example", 443)
        await backend.connect_tcp("public.example", 443)
        assert connected == ["93.184.216.34"] and lookups == ["mixed.example", "public.example"]
        with pytest.raises(DestinationRefused):  # resolved again for a new connection: checked again
            await backend.connect_tcp("public.example", 443)
        with pytest.raises(Exception, match="cannot resolve"):
            await backend.connect_tcp("nowhere.example", 443)
        allowed = PinnedBackend(Policy(names=frozenset({"public.example"})))
        monkeypatch.setattr(allowed.inner, "connect_tcp", connect_tcp)
        await allowed.connect_tcp("public.example", 443)
        assert connected[-1] == "127.0.0.1"

    asyncio.run(run())


def test_urls_in_logs_lose_credentials_and_query() -> None:
    url = "https://user:hunter2@hooks.example.com:8443/in?token=s3cr3t#frag"
    assert redact(url) == "https://hooks.example.com:8443/in?…"
    assert "hunter2" not in scrub(f"failed: {url}; user hunter2 token s3cr3t", url)
    assert "s3cr3t" not in scrub(f"failed: {url}; user hunter2 token s3cr3t", url)
    assert redact("http://[::1/") == "<malformed URL>"


def test_refusals_are_problems_with_stable_codes(api) -> None:
    client = api(webhook_secret=WEBHOOK_SECRET)
    for url, code in [
        *((u, "webhook_url_forbidden") for u in FORBIDDEN[:12]),
        *((u, "invalid_parameter") for u in MALFORMED),
    ]:
        response = client.post("/v1/reconstructions", json={"inversion_id": "inv_x", "webhook": url})
        body = assert_problem(response, 422, code)
        assert body["errors"][0]["loc"] == ["body", "webhook"], body
        assert "hunter2" not in response.text
    allowed = api(webhook_secret=WEBHOOK_SECRET, webhook_allow_hosts="127.0.0.1")
    response = allowed.post("/v1/reconstructions", json={"inversion_id": "inv_x", "webhook": "http://127.1:9/x"})
    assert_problem(response, 404, "not_found")  # past the webhook check


def _derived(deployment_secret: str, tenant: str) -> str:
    """A tenant's secret as docs/operations.md defines it, computed here from the definition."""
    key = base64.b64decode(deployment_secret.split("_", 1)[1])
    digest = hmac.new(key, f"bdia webhook secret v1:{tenant}".encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(digest).decode()


def test_each_tenant_signs_with_its_own_secret() -> None:
    own = "whsec_" + base64.b64encode(b"c" * 32).decode()
    settings = Settings(webhook_secret=WEBHOOK_SECRET, webhook_secrets=f"carol:{own}")
    alice, bob = secret_for(settings, "alice"), secret_for(settings, "bob")
    assert alice == _derived(WEBHOOK_SECRET, "alice") and bob == _derived(WEBHOOK_SECRET, "bob")
    assert len({alice, bob, WEBHOOK_SECRET, own}) == 4 and secret_for(settings, "carol") == own
    body, now = b'{"type":"job.succeeded"}', int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(alice, "msg_1", now, body),
    }
    assert verify(alice, headers, body)
    assert not verify(bob, headers, body) and not verify(WEBHOOK_SECRET, headers, body)
    assert secret_for(Settings(), "alice") is None


def test_malformed_secrets_and_allow_lists_stop_the_start() -> None:
    for bad in ({"webhook_secret": "whsec_abc"}, {"webhook_secret": "abc"}, {"webhook_secret": "whsec_" + "A" * 8}):
        with pytest.raises(ValidationError, match="webhook_secret") as refused:
            Settings(**bad)
        assert bad["webhook_secret"] not in str(refused.value)  # settings errors never echo values
    for bad in ("alice", "alice:whsec_abc", ":whsec_" + "A" * 32):
        with pytest.raises(ValidationError, match="webhook_secrets"):
            Settings(webhook_secrets=bad)
    for bad in ("bad host!", "10.0.0.0/33", "http://x"):
        with pytest.raises(ValidationError, match="webhook_allow_hosts"):
            Settings(webhook_allow_hosts=bad)


def test_bdia_webhooks_refuses_a_malformed_secret_at_start_and_prints_a_tenants_secret() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDIA_")}
    command = [sys.executable, "-m", "bdia.cli", "webhooks"]
    bad = subprocess.run(
        command,
        env={**env, "BDIA_REDIS_URL": REDIS_URL, "BDIA_WEBHOOK_SECRET": "whsec_abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2, (bad.returncode, bad.stderr[-500:])
    assert "BDIA_WEBHOOK_SECRET" in bad.stderr and "whsec_abc" not in bad.stderr and len(bad.stderr.splitlines()) == 1
    shown = subprocess.run(
        [*command, "--secret-for", "alice"],
        env={**env, "BDIA_WEBHOOK_SECRET": WEBHOOK_SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and shown.stdout.strip() == _derived(WEBHOOK_SECRET, "alice"), shown.stderr


@pytest.mark.parametrize("service", ["serve", "worker"])
def test_the_services_name_a_bad_secret_without_echoing_it(service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDIA_")}
    bad = subprocess.run(
        [sys.executable, "-m", "bdia.cli", service],
        env={**env, "BDIA_REDIS_URL": REDIS_URL, "BDIA_WEBHOOK_SECRET": "whsec_abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2, (bad.returncode, bad.stderr[-500:])
    assert "webhook_secret" in bad.stderr and "whsec_abc" not in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_a_tenant_reads_its_own_secret_and_only_its_own(api) -> None:
    client = api(api_keys=KEYS, webhook_secret=WEBHOOK_SECRET)
    alice = client.get("/v1/webhooks/secret", headers=bearer(ALICE))
    bob = client.get("/v1/webhooks/secret", headers=bearer(BOB))
    assert alice.status_code == bob.status_code == 200
    assert alice.json() == {"tenant": "alice", "secret": _derived(WEBHOOK_SECRET, "alice")}
    assert bob.json()["secret"] == _derived(WEBHOOK_SECRET, "bob") != alice.json()["secret"]
    assert_problem(client.get("/v1/webhooks/secret"), 401, "unauthorized")
    assert_problem(api(api_keys=KEYS).get("/v1/webhooks/secret", headers=bearer(ALICE)), 404, "not_found")
