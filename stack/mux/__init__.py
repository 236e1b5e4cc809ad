"""Stream multiplexer interface; yamux lives in :mod:`stack.mux.yamux`."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from stack.config import NetworkConfig
    from stack.identity import PeerId
    from stack.metrics import ConnectionStats
    from stack.stream import Connection, MuxedStream

__all__ = ["MuxedConnection", "StreamMuxer"]


class MuxedConnection(abc.ABC):
    """A secured connection carrying many independent streams."""

    local_peer: PeerId
    remote_peer: PeerId
    local_addr: Multiaddr
    remote_addr: Multiaddr
    #: True when initiated by us.
    is_initiator: bool
    #: True for connections whose use is restricted (e.g. relayed).
    is_limited: bool = False
    #: Protocol ids of the security layer and muxer in use (for info/identify).
    security_protocol: str = ""
    muxer_protocol: str = ""
    stats: ConnectionStats

    @abc.abstractmethod
    async def open_stream(self) -> MuxedStream:
        """Open a new outbound stream (not yet negotiated)."""

    @abc.abstractmethod
    async def accept_stream(self) -> MuxedStream:
        """Wait for the next inbound stream; raise ConnectionClosed once the connection ends."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close gracefully: no new streams; existing data is flushed; then release."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Close at once, resetting every stream."""

    @property
    @abc.abstractmethod
    def is_closed(self) -> bool:
        """Whether the connection is closed (or closing)."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed."""


class StreamMuxer(abc.ABC):
    """Factory of multiplexed connections over a secured connection."""

    #: The protocol id negotiated with multistream-select (e.g. ``/yamux/1.0.0``).
    protocol_id: str

    @abc.abstractmethod
    def create(
        self, conn: Connection, *, is_initiator: bool, config: NetworkConfig
    ) -> MuxedConnection:
        """Start multiplexing over ``conn`` (which has ``remote_peer`` set).

        Must be called from a running event loop; the connection begins
        reading at once.
        """
