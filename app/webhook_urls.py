"""Where webhooks may go: a request's URL is checked when it is submitted, and every address the
receiver's name resolves to is checked again when an event is delivered (SSRF).

By default a webhook reaches public addresses only: loopback, private (RFC 1918, IPv6 ULA ``fc00::/7``),
shared (``100.64.0.0/10``), link-local (where cloud metadata services answer, ``169.254.169.254``,
``fd00:ec2::254``), unspecified, multicast, reserved and documentation addresses are refused, whether
written as IPv4 in any numeric form (``0x7f000001``, ``2130706433``, ``127.1``), as IPv6, or embedded in
IPv6 (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo). ``BDIA_WEBHOOK_ALLOW_HOSTS`` names the host
names and networks that may be reached all the same (receivers inside the deployment's network).

A delivery does not let the HTTP client resolve the name: ``PinnedBackend`` resolves it, checks every
address, and connects to a checked one, so a name that resolves to a public address when checked and to
a private one when connected (DNS rebinding) reaches nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpcore

from bdia.jobqueue.settings import HOST_NAME, IPNetwork, Settings, allowed_hosts

MAX_URL_CHARS = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESERVED_NAMES = ("localhost", "metadata.google.internal", "metadata.goog")
"""Names that always mean this machine or a cloud metadata service (with their subdomains)."""

REFUSED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",  # IETF protocol assignments (Oracle Cloud's metadata service: 192.0.0.192)
        "168.63.129.16/32",  # Azure's host endpoint (wire server)
        "100.100.100.200/32",  # Alibaba Cloud's metadata service
    )
)
"""Addresses Python does not count as non-global that still reach a cloud's own services."""

NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
"""The last label of a host written as an IPv4 number (``127.1``, ``0x7f000001``): resolvers read it so."""


class WebhookUrlError(ValueError):
    """Why a webhook URL is refused; ``code`` is the problem code: ``invalid_parameter`` (malformed) or
    ``webhook_url_forbidden`` (a destination the policy refuses)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DestinationRefused(httpcore.ConnectError):
    """A receiver's name resolved to an address the policy refuses (raised while connecting)."""


@dataclass(frozen=True)
class Target:
    """A checked webhook URL, in the pieces a connection needs."""

    scheme: str
    host: str
    """ASCII (IDNA) host name, or an IP address (IPv6 without brackets)."""
    port: int
    target: str
    """Path and query, percent-encoded."""
    address: IPAddress | None
    """The address when the URL names one rather than a name."""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"

    @property
    def url(self) -> httpcore.URL:
        return httpcore.URL(scheme=self.scheme, host=self.host, port=self.port, target=self.target)


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo): they are
    where it leads, so they are checked too."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo:
        found += address.teredo
    packed = address.packed
    if packed[:12] == bytes(12) or packed[:12] == bytes.fromhex("0064ff9b0000000000000000"):  # ::/96, 64:ff9b::/96
        found.append(ipaddress.IPv4Address(packed[12:]))
    return found


def why_private(address: IPAddress) -> str | None:
    """What makes an address one that webhooks may not reach by default, or None for a public one."""
    for a in (*embedded_ipv4(address), address):
        for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
            if getattr(a, f"is_{kind}"):
                return kind.replace("_", "-")
        if not a.is_global or any(a in network for network in REFUSED_NETWORKS):
            return "special-purpose"
    return None


@dataclass(frozen=True)
class Policy:
    """The deployment's webhook destinations: public addresses, plus what ``BDIA_WEBHOOK_ALLOW_HOSTS`` names."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        names, networks = allowed_hosts(settings.webhook_allow_hosts)
        return cls(names, networks)

    def refuses(self, address: IPAddress) -> str | None:
        """Why an address may not be reached (None: it may)."""
        if any(address.version == n.version and address in n for n in self.networks):
            return None
        reason = why_private(address)
        return None if reason is None else f"{address} is not a public address ({reason})"

    def check(self, url: object, *, names: bool = True) -> Target:
        """The URL, parsed and checked: http(s), a valid host and port, no credentials, at most
        ``MAX_URL_CHARS``; an address it names must be allowed, and with ``names`` so must a reserved name
        (``localhost``). Raises ``WebhookUrlError``. Names are otherwise judged by what they resolve to,
        when delivered."""
        target = parse(url)
        if target.address is not None:
            reason = self.refuses(target.address)
            if reason is not None:
                raise WebhookUrlError("webhook_url_forbidden", f"{reason}: webhooks go to public addresses only")
        elif names and target.host not in self.names and _reserved(target.host):
            raise WebhookUrlError("webhook_url_forbidden", "this host is local; webhooks go to public hosts only")
        return target

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to, each checked: ``DestinationRefused`` names the first refused
        one; ``httpcore.ConnectError`` when it does not resolve."""
        try:
            literal = [ipaddress.ip_address(host)]
        except ValueError:
            literal = []
        if literal:
            addresses = literal
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos))
            if not addresses:
                raise httpcore.ConnectError(f"{host} resolves to no address")
        if host not in self.names:
            for address in addresses:
                reason = self.refuses(address)
                if reason is not None:
                    raise DestinationRefused(f"{host}: {reason}")
        return addresses


def _reserved(name: str) -> bool:
    return any(name == n or name.endswith("." + n) for n in RESERVED_NAMES)


def parse(url: object) -> Target:
    """A webhook URL's pieces, or ``WebhookUrlError`` (``invalid_parameter``) saying what is wrong."""

    def bad(message: str) -> WebhookUrlError:
        return WebhookUrlError("invalid_parameter", message)

    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise bad(f"must be an http(s) URL of at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 0x20 or c in "\x7f\\" for c in url):
        raise bad("must not contain spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise bad(f"must be an http(s) URL of at most {MAX_URL_CHARS} characters")
    if "@" in parts.netloc:
        raise bad("must not contain credentials (user:password@); put a token in the path or query if needed")
    if port == 0:
        raise bad("port 0 is not a valid port")
    scheme = parts.scheme.lower()
    host, address = _host(parts.netloc, parts.hostname)
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/?%:@!$&'()*+,;=-._~")
    return Target(
        scheme=scheme,
        host=host,
        port=port or (443 if scheme == "https" else 80),
        target=path + (f"?{query}" if parts.query else ""),
        address=address,
    )


def _host(netloc: str, hostname: str | None) -> tuple[str, IPAddress | None]:
    """The host, as it will be connected to, and its address when it is one."""
    if not hostname:
        raise WebhookUrlError("invalid_parameter", "must name a host")
    if netloc.startswith("["):
        try:
            address = ipaddress.IPv6Address(hostname)
        except ValueError:
            address = None
        if address is None or address.scope_id:
            raise WebhookUrlError("invalid_parameter", "is not a valid IPv6 address (without a zone)")
        return hostname, address
    try:
        name = hostname.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise WebhookUrlError("invalid_parameter", "is not a valid host name") from None
    if NUMERIC_LABEL.fullmatch(name.rpartition(".")[2]):  # an IPv4 address in some numeric form
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            raise WebhookUrlError("invalid_parameter", "is not a valid IPv4 address") from None
        return str(address), address
    if not HOST_NAME.fullmatch(name):
        raise WebhookUrlError("invalid_parameter", "is not a valid host name")
    return name, None


def redact(url: Any) -> str:
    """A URL fit for logs: no credentials, no query (it often carries a token), no fragment."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}{parts.path}" + ("?…" if parts.query else "")


def scrub(text: str, url: str | None) -> str:
    """``text`` (an error message) with the URL, its credentials and its query replaced by their redacted form."""
    if not url:
        return text
    text = text.replace(url, redact(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.query, parts.fragment, parts.password, parts.username]
        secrets += [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    except ValueError:
        secrets = []
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "…")
    return text


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for deliveries: connects only to addresses ``policy`` allows, resolving
    the name itself and connecting to the very address it checked (no second lookup to rebind)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        error: Exception = httpcore.ConnectError(f"{host} resolves to no address")
        for address in await self.policy.resolve(host, port):
            try:
                return await self.inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise httpcore.ConnectError("webhooks are delivered over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
