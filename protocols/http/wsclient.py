"""A WebSocket client over an ``/http/1.1`` stream: :func:`connect_websocket`.

httpx has no WebSocket support of its own, so the httpx transport
(:class:`~switchy.protocols.http.client.SwitchyTransport`) cannot carry one; this
client does the upgrade on a new stream to the peer with wsproto and then speaks
WebSocket on it (the tunnel's clients use ``/ws``).  It needs no extra package::

    async with await connect_websocket(node, peer, "/ws") as ws:
        await ws.send("hello")
        answer = await ws.receive()

With a :class:`~switchy.protocols.http.client.SwitchyTransport`, a URL is enough:
``await transport.connect_websocket("ws://media/ws")`` (its host resolved as for HTTP).

Bounds: a message larger than ``limits.max_ws_message`` fails the WebSocket (1009) and
raises :class:`WebSocketClosed`; so does data that breaks the protocol (1002).  Failing
(RFC 6455 7.1.7) sends the close frame if it can leave at once and resets the stream:
no close handshake is awaited from a peer that misbehaves; the handshake must complete within
``limits.head_timeout``; a peer that stops reading makes :meth:`WebSocket.send` reset
the stream after ``limits.write_timeout``.  Pings are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from switchy.protocols.http.core import DEFAULT_LIMITS, HTTP_PROTOCOL, HttpError, HttpLimits
from switchy.protocols.http.io import write_timed
from switchy.protocols.http.websocket import (
    CLOSE_ABNORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    MessageAssembler,
)
from switchy.stack.errors import ConnectionClosed, MessageTooLarge, P2PError, P2PTimeout
from switchy.stack.node import Node, Target
from switchy.stack.stream import Stream

__all__ = ["WebSocket", "WebSocketClosed", "connect_websocket"]


class WebSocketClosed(ConnectionClosed):
    """The WebSocket was closed (by either side, or the stream ended); ``code`` says how."""

    def __init__(self, message: str, code: int = CLOSE_ABNORMAL, reason: str | None = None):
        super().__init__(message)
        #: The close code (1000 normal, 1006 the stream ended without a close frame, ...).
        self.code = code
        #: The close reason the peer gave, if any.
        self.reason = reason


class WebSocket:
    """One client WebSocket on ``stream`` (made by :func:`connect_websocket`)."""

    def __init__(
        self, stream: Stream, ws: WSConnection, accepted: AcceptConnection, limits: HttpLimits
    ) -> None:
        self.stream = stream
        self._ws = ws
        self.limits = limits
        #: The subprotocol the server chose (``None``: none).
        self.subprotocol = accepted.subprotocol
        #: The extra headers of the server's ``101`` answer.
        self.headers = list(accepted.extra_headers)
        self._closed: WebSocketClosed | None = None
        # fragments of the message being received: they outlive a cancelled receive()
        self._assembler = MessageAssembler(limits.max_ws_message)

    async def _write(self, data: bytes) -> None:
        try:
            await write_timed(self.stream, data, self.limits.write_timeout)
        except (P2PError, OSError) as exc:
            self._closed = self._closed or WebSocketClosed(f"the WebSocket peer went away: {exc}")
            raise self._closed from None

    async def send(self, data: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message.

        Raises :class:`WebSocketClosed` once the WebSocket is closed.
        """
        if self._closed is not None:
            raise self._closed
        message = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        await self._write(self._ws.send(message))

    async def receive(self) -> str | bytes:
        """The next message (``str`` for text, ``bytes`` for binary).

        Raises :class:`WebSocketClosed` when the peer closed (its close is answered) or
        the stream ended, or the message is larger than ``limits.max_ws_message``.
        """
        while True:
            if self._closed is not None:
                raise self._closed
            for event in self._ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    try:
                        message = self._assembler.add(event)
                    except MessageTooLarge:
                        raise await self._fail(
                            CLOSE_TOO_BIG,
                            "message too big",
                            f"a message of more than {self.limits.max_ws_message} bytes",
                        ) from None
                    if message is not None:
                        return message
                elif isinstance(event, Ping):
                    with contextlib.suppress(WebSocketClosed):
                        await self._write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if self._ws.state is ConnectionState.OPEN:
                        # wsproto reports data it cannot parse as a close "from" the peer
                        # while the state stays open (a real close frame changes it)
                        raise await self._fail(
                            event.code,
                            event.reason,
                            f"bad WebSocket data from the peer ({event.code}): {event.reason}",
                        )
                    if self._ws.state is not ConnectionState.CLOSED:
                        with contextlib.suppress(WebSocketClosed, LocalProtocolError):
                            await self._write(self._ws.send(event.response()))
                    self._closed = WebSocketClosed(
                        f"the peer closed the WebSocket ({event.code})", event.code, event.reason
                    )
                    with contextlib.suppress(P2PError, OSError):
                        await self.stream.close()
                    raise self._closed
            try:
                data = await self.stream.read(self.limits.read_size)
            except (P2PError, OSError):
                data = b""
            if not data:
                self._closed = WebSocketClosed("the stream ended without a close frame")
                raise self._closed
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError as exc:
                raise await self._fail(
                    CLOSE_PROTOCOL_ERROR,
                    "protocol error",
                    f"bad WebSocket data from the peer: {exc}",
                ) from None

    async def _fail(self, code: int, reason: str | None, message: str) -> WebSocketClosed:
        """Fail the WebSocket connection (RFC 6455 7.1.7): the close frame if it can leave
        without waiting, then reset the stream; the error to raise."""
        if self._closed is None:
            self._closed = WebSocketClosed(message, code, reason)
            with contextlib.suppress(LocalProtocolError):
                self.stream.try_write_nowait(self._ws.send(CloseConnection(code, reason)))
        with contextlib.suppress(P2PError, OSError):
            await self.stream.reset()
        return self._closed

    async def _close_with(self, code: int, reason: str | None) -> None:
        if self._closed is None:
            self._closed = WebSocketClosed(f"the WebSocket was closed ({code})", code, reason)
            with contextlib.suppress(WebSocketClosed, LocalProtocolError):
                await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        with contextlib.suppress(P2PError, OSError):
            await self.stream.close()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a close frame (when still open) and close the stream."""
        await self._close_with(code, reason)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        """The messages until the WebSocket closes (normally or not)."""
        while True:
            try:
                yield await self.receive()
            except WebSocketClosed:
                return

    async def __aenter__(self) -> WebSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_websocket(
    node: Node,
    peer: Target,
    path: str = "/",
    *,
    host: str = "p2p",
    headers: Iterable[tuple[str, str]] = (),
    subprotocols: Sequence[str] = (),
    limits: HttpLimits = DEFAULT_LIMITS,
) -> WebSocket:
    """Open a WebSocket to ``path`` on ``peer`` (any ``/http/1.1`` server: an ASGI app on
    a node, or a local server behind ``switchy expose``).

    Raises :class:`~switchy.protocols.http.core.HttpError` with the server's status when
    it refuses the upgrade (``403``, ``404``, ...), :class:`P2PTimeout` when no answer
    comes within ``limits.head_timeout``, and what ``open_stream`` raises.
    """
    stream = await node.open_stream(peer, HTTP_PROTOCOL)
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        async with asyncio.timeout(limits.head_timeout):
            await write_timed(
                stream,
                ws.send(
                    Request(
                        host=host,
                        target=path,
                        extra_headers=[(k.encode(), v.encode()) for k, v in headers],
                        subprotocols=list(subprotocols),
                    )
                ),
                limits.write_timeout,
            )
            while True:
                data = await stream.read(limits.read_size)
                if not data:
                    raise WebSocketClosed("the peer closed the stream during the handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return WebSocket(stream, ws, event, limits)
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        await stream.reset()
                        raise HttpError(f"the peer refused the WebSocket ({status})", status)
                    if isinstance(event, RejectData):
                        continue
    except TimeoutError:
        await stream.reset()
        raise P2PTimeout(f"no WebSocket handshake answer within {limits.head_timeout}s") from None
    except RemoteProtocolError as exc:
        await stream.reset()
        raise HttpError(f"bad WebSocket handshake answer: {exc}", 502) from None
    except BaseException:
        await stream.reset()
        raise
