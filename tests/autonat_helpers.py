"""Shared pieces of the AutoNAT tests: a transport that records dials, raw request streams."""

from __future__ import annotations

from typing import TYPE_CHECKING

from multiaddr import Multiaddr

from switchy.protocols.autonat.pb import (
    DialRequest,
    V2Message,
    decode_frame,
    decode_v2,
    encode_frame,
    encode_v2,
)
from switchy.stack.errors import ConnectionClosed
from switchy.stack.transport import ConnectionHandler, Listener, Transport

if TYPE_CHECKING:
    from switchy.stack.config import NetworkConfig
    from switchy.stack.identity import KeyPair, PeerId
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.stream import Connection, MuxedStream


class RecordingTransport(Transport):
    """Wraps a transport and records every address it is asked to dial."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.name = inner.name
        self.limited = inner.limited
        self.dials: list[Multiaddr] = []

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:
        self.inner.bind(key, config)

    def can_dial(self, addr: Multiaddr) -> bool:
        return self.inner.can_dial(addr)

    def can_listen(self, addr: Multiaddr) -> bool:
        return self.inner.can_listen(addr)

    async def dial(
        self, addr: Multiaddr, *, remote_peer: PeerId | None = None
    ) -> Connection | MuxedConnection:
        self.dials.append(addr)
        return await self.inner.dial(addr, remote_peer=remote_peer)

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        return await self.inner.listen(addr, handler)

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()


async def send_v2(stream: MuxedStream, msg: V2Message | bytes) -> None:
    """Write one framed v2 message (or a raw, already encoded body)."""
    body = msg if isinstance(msg, bytes) else encode_v2(msg)
    await stream.write(encode_frame(body))


async def recv_v2(stream: MuxedStream) -> V2Message:
    """Read one framed v2 message."""
    buf = bytearray()
    while (frame := decode_frame(buf)) is None:
        chunk = await stream.read(1)
        if not chunk:
            raise ConnectionClosed("stream ended before a v2 message")
        buf += chunk
    return decode_v2(frame[0])


def request(*addrs: Multiaddr, nonce: int = 1) -> DialRequest:
    """A v2 request for ``addrs``."""
    return DialRequest.of(list(addrs), nonce)
