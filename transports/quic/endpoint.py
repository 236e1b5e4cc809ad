"""One datagram socket carrying many QUIC connections, inbound and outbound.

A :class:`QuicEndpoint` owns one socket (real UDP or simulated).  Incoming
datagrams are routed by destination connection id to their connection; an
Initial packet with an unknown id starts a new inbound connection if the
endpoint listens.  Dials from the same endpoint share the socket, so the
port a node listens on is also the port it dials from (hole punching needs
that).  Garbage, packets for unknown connections and floods of new
handshakes are dropped and counted without disturbing anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any, Final

import attrs
from aioquic._buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from switchy.stack.errors import ConnectionClosed, P2PError, P2PTimeout
from switchy.transports.quic.connection import QuicConnection
from switchy.transports.quic.core import CONNECTION_ID_LENGTH, QUIC_V1, Libp2pQuicConnection
from switchy.transports.quic.io import BatchProtocol, DatagramNetwork, SockAddr

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from switchy.stack.identity import PeerId
    from switchy.stack.transport import ConnectionHandler
    from switchy.transports.quic.transport import QuicTransport

__all__ = [
    "MAX_PENDING_HANDSHAKES",
    "MAX_PENDING_HANDSHAKES_PER_SOURCE",
    "MIN_INITIAL_SIZE",
    "RETRY_THRESHOLD",
    "EndpointCounters",
    "QuicEndpoint",
]

log = logging.getLogger(__name__)

#: Inbound handshakes in progress per socket; further new connections are dropped.
MAX_PENDING_HANDSHAKES: Final = 256
#: Inbound handshakes in progress per source IP address.
MAX_PENDING_HANDSHAKES_PER_SOURCE: Final = 32
#: Past this many handshakes in progress, a new client must first prove its address with a
#: Retry token (RFC 9000 section 8.1.2): spoofed sources never see the token.
RETRY_THRESHOLD: Final = MAX_PENDING_HANDSHAKES // 4
#: A client's first datagram must be at least this large (RFC 9000 section 14.1).
MIN_INITIAL_SIZE: Final = SMALLEST_MAX_DATAGRAM_SIZE


@attrs.define
class EndpointCounters:
    """What an endpoint received that did not belong to any connection."""

    garbage: int = 0
    unknown_connection: int = 0
    refused_handshakes: int = 0
    version_negotiations: int = 0
    #: Initials that did not decrypt (dropped at once, holding no handshake slot).
    undecryptable_initials: int = 0
    #: Retry packets sent (address validation under load), and tokens that did not validate.
    retries: int = 0
    invalid_tokens: int = 0


class QuicEndpoint(BatchProtocol):
    """A socket and the QUIC connections on it (see the module docstring)."""

    def __init__(self, owner: QuicTransport, network: DatagramNetwork) -> None:
        self._owner = owner
        self.network = network
        self._socket: asyncio.DatagramTransport | None = None
        self._local: SockAddr = ("", 0)
        self._local_multiaddr: Multiaddr | None = None
        self._handler: ConnectionHandler | None = None
        self._by_cid: dict[bytes, QuicConnection] = {}
        self._cids: dict[QuicConnection, set[bytes]] = {}
        self._live: set[QuicConnection] = set()
        self._handshakes: dict[QuicConnection, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Sockets that read in bursts: connections send once per burst (batch_received).
        self._batches = False
        self._touched: set[QuicConnection] = set()
        self.counters = EndpointCounters()
        self._retry: QuicRetryTokenHandler | None = None
        self._pending_by_source: dict[object, int] = {}
        self._source_of: dict[QuicConnection, object] = {}

    @classmethod
    async def open(
        cls, owner: QuicTransport, network: DatagramNetwork, local: SockAddr
    ) -> QuicEndpoint:
        """Bind a socket on ``local`` (port 0: any free port)."""
        endpoint = cls(owner, network)
        sock = await network.bind(endpoint, local)
        endpoint._socket = sock
        endpoint._batches = bool(sock.get_extra_info("batches"))
        endpoint._local = network.normalize(sock.get_extra_info("sockname"))
        return endpoint

    # --- addresses ----------------------------------------------------------------------------

    @property
    def local_address(self) -> SockAddr:
        """The socket's bound address."""
        return self._local

    @property
    def local_multiaddr(self) -> Multiaddr:
        """The socket's ``…/quic-v1`` multiaddr."""
        if self._local_multiaddr is None:
            self._local_multiaddr = self.network.to_multiaddr(self._local)
        return self._local_multiaddr

    @property
    def is_listening(self) -> bool:
        """Whether new inbound connections are accepted."""
        return self._handler is not None and not self._closed

    @property
    def is_closed(self) -> bool:
        """Whether the socket is closed."""
        return self._closed

    @property
    def connections(self) -> list[QuicConnection]:
        """Open connections on this socket."""
        return [c for c in self._live if not c.is_closed]

    # --- asyncio.DatagramProtocol ----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """Route a datagram to its connection, start an inbound one, or drop it (counted)."""
        if len(data) > CONNECTION_ID_LENGTH and not data[0] & 0x80:
            # Short header (an established connection): the connection id follows byte 0.
            conn = self._by_cid.get(data[1 : 1 + CONNECTION_ID_LENGTH])
            if conn is not None:
                self._feed(conn, data, self.network.normalize(addr))
                return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except Exception:
            self.counters.garbage += 1
            return
        conn = self._by_cid.get(header.destination_cid)
        addr = self.network.normalize(addr)
        if conn is not None:
            self._feed(conn, data, addr)
            return
        if header.version is None or header.packet_type == QuicPacketType.VERSION_NEGOTIATION:
            self.counters.unknown_connection += 1
            return
        if header.version != QUIC_V1:
            if self.is_listening and len(data) >= MIN_INITIAL_SIZE:
                self.counters.version_negotiations += 1
                self.send(
                    encode_quic_version_negotiation(
                        source_cid=header.destination_cid,
                        destination_cid=header.source_cid,
                        supported_versions=[QUIC_V1],
                    ),
                    addr,
                )
            else:
                self.counters.unknown_connection += 1
            return
        if (
            not self.is_listening
            or header.packet_type != QuicPacketType.INITIAL
            or len(data) < MIN_INITIAL_SIZE
        ):
            self.counters.unknown_connection += 1
            return
        if (
            len(self._handshakes) >= MAX_PENDING_HANDSHAKES
            or self._pending_by_source.get(addr[0], 0) >= MAX_PENDING_HANDSHAKES_PER_SOURCE
        ):
            self.counters.refused_handshakes += 1
            return
        odcid, retry_scid = header.destination_cid, None
        if header.token or len(self._handshakes) >= RETRY_THRESHOLD:
            validated = self._validate_address(header, addr)
            if validated is None:
                return
            odcid, retry_scid = validated
        self._accept_initial(header.destination_cid, data, addr, odcid, retry_scid)

    def _validate_address(self, header: Any, addr: SockAddr) -> tuple[bytes, bytes | None] | None:
        """Under load: answer a token-less Initial with a Retry (``None``); with a token,
        ``(original destination cid, retry source cid)`` when it is valid, else ``None``."""
        now = asyncio.get_running_loop().time()
        if self._retry is None:
            self._retry = QuicRetryTokenHandler()
        if not header.token:
            source_cid = os.urandom(CONNECTION_ID_LENGTH)
            try:
                token = self._retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid,
                    now=now,
                )
            except (ValueError, TypeError, IndexError):  # not an IP address: no Retry
                return bytes(header.destination_cid), None
            self.counters.retries += 1
            self.send(
                encode_quic_retry(
                    version=header.version,
                    source_cid=source_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=token,
                ),
                addr,
            )
            return None
        try:
            odcid = self._retry.validate_token(
                address=addr, destination_cid=header.destination_cid, token=header.token, now=now
            )
        except (ValueError, TypeError, IndexError):
            self.counters.invalid_tokens += 1
            return None
        return odcid, header.destination_cid

    def _feed(self, conn: QuicConnection, data: bytes, addr: SockAddr) -> None:
        try:
            conn._datagram_received(data, addr, transmit=not self._batches)
        except Exception:  # a core bug must not take the socket down
            log.exception("QUIC: error handling a datagram for %r", conn)
            self._drop(conn)
            return
        if self._batches:
            self._touched.add(conn)

    def batch_received(self) -> None:
        """The socket delivered a burst: each connection that received some sends once."""
        touched = self._touched
        while touched:
            conn = touched.pop()
            try:
                conn._transmit()
            except Exception:
                log.exception("QUIC: error sending for %r", conn)
                self._drop(conn)

    def error_received(self, exc: Exception) -> None:
        """A socket error (ICMP): QUIC's timers deal with unreachable peers; only logged."""
        log.debug("QUIC socket %s: %s", self._local, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket went away (closed, or the simulated host crashed): end every connection."""
        if not self._closed:
            self._close_all(ConnectionClosed(f"QUIC socket {self._local} lost: {exc}"))

    # --- connections -----------------------------------------------------------------------------

    def send(self, data: bytes, addr: SockAddr) -> None:
        """Send one datagram; failures are logged (QUIC recovers or times out)."""
        sock = self._socket
        if sock is None or self._closed:
            return
        try:
            sock.sendto(data, addr)
        except (OSError, P2PError) as exc:
            log.debug("QUIC socket %s: sendto %s failed: %s", self._local, addr, exc)

    def _new_connection(
        self,
        quic: Libp2pQuicConnection,
        remote: SockAddr,
        *,
        is_initiator: bool,
        expected: PeerId | None,
    ) -> QuicConnection:
        owner = self._owner
        conn = QuicConnection(
            self,
            quic,
            remote=remote,
            is_initiator=is_initiator,
            local_peer=owner.identity.peer_id,
            expected_peer=expected,
            config=owner.config,
        )
        self._cids[conn] = set()
        self._live.add(conn)
        return conn

    def _accept_initial(
        self,
        dcid: bytes,
        data: bytes,
        addr: SockAddr,
        odcid: bytes | None = None,
        retry_scid: bytes | None = None,
    ) -> None:
        owner = self._owner
        quic = Libp2pQuicConnection(
            configuration=owner.quic_configuration(is_client=False),
            max_inbound_streams=owner.config.max_streams_per_connection,
            original_destination_connection_id=odcid or dcid,
            retry_source_connection_id=retry_scid,
        )
        loop = asyncio.get_running_loop()
        # The first datagram decides whether this is a handshake at all: one that does not
        # decrypt (garbage, spoofed) is dropped before it takes a slot or a timer.
        quic.receive_datagram(data, addr, loop.time())
        if not quic.decrypted_any:
            self.counters.undecryptable_initials += 1
            return
        conn = self._new_connection(quic, addr, is_initiator=False, expected=None)
        self._register(dcid, conn)
        self._register(quic.host_cid, conn)
        timeout = owner.config.handshake_timeout
        self._handshakes[conn] = loop.call_later(timeout, self._handshake_timed_out, conn)
        source = self._source_of[conn] = addr[0]
        self._pending_by_source[source] = self._pending_by_source.get(source, 0) + 1
        try:
            conn._process_events()
            conn._transmit()
        except Exception:  # a core bug must not take the socket down
            log.exception("QUIC: error handling a datagram for %r", conn)
            self._drop(conn)

    def _end_handshake(self, conn: QuicConnection) -> asyncio.TimerHandle | None:
        """Forget ``conn``'s handshake slot (and its source's count); its timer, if any."""
        timer = self._handshakes.pop(conn, None)
        source = self._source_of.pop(conn, None)
        if source is not None:
            left = self._pending_by_source.get(source, 0) - 1
            if left > 0:
                self._pending_by_source[source] = left
            else:
                self._pending_by_source.pop(source, None)
        return timer

    def _handshake_timed_out(self, conn: QuicConnection) -> None:
        self._end_handshake(conn)
        if conn.established.done():
            return
        log.debug("QUIC: inbound handshake from %s stalled; dropping it", conn._remote_sockaddr)
        conn._fail(
            P2PTimeout(
                f"QUIC handshake from {conn._remote_sockaddr} did not complete within "
                f"{self._owner.config.handshake_timeout}s"
            )
        )
        conn._close_core(QuicErrorCode.CONNECTION_REFUSED, "handshake timed out")
        self._drop(conn)

    async def connect(self, remote: SockAddr, expected: PeerId | None) -> QuicConnection:
        """Dial ``remote`` from this socket; return the authenticated connection."""
        if self._closed:
            raise ConnectionClosed(f"QUIC socket {self._local} is closed")
        owner = self._owner
        quic = Libp2pQuicConnection(
            configuration=owner.quic_configuration(is_client=True),
            max_inbound_streams=owner.config.max_streams_per_connection,
        )
        conn = self._new_connection(quic, remote, is_initiator=True, expected=expected)
        self._register(quic.host_cid, conn)
        loop = asyncio.get_running_loop()
        quic.connect(remote, loop.time())
        conn._transmit()
        timeout = owner.config.dial_timeout
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(conn.established)
        except TimeoutError:
            conn._close_core(QuicErrorCode.CONNECTION_REFUSED, "handshake timed out")
            self._drop(conn)
            raise P2PTimeout(
                f"QUIC handshake with {self.network.to_multiaddr(remote)} did not complete "
                f"within {timeout}s"
            ) from None
        except BaseException:
            if not conn.established.done() or conn.established.exception() is not None:
                conn._close_core(QuicErrorCode.NO_ERROR, "dial abandoned")
                self._drop(conn)
            raise
        return conn

    def _register(self, cid: bytes, conn: QuicConnection) -> None:
        cids = self._cids.get(conn)
        if cids is None:
            return
        self._by_cid[cid] = conn
        cids.add(cid)

    def _unregister(self, cid: bytes, conn: QuicConnection) -> None:
        if self._by_cid.get(cid) is conn:
            del self._by_cid[cid]
        cids = self._cids.get(conn)
        if cids is not None:
            cids.discard(cid)

    def _established(self, conn: QuicConnection) -> None:
        """Called by a connection once its peer is authenticated."""
        timer = self._end_handshake(conn)
        if timer is not None:
            timer.cancel()
        if not conn.is_initiator:
            handler = self._handler
            if handler is None:
                conn._close_core(QuicErrorCode.CONNECTION_REFUSED, "not listening")
                conn._terminate(ConnectionClosed("listener closed"), release=True)
                return
            task = asyncio.get_running_loop().create_task(self._run_handler(handler, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_handler(self, handler: ConnectionHandler, conn: QuicConnection) -> None:
        try:
            await handler(conn)
        except Exception:  # the handler owns errors; never let one kill the socket
            log.exception("QUIC connection handler failed for %r", conn)
            await conn.abort()

    def _connection_closed(self, conn: QuicConnection) -> None:
        """Called when a connection's local state ended (it may still drain)."""
        timer = self._end_handshake(conn)
        if timer is not None:
            timer.cancel()
        self._live.discard(conn)
        self._close_if_idle()

    def _release(self, conn: QuicConnection) -> None:
        """Called when a connection is completely gone: forget its connection ids."""
        for cid in self._cids.pop(conn, ()):
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]
        self._live.discard(conn)
        self._close_if_idle()

    def _drop(self, conn: QuicConnection) -> None:
        conn._terminate(ConnectionClosed("QUIC connection dropped"), release=True)

    # --- listening and closing --------------------------------------------------------------------

    def listen(self, handler: ConnectionHandler) -> None:
        """Accept inbound connections, handing each authenticated one to ``handler``."""
        self._handler = handler

    def stop_listening(self) -> None:
        """Stop accepting; the socket stays open while connections use it."""
        self._handler = None
        for conn in [c for c in self._handshakes if not c.is_initiator]:
            self._drop(conn)
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if not self._closed and self._handler is None and not self._live:
            self._owner._endpoint_closed(self)
            self._close_all(None)

    def _close_all(self, reason: ConnectionClosed | None) -> None:
        self._closed = True
        for conn in list(self._cids):
            conn._terminate(reason or ConnectionClosed("QUIC socket closed"), release=True)
        for timer in self._handshakes.values():
            timer.cancel()
        self._handshakes.clear()
        self._pending_by_source.clear()
        self._source_of.clear()
        self._by_cid.clear()
        self._cids.clear()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()

    def close(self) -> None:
        """Close the socket now, ending every connection on it."""
        if not self._closed:
            self._handler = None
            for conn in list(self._live):
                conn._close_core(QuicErrorCode.NO_ERROR, "endpoint closed")
            self._owner._endpoint_closed(self)
            self._close_all(None)

    def __repr__(self) -> str:
        return f"<QuicEndpoint {self._local} {len(self._live)} connections>"
