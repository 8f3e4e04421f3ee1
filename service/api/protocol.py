"""uvicorn's httptools protocol with the two limits it lacks on a request's head.

uvicorn bounds neither how long a client may take to send a request line and headers (it
arms no timer until a first response is sent, and any byte cancels its keep-alive timer)
nor how large they may be (httptools buffers a header or URL of any size). Both happen
before the ASGI app is called, so no middleware can see them: they live here.

- Head timeout: from the moment the server waits for a request (connection opened, or the
  previous response sent) the whole head must arrive within `head_timeout` seconds, however
  it trickles in; otherwise 408 (or a plain close if nothing was sent) and the connection ends.
- Head size: a request line and headers over `max_head_bytes` get 431 and the connection
  ends. Complete headers are counted as the parser hands them over; one header (or URL) still
  arriving is counted by the bytes read since it began, so at most one socket read more than
  the limit is ever held.
- Unread bodies: after an answer sent before its request's body was all read (a 401, 413,
  408...), uvicorn would read and drop the rest, however long it is. Instead the connection
  lingers (as nginx does): the answer is followed by a FIN, what still arrives is dropped
  unparsed for `linger_seconds`, then the connection is closed. Closing at once would make
  the kernel answer the unread data with a reset, which can destroy the answer before the
  client has read it.
- Connections: at most `max_connections` open (MAX_CONNECTIONS), so the process never runs
  out of files. At the limit a new connection takes the place of the one that has waited
  longest for a request, never of one being served, and is closed at once only when every
  one is being served. Refusing every new connection instead would let idle sockets shut
  out the orchestrator's probes until REQUEST_HEADER_TIMEOUT frees them, again and again;
  an idle connection closed loses nothing (service/net/connections.py).
"""

from __future__ import annotations

import asyncio
import http

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.net.connections import Connections


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; httptools wraps it in a parser error."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    head_timeout: float = 10.0  # set by `guarded_protocol`
    max_head_bytes: int = 16 * 1024
    linger_seconds: float = 2.0
    limit: Connections[GuardedHttpToolsProtocol]  # one per server, set by `guarded_protocol`

    _head_timer: asyncio.TimerHandle | None = None
    _awaiting_head = False  # the timer runs: waiting for a request head, or part way through
    _in_head = False  # a head's first bytes came (on_message_begin), not yet its end
    _head_size = 0  # bytes of the head the parser has handed over (URL and complete headers)
    _head_reads = 0  # bytes read since the head began, but for the read that began it
    _head_began = False  # the current head began in the read being parsed
    _head_too_large = False
    _lingering: asyncio.TimerHandle | None = None  # the close that ends the linger

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if not self.limit.opened(self):
            self.transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.limit.closed(self)
        self._cancel_head_timer()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # the answer is sent: the rest of the request is dropped unread
        self._head_began = False
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        if not self._head_began:  # a head still arriving: count what it has taken so far
            self._head_reads += len(data)
        if self._head_reads > self.max_head_bytes:
            self._too_large()

    def send_400_response(self, msg: str) -> None:
        """httptools stopped: a callback found the head too large, or the request is not
        HTTP. uvicorn's 400, in our error shape."""
        if self._head_too_large:
            self._too_large()
        else:
            self._refuse(400, "malformed_request", msg)

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.limit.began(self)
        self._in_head = self._head_began = True
        self._head_size = self._head_reads = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_head = self._in_head = False
        self._cancel_head_timer()
        self.limit.serving(self)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        answered, unread = self.cycle.response_complete, self.cycle.more_body
        if answered and unread and not self.transport.is_closing():
            self.server_state.total_requests += 1
            self._linger()
            return
        super().on_response_complete()
        # Unless a pipelined request is already being served, the next head's clock starts.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._arm_head_timer()

    # Limits
    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.max_head_bytes:
            self._head_too_large = True
            raise HeadTooLarge

    def _too_large(self) -> None:
        message = f"the request line and headers are over {self.max_head_bytes} bytes"
        self._refuse(431, "headers_too_large", message)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._awaiting_head = True
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
        self.limit.idle(self)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._awaiting_head or self.transport.is_closing():
            return
        if self._in_head:  # part of a request came: say why it is dropped
            message = f"the request head did not arrive within {self.head_timeout:g} s"
            self._refuse(408, "request_timeout", message)
        else:  # an idle connection: just close it, as after a keep-alive timeout
            self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer in the API's error shape, then linger: the rest is never parsed."""
        if self.transport.is_closing() or self._lingering is not None:
            return
        body = orjson.dumps({"error": {"code": code, "message": message}})
        phrase = http.HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self._linger()

    def _linger(self) -> None:
        """Send a FIN after the answer, drop what still comes, close after `linger_seconds`
        (at once if the client closes first)."""
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        self.limit.unserved(self)
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()  # uvicorn pauses reading while a body waits to be read
        self._lingering = self.loop.call_later(self.linger_seconds, self.transport.close)


def guarded_protocol(
    head_timeout: float, max_head_bytes: int, linger_seconds: float, max_connections: int
) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`), with these limits."""
    connections: Connections[GuardedHttpToolsProtocol] = Connections(
        max_connections, lambda protocol: protocol.transport.close(), "API"
    )
    limits = {
        "head_timeout": head_timeout,
        "max_head_bytes": max_head_bytes,
        "linger_seconds": linger_seconds,
        "limit": connections,
    }
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), limits)
