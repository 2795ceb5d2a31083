"""Deadlines on slow clients, so that a client that sends a request slowly (slowloris) cannot hold a
connection for long: the request head must arrive within ``http_header_timeout_s`` (``HeadDeadline``,
uvicorn's h11 protocol with a timer of its own) and the body within ``http_body_timeout_s``
(``BodyDeadline``, ASGI middleware). ``bdia serve`` adds uvicorn's own limits (keep-alive timeout,
connection cap, head size): ``uvicorn_options``.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from bdia.jobqueue.settings import Settings

from .problems import Problem


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not delivered a whole request head within
    ``head_timeout_s`` of when one was due: when it opened, or when its previous response ended.

    uvicorn itself times out only idle keep-alive connections, and any byte received stops that timer,
    so a client sending a header line every few seconds would hold its connection forever. The timer
    here runs while the server waits on the client (for a head, or for the rest of a body the app did
    not read) and no byte resets it; it is not running while the app handles a request (its body has
    its own deadline, ``BodyDeadline``) or while a response streams out."""

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _waiting_on_client(self) -> bool:
        their, ours = self.conn.their_state, self.conn.our_state
        return their is h11.IDLE or (their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))

    def _watch(self) -> None:
        """Start the timer when the server begins to wait on the client, stop it when it stops waiting."""
        if self.transport.is_closing() or not self._waiting_on_client():
            self._stop()
        elif self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head_timeout_s, self._expired)

    def _stop(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _expired(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing() and self._waiting_on_client():
            self.transport.close()


class BodyTimeout(Exception):
    """The request body did not arrive in time."""


def request_timeout(timeout_s: float) -> Problem:
    return Problem(408, "request_timeout", f"the request body did not arrive within {timeout_s:g} s")


class BodyDeadline:
    """ASGI middleware: 408 ``request_timeout`` (with ``Connection: close``) when a request's body has not
    arrived whole within ``timeout_s`` of the request's start. The app's own response to the
    interrupted read is replaced by the 408. Reads after the body (waiting for a disconnect) are not
    bounded."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        complete = expired = started = False

        async def in_time() -> Message:
            nonlocal complete, expired
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                expired = True
                raise BodyTimeout from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def unless_expired(message: Message) -> None:
            nonlocal started
            if not expired:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, in_time, unless_expired)
        except Exception:
            if not expired:
                raise
        if expired and not started:
            response = request_timeout(self.timeout_s).response(scope["path"])
            response.headers["Connection"] = "close"
            await response(scope, _disconnected, send)


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The ``uvicorn.run`` options that bound slow and numerous clients (``bdia serve``)."""
    return {
        "http": functools.partial(HeadDeadline, head_timeout_s=settings.http_header_timeout_s),
        "timeout_keep_alive": settings.http_keepalive_timeout_s,
        "limit_concurrency": settings.http_max_connections,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
    }
