"""Unreliable datagrams over the simulated network (the UDP-like service).

:class:`SimDatagramTransport` is an :class:`asyncio.DatagramTransport`, and
the receiving side is any :class:`asyncio.DatagramProtocol`, so code written
for ``loop.create_datagram_endpoint`` (a QUIC transport, for instance) runs
over the simulator when it is handed
:meth:`Network.create_datagram_endpoint <switchy.transports.sim.network.Network.create_datagram_endpoint>`
instead.  Addresses are ``(host_name, port)`` tuples.

Loss, duplication, reordering, jitter and bandwidth queueing (with tail drop
once a link's queue is :data:`~switchy.transports.sim.network.MAX_QUEUE_DELAY`
seconds long) are all visible to the receiver.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from switchy.stack.errors import ConnectionClosed, InvalidConfiguration

if TYPE_CHECKING:
    from switchy.transports.sim.network import Host, Network

__all__ = ["SimDatagramTransport"]


class SimDatagramTransport(asyncio.DatagramTransport):
    """A datagram socket bound to ``(host, port)`` on the simulated network."""

    def __init__(
        self,
        network: Network,
        host: Host,
        port: int,
        protocol: asyncio.DatagramProtocol,
        remote_addr: tuple[str, int] | None,
    ) -> None:
        super().__init__()
        self._net = network
        self.host = host
        self.port = port
        self._protocol = protocol
        self._remote = remote_addr
        self._closed = False

    @property
    def local_address(self) -> tuple[str, int]:
        """``(host_name, port)`` this socket is bound to."""
        return (self.host.name, self.port)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (``(host_name, port)``; default: the connected peer).

        Raises :class:`~switchy.stack.errors.ConnectionClosed` on a closed socket,
        :class:`~switchy.stack.errors.NoRoute` for an unknown host and
        :class:`~switchy.stack.errors.MessageTooLarge` above the config's
        ``max_message_size``.  Network conditions never raise: lost
        datagrams are just lost.
        """
        if self._closed:
            raise ConnectionClosed(f"sendto on closed datagram socket {self.host.name}:{self.port}")
        if addr is None:
            addr = self._remote
            if addr is None:
                raise InvalidConfiguration("sendto needs an address on an unconnected socket")
        elif self._remote is not None and tuple(addr) != self._remote:
            raise InvalidConfiguration(
                f"socket is connected to {self._remote!r}, cannot send to {addr!r}"
            )
        dst, dport = self._net._check_addr(tuple(addr) if isinstance(addr, list) else addr)
        payload = data if type(data) is bytes else bytes(data)
        self._net._send_datagram(self.host, self.port, dst, dport, payload)

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._remote is not None and addr != self._remote:
            return  # a connected socket only hears its peer
        self._protocol.datagram_received(data, addr)

    def _host_crashed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._net.loop.call_soon(
            self._protocol.connection_lost,
            ConnectionClosed(f"host {self.host.name} crashed"),
        )

    def close(self) -> None:
        """Unbind the port; the protocol's ``connection_lost(None)`` follows."""
        if self._closed:
            return
        self._closed = True
        if self.host._datagrams.get(self.port) is self:
            del self.host._datagrams[self.port]
        self._net.loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        """Same as :meth:`close` (nothing is buffered)."""
        self.close()

    def is_closing(self) -> bool:
        """Whether :meth:`close` was called (or the host crashed)."""
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname`` and ``peername`` as ``(host_name, port)``; ``simulated`` is True."""
        if name == "sockname":
            return self.local_address
        if name == "peername":
            return self._remote if self._remote is not None else default
        if name == "simulated":
            return True
        return default

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol receiving this socket's datagrams."""
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand future datagrams to ``protocol``."""
        assert isinstance(protocol, asyncio.DatagramProtocol)
        self._protocol = protocol

    def get_write_buffer_size(self) -> int:
        """Always 0: datagrams are never buffered."""
        return 0

    def __repr__(self) -> str:
        return f"<SimDatagramTransport {self.host.name}:{self.port}>"
