"""The simulator as a stack transport: :class:`SimTransport`.

Address form
------------
A simulated endpoint is ``/memory/<N>`` with ``N = host_number * 100000 +
port`` (for example host 7, port 4001 → ``/memory/700004001``), optionally
followed by ``/p2p/<peer id>``.  ``memory`` is the multiaddr protocol
registered for in-process transports (code 0x309): no IP, DNS, TCP or UDP
transport can dial it, so a simulated address can never be mistaken for a
real one and no real packet can leave the process.  Host number 0 means
"this transport's own host": ``/memory/0`` listens on a free port,
``/memory/4001`` on port 4001.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Final

from multiaddr import Multiaddr

from switchy.stack.addresses import split_peer
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import NoRoute, P2PTimeout, UnsupportedAddress
from switchy.stack.transport import ConnectionHandler, Listener, Transport
from switchy.transports.sim.network import (
    DEFAULT_STREAM_WINDOW,
    MAX_PORT,
    SIM_PORT_SPAN,
    Host,
    Network,
    sim_multiaddr,
)

if TYPE_CHECKING:
    from switchy.stack.identity import KeyPair, PeerId
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.stream import Connection

__all__ = ["SIM_PROTOCOL", "SimTransport", "parse_sim_multiaddr", "sim_multiaddr"]

#: The multiaddr protocol carrying simulated addresses.
SIM_PROTOCOL: Final = "memory"


#: Distinct addresses whose parse is remembered (every dial, accept and connection
#: bookkeeping step asks whether an address is a sim one; parsing a multiaddr is slow).
_PARSE_CACHE_SIZE: Final = 8192


def parse_sim_multiaddr(addr: Multiaddr) -> tuple[int, int] | None:
    """``(host_number, port)`` of a sim multiaddr (trailing ``/p2p`` allowed), else None."""
    return _parse_packed(addr.to_bytes())


@functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)
def _parse_packed(packed: bytes) -> tuple[int, int] | None:
    try:
        base, _ = split_peer(Multiaddr(packed))
    except Exception:
        return None
    items = list(base.items())
    if len(items) != 1:
        return None
    proto, value = items[0]
    if proto.name != SIM_PROTOCOL:
        return None
    host, port = divmod(int(value), SIM_PORT_SPAN)
    if port > MAX_PORT:
        return None
    return host, port


class SimTransport(Transport):
    """Stream connections of one simulated host, for a :class:`~switchy.stack.node.Node`.

    ``dial`` raises :class:`~switchy.stack.errors.NoRoute` when there is no route (or
    no such host), :class:`~switchy.stack.errors.ConnectionFailed` when nothing
    listens on the port, and :class:`~switchy.stack.errors.P2PTimeout` when the
    request does not get through within the dial timeout (the smaller of the
    node's ``dial_timeout`` and the simulator's connection timeout).

    ``reuse_port=True`` makes every dial leave from the port this transport
    listens on (its first listener's), as TCP with ``SO_REUSEPORT`` does, so
    that a NAT maps the dial like the listening port and two such dials that
    cross make one connection (simultaneous open; see
    :meth:`~switchy.transports.sim.network.Network.connect`).  ``dial(...,
    local_port=P)`` picks the port for one dial.
    """

    name = "sim"

    def __init__(
        self,
        network: Network,
        host: str | Host,
        *,
        config: NetworkConfig | None = None,
        window: int = DEFAULT_STREAM_WINDOW,
        reuse_port: bool = False,
    ) -> None:
        self.network = network
        self.host = network.host(host)
        self.config = config or NetworkConfig()
        self.window = window
        #: Whether dials leave from the listening port.
        self.reuse_port = reuse_port
        self._listen_ports: list[int] = []

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:
        """Adopt the node's config (for the dial timeout)."""
        self.config = config

    def address(self, port: int) -> Multiaddr:
        """The sim multiaddr of ``port`` on this transport's host."""
        return self.host.address(port)

    def observer_group(self, addr: Multiaddr) -> str | None:
        """The simulated host of ``addr`` (every port of a host is one observer)."""
        parsed = parse_sim_multiaddr(addr)
        host = None if parsed is None else self.network.host_by_number(parsed[0])
        return None if host is None else f"host:{host.name}"

    def can_dial(self, addr: Multiaddr) -> bool:
        """Whether ``addr`` is a sim address (other transports' addresses are refused)."""
        return parse_sim_multiaddr(addr) is not None

    def can_listen(self, addr: Multiaddr) -> bool:
        """Whether ``addr`` is a sim address of this transport's host (or host number 0)."""
        parsed = parse_sim_multiaddr(addr)
        return parsed is not None and parsed[0] in (0, self.host.number)

    def _target(self, addr: Multiaddr) -> tuple[Host, int]:
        parsed = parse_sim_multiaddr(addr)
        if parsed is None:
            raise UnsupportedAddress(f"the sim transport cannot dial {addr}")
        number, port = parsed
        if number == 0:
            return self.host, port
        host = self.network.host_by_number(number)
        if host is None:
            raise NoRoute(f"no simulated host number {number} (address {addr})")
        return host, port

    async def dial(
        self,
        addr: Multiaddr,
        *,
        remote_peer: PeerId | None = None,
        local_port: int | None = None,
    ) -> Connection | MuxedConnection:
        """Open a simulated stream connection to ``addr`` (from ``local_port`` if given,
        else from the listening port when ``reuse_port``, else from a fresh port)."""
        dst, port = self._target(addr)
        if port == 0:
            raise UnsupportedAddress(f"cannot dial port 0 ({addr})")
        if local_port is None and self.reuse_port:
            live = [p for p in self._listen_ports if p in self.host._listeners]
            local_port = live[0] if live else None
        timeout = self.config.dial_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self.network.connect(
                    self.host,
                    dst,
                    port,
                    timeout=timeout,
                    window=self.window,
                    local_port=local_port,
                )
        except TimeoutError as exc:
            if isinstance(exc, P2PTimeout):
                raise
            raise P2PTimeout(
                f"sim dial from {self.host.name} to {addr} timed out after {timeout}s"
            ) from None

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        """Listen on a port of this transport's host."""
        parsed = parse_sim_multiaddr(addr)
        if parsed is None or parsed[0] not in (0, self.host.number):
            raise UnsupportedAddress(
                f"the sim transport of host {self.host.name} cannot listen on {addr} "
                f"(use {self.address(0)} or {self.host.address(4001)})"
            )
        listener = self.network.listen(self.host, parsed[1], handler, window=self.window)
        self._listen_ports.append(listener.port)
        return listener

    def __repr__(self) -> str:
        return f"<SimTransport {self.host.name}>"
