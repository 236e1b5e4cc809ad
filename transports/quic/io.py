"""Where QUIC gets its datagram sockets: real UDP, or any other datagram service.

A :class:`DatagramNetwork` maps ``…/quic-v1`` multiaddrs to socket addresses
and binds sockets shaped like ``loop.create_datagram_endpoint`` (an
:class:`asyncio.DatagramTransport` feeding an :class:`asyncio.DatagramProtocol`).
:class:`UdpNetwork` is the real one; :mod:`switchy.transports.quic.sim` plugs in the
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

from switchy.stack.addresses import split_peer
from switchy.stack.errors import ConnectionFailed

__all__ = [
    "LOOPBACK_DATAGRAM_SIZE",
    "MAX_RECV_BATCH",
    "MAX_RECV_BATCH_BYTES",
    "QUIC_V1_PROTOCOL",
    "SOCKET_BUFFER_SIZE",
    "BatchProtocol",
    "DatagramNetwork",
    "SockAddr",
    "UdpNetwork",
    "UdpSocket",
]

#: The multiaddr protocol of QUIC version 1.
QUIC_V1_PROTOCOL: Final = "quic-v1"
#: Kernel send/receive buffer asked for on UDP sockets (bursts of a fast sender fit).
SOCKET_BUFFER_SIZE: Final = 4 * 1024 * 1024
#: Most datagrams read from a socket in one turn of the event loop.  Measured: 8-16 is
#: best; 32 and more hold acknowledgements back long enough to stall the sender.
MAX_RECV_BATCH: Final = 16
#: Most bytes read from a socket in one turn (the batch ends at the datagram that reaches
#: it): what 16 datagrams of 1200 bytes were, whatever the packet size.  A turn's
#: datagrams are handled before the node runs again, so this bounds how many new streams
#: a burst can queue before the application accepts any (loopback packets of 16,000
#: bytes could carry hundreds of stream openings each).
MAX_RECV_BATCH_BYTES: Final = 16_000
#: UDP payload sent on a loopback path once the handshake is done
#: (:meth:`UdpNetwork.path_datagram_size`) (if the peer's
#: ``max_udp_payload_size`` allows it): loopback's MTU is 64 KiB, and aioquic's cost is per
#: packet.  Measured (one process, 16 MiB on one stream, CPU time): 1200 bytes 18 MB/cpu-s,
#: 4000 bytes 54, 16000 bytes 140.
LOOPBACK_DATAGRAM_SIZE: Final = 16000
#: Receive buffer per datagram (the largest UDP payload fits).
MAX_UDP_DATAGRAM: Final = 65536

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

    def path_datagram_size(self, remote: SockAddr) -> int | None:
        """The UDP payload size the path to ``remote`` is known to carry, if larger than
        QUIC's 1200 bytes (default: none known)."""
        return None

    def normalize(self, addr: Any) -> SockAddr:
        """The canonical form of an address a socket reported."""
        return tuple(addr[:2])


class BatchProtocol(asyncio.DatagramProtocol):
    """A datagram protocol told when a burst of datagrams has been delivered."""

    def batch_received(self) -> None:
        """Every datagram ready on the socket was just delivered (default: nothing)."""


class UdpSocket(asyncio.DatagramTransport):
    """A non-blocking UDP socket that reads every datagram ready in one loop turn.

    asyncio's own datagram transport reads one datagram per turn of the event loop;
    QUIC gains a lot from handling a burst at once (one acknowledgement, one wake-up
    of the reader for many packets).  Sends go straight to the socket; a datagram the
    kernel will not take now is dropped, as a router would, and QUIC recovers.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.DatagramProtocol,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._sockname = sock.getsockname()
        self._closed = False
        #: Datagrams the kernel refused to queue (send buffer full).
        self.send_drops = 0
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        recvfrom = self._sock.recvfrom
        protocol = self._protocol
        budget = MAX_RECV_BATCH_BYTES
        for _ in range(MAX_RECV_BATCH):
            try:
                data, addr = recvfrom(MAX_UDP_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                protocol.error_received(exc)
                break
            protocol.datagram_received(data, addr)
            budget -= len(data)
            if self._closed or budget <= 0:
                break
        if isinstance(protocol, BatchProtocol):
            protocol.batch_received()

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr``; dropped if the socket is closed or full."""
        if self._closed:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.send_drops += 1
        except OSError as exc:
            self._protocol.error_received(exc)

    def close(self) -> None:
        """Close the socket; the protocol's ``connection_lost(None)`` follows."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        """Same as :meth:`close` (nothing is buffered)."""
        self.close()

    def is_closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname``, ``socket``, and ``batches`` (True: ``batch_received`` is called)."""
        if name == "batches":
            return True
        if name == "sockname":
            return self._sockname
        if name == "socket":
            return self._sock
        return default

    def get_write_buffer_size(self) -> int:
        """Always 0: datagrams are never buffered here."""
        return 0

    def __repr__(self) -> str:
        return f"<UdpSocket {self._sockname}>"


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
        host, port = str(local[0]), int(local[1])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_SIZE)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConnectionFailed(
                f"cannot bind UDP {host} port {port}: {exc.strerror or exc}"
            ) from None
        return UdpSocket(asyncio.get_running_loop(), sock, protocol)

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

    def path_datagram_size(self, remote: SockAddr) -> int | None:
        """:data:`LOOPBACK_DATAGRAM_SIZE` to a loopback
        address (its MTU is 64 KiB); other paths are not probed (no path-MTU discovery)."""
        try:
            loopback = ipaddress.ip_address(str(remote[0])).is_loopback
        except ValueError:
            return None
        return LOOPBACK_DATAGRAM_SIZE if loopback else None

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
