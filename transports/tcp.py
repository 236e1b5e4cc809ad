"""TCP transport over asyncio: ``/ip4|ip6|dns4|dns6|dns/…/tcp/N``.

Connections are asyncio protocols that buffer received chunks without
copying them and pause the socket when the reader falls behind, so a reader
that stops reading stops the sender (TCP backpressure end to end).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from multiaddr import Multiaddr

from switchy.stack.addresses import split_peer
from switchy.stack.buffer import ChunkBuffer
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    ConnectionClosed,
    ConnectionFailed,
    P2PTimeout,
    StreamReset,
    UnsupportedAddress,
    fresh,
)
from switchy.stack.stream import Connection
from switchy.stack.transport import ConnectionHandler, Listener, Transport

if TYPE_CHECKING:
    from switchy.stack.identity import KeyPair, PeerId
    from switchy.stack.mux import MuxedConnection

__all__ = ["TcpConnection", "TcpListener", "TcpTransport"]

log = logging.getLogger(__name__)

#: Received bytes buffered per connection before the socket is paused.
READ_HIGH_WATER: Final = 1024 * 1024
#: Buffered bytes below which a paused socket resumes reading.
READ_LOW_WATER: Final = 256 * 1024
#: Bytes queued for sending before ``write`` waits for the socket to drain.
WRITE_HIGH_WATER: Final = 1024 * 1024

_HOST_PROTOCOLS = {
    "ip4": socket.AF_INET,
    "ip6": socket.AF_INET6,
    "dns4": socket.AF_INET,
    "dns6": socket.AF_INET6,
    "dns": socket.AF_UNSPEC,
}


def _host_port(addr: Multiaddr) -> tuple[str, int, int] | None:
    """``(host, port, family)`` of a TCP multiaddr (trailing /p2p allowed), else None."""
    return _host_port_cached(addr.to_bytes())


@functools.lru_cache(maxsize=4096)
def _host_port_cached(packed: bytes) -> tuple[str, int, int] | None:
    base, _ = split_peer(Multiaddr(packed))
    items = list(base.items())
    if len(items) != 2:
        return None
    (hproto, host), (tproto, port) = items
    family = _HOST_PROTOCOLS.get(hproto.name)
    if family is None or tproto.name != "tcp":
        return None
    return str(host), int(port), family


#: Multiaddr codes (one-byte varints) of ip4, ip6 and tcp, for the packed form.
_IP4_CODE: Final = b"\x04"
_IP6_CODE: Final = b"\x29"
_TCP_CODE: Final = b"\x06"


def _sockaddr_to_multiaddr(sockaddr: tuple[object, ...]) -> Multiaddr:
    host = str(sockaddr[0])
    port = int(str(sockaddr[1]))
    # Built packed: parsing the text form costs more than the rest of an accept.
    try:
        if ":" in host:
            packed = _IP6_CODE + socket.inet_pton(socket.AF_INET6, host)
        else:
            packed = _IP4_CODE + socket.inet_pton(socket.AF_INET, host)
    except OSError:  # e.g. a zoned IPv6 address: the text form knows those
        proto = "ip6" if ":" in host else "ip4"
        return Multiaddr(f"/{proto}/{host}/tcp/{port}")
    return Multiaddr(packed + _TCP_CODE + port.to_bytes(2, "big"))


class TcpConnection(Connection, asyncio.Protocol):
    """A TCP connection implementing the :class:`~switchy.stack.stream.Connection` contract."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = ChunkBuffer()
        self._eof = False
        self._error: ConnectionClosed | None = None
        self._write_closed = False
        self._read_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._lost = False
        self._sockname: tuple[object, ...] = ("0.0.0.0", 0)
        self._peername: tuple[object, ...] = ("0.0.0.0", 0)
        self._local_addr: Multiaddr | None = None
        self._remote_addr: Multiaddr | None = None
        self.connected: asyncio.Future[None] = self._loop.create_future()

    # --- asyncio.Protocol callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not always an asyncio.Transport subclass: uvloop's are
        # its own classes with the same methods.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sockname = transport.get_extra_info("sockname")
        self._peername = transport.get_extra_info("peername")
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self.connected.done():
            self.connected.set_result(None)
        if self._write_closed:  # reset or closed before asyncio reported the socket
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buf.append(data)
        if self._buf.size > READ_HIGH_WATER and not self._read_paused and self._transport:
            self._read_paused = True
            self._transport.pause_reading()
        w = self._read_waiter
        if w is not None:
            self._read_waiter = None
            if not w.done():
                w.set_result(None)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep our write side open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self._write_closed = True
        if exc is not None and self._error is None:
            self._error = StreamReset(f"TCP connection lost: {exc}")
        self._wake_reader()
        d = self._drain_waiter
        if d is not None and not d.done():
            d.set_result(None)
        self._drain_waiter = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        d = self._drain_waiter
        if d is not None:
            self._drain_waiter = None
            if not d.done():
                d.set_result(None)

    # Multiaddrs are built on first use.
    @property
    def local_addr(self) -> Multiaddr:
        if self._local_addr is None:
            self._local_addr = _sockaddr_to_multiaddr(self._sockname)
        return self._local_addr

    @property
    def remote_addr(self) -> Multiaddr:
        if self._remote_addr is None:
            self._remote_addr = _sockaddr_to_multiaddr(self._peername)
        return self._remote_addr

    def _wake_reader(self) -> None:
        w = self._read_waiter
        if w is not None:
            self._read_waiter = None
            if not w.done():
                w.set_result(None)

    # --- Stream API ------------------------------------------------------------------------

    async def read(self, max_bytes: int = -1) -> bytes:
        buf = self._buf
        while not buf:
            if self._error is not None:
                raise fresh(self._error)
            if self._eof:
                return b""
            waiter = self._loop.create_future()
            self._read_waiter = waiter
            await waiter
        data = buf.take(max_bytes)
        if self._read_paused and buf.size < READ_LOW_WATER and self._transport:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        if self._write_closed or self._transport is None or self._write_paused or self._lost:
            return False
        self._transport.write(data)
        return True

    def _unread(self, data: bytes) -> bool:
        self._buf.push_front(data)
        return True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_closed or self._transport is None:
            raise fresh(self._error) or ConnectionClosed("write on a closed TCP connection")
        self._transport.write(data)
        if self._write_paused:
            while self._write_paused and not self._lost:
                waiter = self._loop.create_future()
                self._drain_waiter = waiter
                await waiter
            if self._lost:
                raise fresh(self._error) or ConnectionClosed("TCP connection closed while writing")

    async def close_write(self) -> None:
        if self._write_closed or self._transport is None:
            return
        self._write_closed = True
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def reset(self) -> None:
        self._error = self._error or StreamReset("TCP connection was reset locally")
        self._write_closed = True
        self._buf.clear()
        t = self._transport
        if t is not None and not self._lost:
            sock = t.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        self._wake_reader()

    async def close(self) -> None:
        self._write_closed = True
        self._eof = True
        self._buf.clear()
        self._wake_reader()
        t = self._transport
        if t is not None and not t.is_closing():
            t.close()  # flushes pending writes, then closes

    def __repr__(self) -> str:
        return f"<TcpConnection {self._sockname} -> {self._peername}>"


class TcpListener(Listener):
    """A listening TCP socket; each accepted connection goes to the handler in its own task."""

    def __init__(self, server: asyncio.Server, handler: ConnectionHandler) -> None:
        self._server = server
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._addrs = [_sockaddr_to_multiaddr(s.getsockname()) for s in server.sockets]
        #: Called once when the listener closes.
        self.on_close: Callable[[], None] | None = None

    @property
    def addrs(self) -> list[Multiaddr]:
        return list(self._addrs)

    def _accepted(self, conn: TcpConnection) -> None:
        task = asyncio.get_running_loop().create_task(self._run(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, conn: TcpConnection) -> None:
        try:
            # The task may start before asyncio reported the socket (connection_made):
            # wait, so the handler sees the real addresses.
            await conn.connected
            await self._handler(conn)
        except Exception:  # the handler owns errors; never let one kill the listener
            log.exception("TCP connection handler failed for %r", conn)
            await conn.reset()

    async def close(self) -> None:
        if self.on_close is not None:
            self.on_close()
            self.on_close = None
        self._server.close()
        await self._server.wait_closed()


def _reuse_socket(family: int, bind: tuple[str, int]) -> socket.socket:
    """A non-blocking TCP socket bound to ``bind`` with SO_REUSEADDR and SO_REUSEPORT."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind(bind)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class TcpTransport(Transport):
    """Plain TCP.  Dials with ``config.dial_timeout``; IPv4, IPv6 and DNS names.

    With ``reuse_port`` (the default) listeners set SO_REUSEADDR and SO_REUSEPORT,
    and a dial to a non-loopback IP leaves from the port this transport listens on
    (of the same address family), so a NAT maps it like the listening port and
    peers observe the address others can reach us on (the start of hole punching).
    When that is not possible (the same remote endpoint is already connected from
    that port, or the listening IP cannot reach it) the dial falls back to an
    ephemeral port.  A transport without listeners (AutoNAT's dial-backs) always
    dials from an ephemeral port.
    """

    name = "tcp"

    def __init__(self, config: NetworkConfig | None = None, *, reuse_port: bool = True) -> None:
        self.config = config or NetworkConfig()
        #: Whether dials leave from the listening port.
        self.reuse_port = reuse_port
        # family -> (host, port) of our listening sockets, first one first
        self._listening: dict[int, list[tuple[str, int]]] = {}

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:
        self.config = config

    def can_dial(self, addr: Multiaddr) -> bool:
        return _host_port(addr) is not None

    def can_listen(self, addr: Multiaddr) -> bool:
        hp = _host_port(addr)
        return hp is not None and hp[2] != socket.AF_UNSPEC

    async def dial(
        self, addr: Multiaddr, *, remote_peer: PeerId | None = None
    ) -> Connection | MuxedConnection:
        hp = _host_port(addr)
        if hp is None:
            raise UnsupportedAddress(f"TCP cannot dial {addr}")
        host, port, family = hp
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.dial_timeout):
                proto = await self._dial_from_listen_port(host, port)
                if proto is None:
                    _, proto = await loop.create_connection(
                        TcpConnection, host, port, family=family
                    )
        except TimeoutError:
            raise P2PTimeout(
                f"TCP dial to {addr} timed out after {self.config.dial_timeout}s"
            ) from None
        except OSError as exc:
            raise ConnectionFailed(f"TCP dial to {addr} failed: {exc.strerror or exc}") from None
        return proto

    def _reuse_bind(self, host: str) -> tuple[int, tuple[str, int]] | None:
        """The family and listening (host, port) a dial to ``host`` should leave from."""
        ip = _is_ip_literal(host)
        if not self.reuse_port or ip is None or ip.is_loopback:
            return None
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        for lhost, lport in self._listening.get(family, ()):
            lip = _is_ip_literal(lhost)
            if lip is None or lip.is_loopback:
                continue
            return family, ("" if lip.is_unspecified else lhost, lport)
        return None

    async def _dial_from_listen_port(self, host: str, port: int) -> TcpConnection | None:
        """Connect from our listening port; ``None`` when that cannot be done here."""
        chosen = self._reuse_bind(host)
        if chosen is None:
            return None
        family, bind = chosen
        loop = asyncio.get_running_loop()
        try:
            sock = _reuse_socket(family, bind)
        except OSError as exc:
            log.debug("cannot dial %s:%s from port %s: %s", host, port, bind[1], exc)
            return None
        try:
            await loop.sock_connect(sock, (host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EINVAL):
                log.debug("dial to %s:%s from port %s: %s", host, port, bind[1], exc)
                return None  # this 4-tuple is taken (or in TIME_WAIT): use an ephemeral port
            raise
        except BaseException:
            sock.close()
            raise
        if sock.getsockname() == sock.getpeername():
            # A dial to our own port from our own port connects the socket to itself
            # (TCP simultaneous open with itself); dial from an ephemeral port instead.
            sock.close()
            return None
        _, proto = await loop.create_connection(TcpConnection, sock=sock)
        return proto

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        hp = _host_port(addr)
        if hp is None or hp[2] == socket.AF_UNSPEC:
            raise UnsupportedAddress(f"TCP cannot listen on {addr}")
        host, port, family = hp
        loop = asyncio.get_running_loop()
        listener: TcpListener | None = None

        def factory() -> TcpConnection:
            conn = TcpConnection()
            assert listener is not None
            listener._accepted(conn)
            return conn

        try:
            server = await loop.create_server(
                factory,
                host,
                port,
                family=family,
                reuse_address=True,
                reuse_port=self.reuse_port and hasattr(socket, "SO_REUSEPORT"),
            )
        except OSError as exc:
            raise ConnectionFailed(f"cannot listen on {addr}: {exc.strerror or exc}") from None
        listener = TcpListener(server, handler)
        bound: list[tuple[str, int, int]] = [
            (str(s.getsockname()[0]), int(s.getsockname()[1]), int(s.family))
            for s in server.sockets
        ]
        for bhost, bport, bfamily in bound:
            self._listening.setdefault(bfamily, []).append((str(bhost), int(bport)))
        listener.on_close = lambda: self._forget_listener(bound)
        return listener

    def _forget_listener(self, bound: list[tuple[str, int, int]]) -> None:
        for bhost, bport, bfamily in bound:
            entries = self._listening.get(bfamily, [])
            if (str(bhost), int(bport)) in entries:
                entries.remove((str(bhost), int(bport)))
