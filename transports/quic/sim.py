"""QUIC over the simulator: the simulator's datagram service as a :class:`DatagramNetwork`.

Addresses are ``/memory/<host*100000+port>/quic-v1`` (host number 0 means
"this host"), so a simulated QUIC address can never be mistaken for a real
one.  Use :func:`sim_quic_transport` to get a QUIC transport for one
simulated host.
"""

from __future__ import annotations

import asyncio
from typing import Any

from multiaddr import Multiaddr

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import ConnectionFailed, InvalidConfiguration, NoRoute
from switchy.transports.quic.io import QUIC_V1_PROTOCOL, DatagramNetwork, SockAddr, _quic_parts
from switchy.transports.quic.transport import QuicTransport
from switchy.transports.sim.network import SIM_PORT_SPAN, Host, Network, sim_multiaddr

__all__ = ["SimDatagramNetwork", "sim_quic_transport"]


class SimDatagramNetwork(DatagramNetwork):
    """The datagram sockets of one simulated host."""

    def __init__(self, network: Network, host: str | Host) -> None:
        self.network = network
        self.host = network.host(host)

    def parse(self, addr: Multiaddr) -> SockAddr | None:
        parts = _quic_parts(addr)
        if parts is None or len(parts) != 1 or parts[0][0] != "memory" or parts[0][1] is None:
            return None
        number, port = divmod(int(parts[0][1]), SIM_PORT_SPAN)
        if number == 0:
            return (self.host.name, port)
        host = self.network.host_by_number(number)
        if host is None:
            return None
        return (host.name, port)

    def to_multiaddr(self, sockaddr: SockAddr) -> Multiaddr:
        host = self.network.host(str(sockaddr[0]))
        return sim_multiaddr(host.number, int(sockaddr[1])).encapsulate(
            Multiaddr(f"/{QUIC_V1_PROTOCOL}")
        )

    async def bind(
        self, protocol: asyncio.DatagramProtocol, local: SockAddr
    ) -> asyncio.DatagramTransport:
        if local[0] != self.host.name:
            raise ConnectionFailed(
                f"host {self.host.name} cannot bind an address of host {local[0]}"
            )
        try:
            transport, _ = self.network.open_datagram(protocol, self.host, int(local[1]))
        except (InvalidConfiguration, NoRoute) as exc:
            raise ConnectionFailed(str(exc)) from None
        return transport

    def dial_address(self, remote: SockAddr) -> SockAddr:
        return (self.host.name, 0)

    def can_reach(self, local: SockAddr, remote: SockAddr) -> bool:
        return True

    def normalize(self, addr: Any) -> SockAddr:
        return (addr[0], addr[1])

    def __repr__(self) -> str:
        return f"<SimDatagramNetwork {self.host.name}>"


def sim_quic_transport(
    network: Network, host: str | Host, config: NetworkConfig | None = None, **kwargs: Any
) -> QuicTransport:
    """A QUIC transport whose sockets live on simulated ``host``.

    Certificates use Ed25519 keys here, whose fixed-size signatures keep
    every handshake the same size, hence a run repeatable packet for packet.
    """
    kwargs.setdefault("cert_key_type", "ed25519")
    return QuicTransport(config, network=SimDatagramNetwork(network, host), **kwargs)
