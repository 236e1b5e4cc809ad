"""WebSocket over an ``/http/1.1`` stream: the ASGI ``websocket`` scope, with wsproto.

A request with ``Upgrade: websocket`` becomes a ``websocket`` scope.  The application
accepts (``101`` written then) or closes (``403``).  Messages are bounded by
``limits.max_ws_message`` (a larger one closes with 1009); pings are answered; a peer
that stops reading gets a reset after ``limits.write_timeout`` (the application's
``send`` raises :class:`~switchy.protocols.http.server.ClientDisconnected`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import attrs
import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from switchy.protocols.http.io import peer_of, write_timed
from switchy.stack.errors import InvalidConfiguration, MessageTooLarge, P2PError
from switchy.stack.stream import Stream

if TYPE_CHECKING:
    from switchy.protocols.http.core import ServerCore
    from switchy.protocols.http.server import HttpService
    from switchy.protocols.http.server import Message as AsgiMessage

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "MessageAssembler",
    "serve_websocket",
]

log = logging.getLogger(__name__)

#: Close code for a message over the size limit (RFC 6455 "message too big").
CLOSE_TOO_BIG = 1009
#: Close code when the stream ended without a close frame.
CLOSE_ABNORMAL = 1006
#: Close code for data that breaks the WebSocket protocol (RFC 6455 "protocol error").
CLOSE_PROTOCOL_ERROR = 1002


@attrs.define
class MessageAssembler:
    """Joins the fragments of one WebSocket message, at most ``limit`` bytes (characters
    for text) in all.

    It lives as long as the WebSocket, not one receive call: a receive cancelled between
    two fragments loses none, the next receive goes on where it stopped.
    """

    #: The largest message taken, in bytes (characters for a text message).
    limit: int
    _parts: list[str | bytes] = attrs.field(factory=list, init=False)
    _size: int = attrs.field(default=0, init=False)

    def add(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        """Add the fragment ``event``: the whole message once it is finished, else ``None``.

        Raises :class:`~switchy.stack.errors.MessageTooLarge` when the message grows past
        :attr:`limit` (the fragments are dropped then).
        """
        self._size += len(event.data)
        if self._size > self.limit:
            self.clear()
            raise MessageTooLarge(f"a WebSocket message of more than {self.limit} bytes")
        self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
        if not event.message_finished:
            return None
        parts = self._parts
        self.clear()
        if isinstance(event, TextMessage):
            return "".join(p for p in parts if isinstance(p, str))
        return b"".join(p for p in parts if isinstance(p, bytes))

    def clear(self) -> None:
        """Drop the fragments gathered so far."""
        self._parts = []
        self._size = 0


async def serve_websocket(
    service: HttpService, stream: Stream, core: ServerCore, head: h11.Request
) -> None:
    """Run the application's ``websocket`` scope for ``head`` on ``stream``."""
    from switchy.protocols.http.server import ClientDisconnected

    limits = service.limits
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.initiate_upgrade_connection(list(head.headers), head.target)
    except RemoteProtocolError as exc:
        log.info("bad WebSocket upgrade from %s: %s", peer_of(stream), exc)
        await service._answer(stream, core.error_response(400, f"bad WebSocket upgrade: {exc}"))
        return
    pending = list(ws.events())
    if not pending or not isinstance(pending[0], Request):
        await service._answer(stream, core.error_response(400, "bad WebSocket upgrade"))
        return
    trailing = core.trailing_data
    state: dict[str, Any] = {"connected": False, "accepted": False, "closed": False}
    assembler = MessageAssembler(limits.max_ws_message)

    async def write(data: bytes) -> None:
        try:
            await write_timed(stream, data, limits.write_timeout)
        except (P2PError, OSError) as exc:
            state["closed"] = True
            raise ClientDisconnected(f"the WebSocket peer went away: {exc}") from None

    async def receive() -> AsgiMessage:
        nonlocal trailing
        if not state["connected"]:
            state["connected"] = True
            return {"type": "websocket.connect"}
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    try:
                        whole = assembler.add(event)
                    except MessageTooLarge:
                        log.info("WebSocket message from %s too large", peer_of(stream))
                        with contextlib.suppress(ClientDisconnected, LocalProtocolError):
                            await write(ws.send(CloseConnection(code=CLOSE_TOO_BIG)))
                        state["closed"] = True
                        return {"type": "websocket.disconnect", "code": CLOSE_TOO_BIG}
                    if whole is not None:
                        if isinstance(whole, str):
                            return {"type": "websocket.receive", "text": whole}
                        return {"type": "websocket.receive", "bytes": whole}
                elif isinstance(event, Ping):
                    with contextlib.suppress(ClientDisconnected):
                        await write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if ws.state is not ConnectionState.CLOSED:
                        with contextlib.suppress(ClientDisconnected, LocalProtocolError):
                            await write(ws.send(event.response()))
                    state["closed"] = True
                    return {"type": "websocket.disconnect", "code": event.code}
            if state["closed"]:
                return {"type": "websocket.disconnect", "code": CLOSE_ABNORMAL}
            if trailing:
                data, trailing = trailing, b""
            else:
                try:
                    data = await stream.read(limits.read_size)
                except (P2PError, OSError):
                    data = b""
                if not data:
                    state["closed"] = True
                    return {"type": "websocket.disconnect", "code": CLOSE_ABNORMAL}
            try:
                ws.receive_data(data)
            except RemoteProtocolError as exc:
                log.info("bad WebSocket data from %s: %s", peer_of(stream), exc)
                state["closed"] = True
                return {"type": "websocket.disconnect", "code": CLOSE_PROTOCOL_ERROR}

    async def send(message: AsgiMessage) -> None:
        kind = message["type"]
        if state["closed"]:
            raise ClientDisconnected("the WebSocket is closed")
        if kind == "websocket.accept":
            if state["accepted"]:
                raise InvalidConfiguration("websocket.accept sent twice")
            state["accepted"] = True
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            await write(
                ws.send(
                    AcceptConnection(subprotocol=message.get("subprotocol"), extra_headers=headers)
                )
            )
        elif kind == "websocket.send":
            if not state["accepted"]:
                raise InvalidConfiguration("websocket.send before websocket.accept")
            text = message.get("text")
            data = text if text is not None else bytes(message.get("bytes") or b"")
            await write(ws.send(Message(data=data)))
        elif kind == "websocket.close":
            if not state["accepted"]:
                await write(ws.send(RejectConnection(status_code=403)))
            else:
                code = int(message.get("code", 1000))
                await write(ws.send(CloseConnection(code=code, reason=message.get("reason"))))
            state["closed"] = True

    scope = service.scope("websocket", stream, head)
    scope["subprotocols"] = pending[0].subprotocols
    try:
        await service.app(scope, receive, send)
    except ClientDisconnected:
        await stream.reset()
        return
    except Exception:
        log.exception("the ASGI application failed on WebSocket %s", head.target)
        await stream.reset()
        return
    if not state["accepted"] and not state["closed"]:
        with contextlib.suppress(ClientDisconnected):
            await write(ws.send(RejectConnection(status_code=500)))
    with contextlib.suppress(P2PError, OSError):
        await stream.close()
