"""Where QUIC gets its datagram sockets: real UDP, or any other datagram service.

A :class:`DatagramNetwork` maps ``…/quic-v1`` multiaddrs to socket addresses
and binds sockets shaped like ``loop.create_datagram_endpoint`` (an
:class:`asyncio.DatagramTransport` feeding an :class:`asyncio.DatagramProtocol`).
:class:`UdpNetwork` is the real one; :mod:`transports.quic.sim` plugs in the
simulator's datagram service, so the same QUIC code runs in virtual time.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ipaddress
import socket
from typing import Any, Final

from multiaddr import Multiaddr

from stack.addresses import split_peer
from stack.errors import ConnectionFailed

__all__ = ["QUIC_V1_PROTOCOL", "SOCKET_BUFFER_SIZE", "DatagramNetwork", "SockAddr", "UdpNetwork"]

#: The multiaddr protocol of QUIC version 1.
QUIC_V1_PROTOCOL: Final = "quic-v1"
#: Kernel send/receive buffer asked for on UDP sockets (bursts of a fast sender fit).
SOCKET_BUFFER_SIZE: Final = 4 * 1024 * 1024

#: A socket address: ``(host, port)``.
SockAddr = tuple[Any, ...]


class DatagramNetwork(abc.ABC):
    """A datagram service QUIC can run on."""

    @abc.abstractmethod
    def parse(self, addr: Multiaddr) -> SockAddr | None:
        """The socket address of a QUIC multiaddr (a trailing ``/p2p`` allowed), else None."""

    @abc.abstractmethod
    def to_multiaddr(self, sockaddr: SockAddr) -> Multiaddr:
        """The ``…/quic-v1`` multiaddr of a socket address."""

    @abc.abstractmethod
    async def bind(
        self, protocol: asyncio.DatagramProtocol, local: SockAddr
    ) -> asyncio.DatagramTransport:
        """Open a socket bound to ``local`` delivering to ``protocol``; ConnectionFailed if not."""

    @abc.abstractmethod
    def dial_address(self, remote: SockAddr) -> SockAddr:
        """The local address for a dial-only socket able to reach ``remote`` (port 0)."""

    @abc.abstractmethod
    def can_reach(self, local: SockAddr, remote: SockAddr) -> bool:
        """Whether a socket bound to ``local`` can send to ``remote``."""

    def normalize(self, addr: Any) -> SockAddr:
        """The canonical form of an address a socket reported."""
        return tuple(addr[:2])


def _quic_parts(addr: Multiaddr) -> list[tuple[str, str | None]] | None:
    try:
        base, _ = split_peer(addr)
    except Exception:
        return None
    items = [(p.name, v) for p, v in base.items()]
    if not items or items[-1][0] != QUIC_V1_PROTOCOL:
        return None
    return items[:-1]


class UdpNetwork(DatagramNetwork):
    """Real UDP sockets: ``/ip4/<a>/udp/<n>/quic-v1`` and ``/ip6/<a>/udp/<n>/quic-v1``."""

    def parse(self, addr: Multiaddr) -> SockAddr | None:
        parts = _quic_parts(addr)
        if parts is None or len(parts) != 2:
            return None
        (hproto, host), (uproto, port) = parts
        if hproto not in ("ip4", "ip6") or uproto != "udp" or host is None or port is None:
            return None
        return (str(host), int(port))

    def to_multiaddr(self, sockaddr: SockAddr) -> Multiaddr:
        host, port = str(sockaddr[0]), int(sockaddr[1])
        proto = "ip6" if ":" in host else "ip4"
        return Multiaddr(f"/{proto}/{host}/udp/{port}/{QUIC_V1_PROTOCOL}")

    async def bind(
        self, protocol: asyncio.DatagramProtocol, local: SockAddr
    ) -> asyncio.DatagramTransport:
        host, port = local[0], local[1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: protocol, local_addr=(host, port), family=family
            )
        except OSError as exc:
            raise ConnectionFailed(
                f"cannot bind UDP {host} port {port}: {exc.strerror or exc}"
            ) from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_SIZE)
        return transport

    def dial_address(self, remote: SockAddr) -> SockAddr:
        host = str(remote[0])
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if ":" in host:
            return ("::1" if loopback else "::", 0)
        # A loopback peer is reached from 127.0.0.1: our local address is then exact.
        return ("127.0.0.1" if loopback else "0.0.0.0", 0)

    def can_reach(self, local: SockAddr, remote: SockAddr) -> bool:
        lhost, rhost = str(local[0]), str(remote[0])
        if (":" in lhost) != (":" in rhost):
            return False
        try:
            lip, rip = ipaddress.ip_address(lhost), ipaddress.ip_address(rhost)
        except ValueError:
            return False
        return lip.is_unspecified or lip.is_loopback == rip.is_loopback

    def __repr__(self) -> str:
        return "<UdpNetwork>"
