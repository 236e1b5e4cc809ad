"""Raw TCP over switchy: ``expose tcp`` and ``forward`` (one stream per TCP connection).

:class:`TcpExposeService` serves a local TCP service (ssh, a database) on
:data:`TCP_PROTOCOL`: each inbound stream becomes one TCP connection to it, bytes piped
both ways with half-close and reset passed on.  :class:`TcpForwarder` listens on a local
port and opens one stream per accepted connection to a peer that exposes a service.
Like ``ipfs p2p`` and dumbpipe; ``allow`` restricts who may connect.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Final

from switchy.protocols.http.io import pipe
from switchy.protocols.http.proxy import LocalTcpPort, tcp_multiaddr
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import P2PError
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, ProtocolService, Target
from switchy.stack.stream import Connection, MuxedStream
from switchy.transports.tcp import TcpTransport

__all__ = ["TCP_PROTOCOL", "TcpExposeService", "TcpForwarder"]

log = logging.getLogger(__name__)

#: The protocol id of a TCP tunnel stream (one TCP connection's bytes, both ways).
TCP_PROTOCOL: Final = "/switchy/tcp/1.0.0"


class TcpExposeService(ProtocolService):
    """Serves the local TCP service at ``host:port`` to peers (``allow``: who may)."""

    service_name = "tcp"
    service_protocols = (TCP_PROTOCOL,)

    def __init__(self, host: str, port: int, *, allow: Iterable[PeerId] | None = None) -> None:
        self.host = host
        self.port = port
        self.allow = None if allow is None else frozenset(allow)
        self._tcp = TcpTransport(NetworkConfig())

    def attach(self, node: Node) -> None:
        """Serve :data:`TCP_PROTOCOL` on ``node``."""
        node.handle(TCP_PROTOCOL, self.handle_stream)

    async def handle_stream(self, stream: MuxedStream) -> None:
        """Pipe ``stream`` to a new TCP connection to the exposed service."""
        peer = stream.remote_peer
        if self.allow is not None and peer not in self.allow:
            log.info("refused TCP tunnel from %s: not on the allowlist", peer)
            await stream.reset()
            return
        try:
            conn = await self._tcp.dial(tcp_multiaddr(self.host, self.port))
        except P2PError as exc:
            log.warning("the exposed TCP service %s:%d: %s", self.host, self.port, exc)
            await stream.reset()
            return
        assert isinstance(conn, Connection)
        await pipe(stream, conn)


class TcpForwarder(LocalTcpPort):
    """A local TCP port whose connections lead to ``target``'s exposed TCP service."""

    def __init__(self, node: Node, target: Target) -> None:
        self.node = node
        self.target = target
        super().__init__()

    async def _serve(self, conn: object) -> None:
        assert isinstance(conn, Connection)
        try:
            stream = await self.node.open_stream(self.target, TCP_PROTOCOL)
        except P2PError as exc:
            log.warning("forward: cannot reach %s: %s", self.target, exc)
            with contextlib.suppress(P2PError, OSError):
                await conn.reset()
            return
        await pipe(conn, stream)
