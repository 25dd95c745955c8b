"""ASGI middleware in front of the app: the API key, the body size limit and the body deadlines.

`ApiKeyMiddleware` answers 401 to a /v1/* request without the key before any of its body is read.
`BodyGuardMiddleware` refuses bodies over the limit (413, from Content-Length or while counting)
and drops a body that does not arrive in time (408): the whole body within `timeout_s`, and never
more than `idle_timeout_s` between two pieces. A client that goes away mid-upload is one log line,
not a traceback. Request headers have their own deadline in the HTTP protocol (`cxr.serve.protocol`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MB = 1024 * 1024
API_PREFIX = "/v1/"
KEY_HEADER = b"x-api-key"
_BEARER = b"bearer "
LINGER_S = 2.0  # a refused body is still read (and dropped) for up to this long before the answer: see `_drain`


def client_of(scope: Scope) -> str:
    """'host:port' of the peer, for log lines."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown client"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


async def send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    """A JSON answer sent straight from middleware; the connection closes after it."""
    response = JSONResponse(body, status_code=status, headers={"Connection": "close", **(headers or {})})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# --------------------------------------------------------------------------------------- API key


class ApiKeyMiddleware:
    """/v1/* needs `Authorization: Bearer KEY` or `X-API-Key: KEY` (compared in constant time); else 401."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX) or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        log.info("401 for %s %s from %s: no valid API key", scope["method"], scope["path"], client_of(scope))
        await send_json(send, 401, {"detail": "this server needs an API key: send 'Authorization: Bearer KEY' "
                                              "or 'X-API-Key: KEY'"}, {"WWW-Authenticate": "Bearer"})

    def _authorised(self, scope: Scope) -> bool:
        given = _header(scope, KEY_HEADER)
        auth = _header(scope, b"authorization")
        if given is None and auth is not None and auth[: len(_BEARER)].lower() == _BEARER:
            given = auth[len(_BEARER):].strip()
        return given is not None and hmac.compare_digest(given, self.key)


# ------------------------------------------------------------------------------ body size and time


class BodyGuardMiddleware:
    """Refuse request bodies over `max_bytes` (413) and drop bodies that arrive too slowly (408).

    A declared Content-Length over the limit is answered before any byte is read. Otherwise the
    bytes are counted as the app receives them, and the read that crosses the limit, or that waits
    past the deadline, raises an HTTPException answered by FastAPI's handler (with Connection: close),
    so at most `max_bytes` are ever buffered and no request holds a worker past `timeout_s`.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, idle_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared < 0:
            await send_json(send, 400, {"detail": "invalid Content-Length header"})
            return
        if declared is not None and declared > self.max_bytes:
            if _header(scope, b"expect") != b"100-continue":  # a client that waits for 100 sends nothing
                await _drain(receive, min(LINGER_S, self.idle_timeout_s))
            await send_json(send, 413, {"detail": self._too_large(declared)})
            return
        body = _BodyReader(self, scope, receive)
        try:
            await self.app(scope, body.receive, send)
        except ClientDisconnect:
            log.info("%s went away during %s %s after %s of the body", client_of(scope), scope["method"],
                     scope["path"], _amount(body.received))

    def _too_large(self, size: int, partial: bool = False) -> str:
        amount = f"{'more than ' if partial else ''}{size / MB:.1f} MB"
        return f"request body is {amount}, over the {self.max_bytes / MB:g} MB limit"


class _BodyReader:
    """The `receive` of one request, counting body bytes against the size limit and the deadlines."""

    def __init__(self, guard: BodyGuardMiddleware, scope: Scope, receive: Receive) -> None:
        self.guard = guard
        self.scope = scope
        self.inner = receive
        self.received = 0
        self.done = False
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + guard.timeout_s

    async def receive(self) -> Message:
        if self.done:  # the body is in: later reads only wait for a disconnect
            return await self.inner()
        wait = min(self.deadline - self.loop.time(), self.guard.idle_timeout_s)
        try:
            if wait <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(self.inner(), wait)
        except TimeoutError:
            raise self._timed_out() from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.guard.max_bytes:
                raise HTTPException(413, self.guard._too_large(self.received, partial=True), {"Connection": "close"})
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message

    def _timed_out(self) -> HTTPException:
        late = self.loop.time() >= self.deadline
        reason = (f"the body did not arrive within {self.guard.timeout_s:g} s" if late
                  else f"no byte of the body for {self.guard.idle_timeout_s:g} s")
        log.warning("dropped slow upload from %s (%s %s): %s (%s received)", client_of(self.scope),
                    self.scope["method"], self.scope["path"], reason, _amount(self.received))
        return HTTPException(408, f"request timeout: {reason}", {"Connection": "close"})


async def _drain(receive: Receive, seconds: float) -> None:
    """Read and drop what the client still sends of a refused body, for at most `seconds`. A connection
    closed with unread data is reset, and a reset can destroy the answer before the client reads it
    (what nginx's lingering close avoids); past `seconds` the answer goes out anyway."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(receive(), left)
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return -1


def _amount(size: int) -> str:
    return f"{size} bytes" if size < MB else f"{size / MB:.1f} MB"
