"""Sans-IO core of HTTP over switchy streams (``/http/1.1``): h11 with explicit limits.

One HTTP/1.1 request per stream (the libp2p HTTP spec): the client writes one request and
reads one response; the server answers with ``Connection: close``.  This module owns
no socket and no task: :class:`ServerCore` and :class:`ClientCore` take bytes in and
give h11 events and bytes out, and every limit is a named constant of
:class:`HttpLimits`.  The asyncio adapters (:mod:`.server`, :mod:`.client`,
:mod:`.proxy`) feed them from a :class:`~switchy.stack.stream.Stream`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Final, TypeAlias

import attrs
import h11

from switchy.stack.errors import ProtocolError

__all__ = [
    "DEFAULT_LIMITS",
    "HTTP_PARSER",
    "HTTP_PARSER_ENV",
    "HTTP_PROTOCOL",
    "PEER_ID_HEADER",
    "WELL_KNOWN_PROTOCOLS_PATH",
    "ClientCore",
    "HttpError",
    "HttpLimits",
    "ServerCore",
    "header_value",
    "is_websocket_upgrade",
    "parse_range",
    "reason",
]

#: The multistream-select protocol id of HTTP/1.1 over a libp2p stream.
HTTP_PROTOCOL: Final = "/http/1.1"
#: The spec's well-known resource: a JSON map ``{protocol id: {"path": prefix}}``.
WELL_KNOWN_PROTOCOLS_PATH: Final = "/.well-known/libp2p/protocols"
#: The header a proxying server adds to a request it forwards to a local HTTP server:
#: the authenticated peer id of the remote peer (any such header the peer sent is removed).
PEER_ID_HEADER: Final = "x-switchy-peer-id"

#: The environment variable that picks the HTTP/1.1 parser: ``h11`` or ``httptools``.
HTTP_PARSER_ENV: Final = "SWITCHY_HTTP_PARSER"

Headers: TypeAlias = list[tuple[bytes, bytes]]
Event: TypeAlias = h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]


@attrs.frozen
class HttpLimits:
    """Limits of one HTTP exchange (every one explicit; the defaults suit a home server)."""

    #: Most bytes of a request or response head (request line and headers).
    max_head_size: int = 16 * 1024
    #: Most header fields in a head.
    max_headers: int = 100
    #: Bytes asked from a stream per read (the most buffered per exchange, besides h11's
    #: head buffer).
    read_size: int = 256 * 1024
    #: Seconds a peer has to send a complete request head (slow clients).
    head_timeout: float = 30.0
    #: Seconds a read of a body may wait for the peer's next bytes.
    idle_timeout: float = 60.0
    #: Seconds a write may wait for the peer to read (a peer that never reads).
    write_timeout: float = 60.0
    #: Largest WebSocket message accepted (bytes).
    max_ws_message: int = 1024 * 1024
    #: Largest request body a server accepts (bytes; ``None``: any, streamed).  A larger
    #: ``Content-Length`` is refused with ``413`` before the body is read; a chunked body
    #: as soon as it passes the limit.
    max_request_body: int | None = None


#: The limits used when none are given.
DEFAULT_LIMITS: Final = HttpLimits()


class HttpError(ProtocolError):
    """A peer's HTTP message was malformed or over a limit; ``status`` is the answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        #: The HTTP status a server answers with (400, 413, 431, ...).
        self.status = status


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of the first header called ``name`` (lower case), or ``None``."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def is_websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's headers ask to upgrade to WebSocket."""
    headers = list(headers)
    upgrade = header_value(headers, b"upgrade")
    connection = header_value(headers, b"connection") or b""
    tokens = {t.strip().lower() for t in connection.split(b",")}
    return upgrade is not None and upgrade.lower() == b"websocket" and b"upgrade" in tokens


def parse_range(value: bytes | None, size: int) -> tuple[int, int] | None:
    """The one byte range ``(first, last)`` (inclusive) a ``Range`` header asks of ``size``.

    ``None`` when there is no header or it cannot be honoured as one range (the whole
    body is then sent with 200).  Raises :class:`HttpError` (416) when the range lies
    outside the body.
    """
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if not text.startswith("bytes=") or "," in text:
        return None
    first_s, sep, last_s = text[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first_s == "":  # suffix: the last N bytes
            n = int(last_s)
            if n <= 0:
                raise HttpError("empty suffix range", 416)
            return max(0, size - n), size - 1
        first = int(first_s)
        last = int(last_s) if last_s else size - 1
    except ValueError:
        return None
    if first >= size:
        raise HttpError(f"range starts at {first}, past the end ({size} bytes)", 416)
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


def reason(status: int) -> bytes:
    """The standard reason phrase of ``status`` (``b""`` for an unknown one)."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _default_parser() -> str:
    wanted = os.environ.get(HTTP_PARSER_ENV, "")
    if wanted == "h11":
        return "h11"
    try:
        import httptools  # noqa: F401
    except ImportError:
        if wanted == "httptools":
            raise ImportError(
                f"{HTTP_PARSER_ENV}=httptools but httptools is not installed"
            ) from None
        return "h11"
    return "httptools"


#: The HTTP/1.1 parser of new cores: ``"httptools"`` (llhttp, in C; the ``fast`` extra)
#: when installed, else ``"h11"`` (pure Python); :data:`HTTP_PARSER_ENV` overrides it.
#: Both give the same events and errors (:mod:`switchy.protocols.http.fast`).
HTTP_PARSER: str = _default_parser()


class _H11Connection(h11.Connection):
    """h11's connection with the head-writing calls of
    :class:`~switchy.protocols.http.fast.FastConnection`."""

    def send_request(self, method: bytes, target: bytes, headers: Headers) -> bytes:
        """A request head."""
        return self.send(h11.Request(method=method, target=target, headers=headers)) or b""

    def send_response(self, status: int, headers: Headers, reason: bytes) -> bytes:
        """A response head."""
        event = h11.Response(status_code=status, headers=headers, reason=reason)
        return self.send(event) or b""

    def send_data(self, data: bytes) -> bytes:
        """Body bytes."""
        return self.send(h11.Data(data=data)) or b""

    def send_eom(self) -> bytes:
        """The end of the message."""
        return self.send(h11.EndOfMessage()) or b""


_fast: Any = None


def _connection(role: type[h11.CLIENT] | type[h11.SERVER], limits: HttpLimits) -> Any:
    global _fast
    if HTTP_PARSER == "httptools":
        if _fast is None:
            from switchy.protocols.http.fast import FastConnection as _fast
        return _fast(role, limits.max_head_size)
    return _H11Connection(role, max_incomplete_event_size=limits.max_head_size)


class _Core:
    """What the server and client cores share: feeding, events, limit checks."""

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER], limits: HttpLimits) -> None:
        self.limits = limits
        #: The HTTP/1.1 connection state: h11's, or the httptools one (:data:`HTTP_PARSER`).
        self.conn: _H11Connection = _connection(role, limits)

    def receive(self, data: bytes) -> None:
        """Feed bytes from the peer (``b""`` at its end of stream)."""
        self.conn.receive_data(data)

    def next_event(self) -> Event:
        """The next h11 event; raises :class:`HttpError` for bad input or a limit passed."""
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            raise HttpError(f"malformed HTTP from the peer: {exc}", status) from None
        if (
            type(event) in _HEADS and len(event.headers) > self.limits.max_headers  # type: ignore[union-attr]
        ):
            raise HttpError(
                f"{len(event.headers)} header fields, more than the limit of "  # type: ignore[union-attr]
                f"{self.limits.max_headers}",
                431,
            )
        return event

    def send(self, event: h11.Event) -> bytes:
        """The bytes of ``event`` (h11 checks it fits the message state)."""
        data = self.conn.send(event)
        return data or b""

    def data(self, data: bytes) -> bytes:
        """The bytes of a body part (framed as the head said)."""
        return self.conn.send_data(data)

    def end(self) -> bytes:
        """The bytes that end the message (the last chunk of a chunked body)."""
        return self.conn.send_eom()

    def ready_for_next(self) -> bool:
        """Whether both sides finished the exchange and keep the connection alive."""
        conn = self.conn
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def start_next_cycle(self) -> None:
        """Start the next exchange on a kept-alive connection (after :meth:`ready_for_next`)."""
        self.conn.start_next_cycle()

    @property
    def trailing_data(self) -> bytes:
        """Bytes after the message h11 did not consume (after a protocol switch)."""
        return bytes(self.conn.trailing_data[0])


_HEADS: Final = (h11.Request, h11.Response, h11.InformationalResponse)


class ServerCore(_Core):
    """The server side of one exchange: parse a request, write a response.

    Enforces :attr:`HttpLimits.max_request_body` (``413``).
    """

    def __init__(self, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        super().__init__(h11.SERVER, limits)
        self._body_seen = 0

    def next_event(self) -> Event:
        """The next h11 event; raises :class:`HttpError` (``413``) for a request body over
        the limit: at its head when its ``Content-Length`` says so, else as soon as the
        bytes received pass it."""
        event = super().next_event()
        limit = self.limits.max_request_body
        if limit is None:
            return event
        if isinstance(event, h11.Request):
            self._body_seen = 0
            length = header_value(event.headers, b"content-length")
            if length is not None and int(length) > limit:
                raise HttpError(
                    f"a request body of {int(length)} bytes, more than the limit of {limit}",
                    413,
                )
        elif isinstance(event, h11.Data):
            self._body_seen += len(event.data)
            if self._body_seen > limit:
                raise HttpError(f"a request body of more than the limit of {limit} bytes", 413)
        return event

    def response(self, status: int, headers: Headers, *, close: bool = True) -> bytes:
        """The bytes of a response head; adds ``Connection: close`` (one request per stream)."""
        if close and header_value(headers, b"connection") is None:
            headers = [*headers, (b"connection", b"close")]
        return self.conn.send_response(status, headers, reason(status))

    def simple_response(self, status: int, body: bytes, content_type: bytes) -> bytes:
        """A complete response with ``body`` (for errors and small documents)."""
        head = self.response(
            status,
            [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        )
        return head + self.data(body) + self.end()

    def error_response(self, status: int, message: str) -> bytes:
        """A plain-text error response, or ``b""`` when a response was already started."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return b""
        return self.simple_response(status, (message + "\n").encode(), b"text/plain")

    def switch_protocol(self, headers: Headers) -> bytes:
        """The ``101 Switching Protocols`` answer to an upgrade request."""
        return self.send(
            h11.InformationalResponse(status_code=101, headers=headers, reason=reason(101))
        )


class ClientCore(_Core):
    """The client side of one exchange: write a request, parse the response."""

    def __init__(self, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        super().__init__(h11.CLIENT, limits)

    def request(self, method: bytes, target: bytes, headers: Headers) -> bytes:
        """The bytes of a request head (a ``Host`` header is added when missing)."""
        if header_value(headers, b"host") is None:
            headers = [(b"host", b"p2p"), *headers]
        return self.conn.send_request(method, target, headers)
