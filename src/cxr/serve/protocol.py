"""uvicorn's h11 HTTP protocol with a deadline on request headers.

uvicorn has no header timeout: a connection that sends a request line and then a header byte every
few seconds stays open for ever, and enough of them exhaust `limit_concurrency`. Here a connection
must complete its request headers within `header_timeout_s` of connecting (or, on a kept-alive
connection, of the first byte of its next request); otherwise it is answered 408 and closed, with
one log line. A connection whose response went out before its body was read (401, 413, 408 ...) is
closed at once, so a body trickling in after the answer cannot hold it open either.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_TIMEOUT_BODY = b"request headers did not arrive in time"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class HeaderDeadlineProtocol(H11Protocol):
    """`H11Protocol` that closes connections whose request headers do not arrive in time."""

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()  # answered before the body was read: do not wait for the rest

    def _watch_headers(self) -> None:
        """A timer runs while a request has started (or the connection is new) but its headers are incomplete."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)
        elif not waiting:
            self._cancel_header_timer()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        log.warning("closed connection from %s: request headers not received within %g s", peer, self.header_timeout_s)
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


def protocol_class(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """A `HeaderDeadlineProtocol` subclass with this deadline, to pass as uvicorn's `http`."""
    return type("CxrHttpProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": float(header_timeout_s)})
