"""The sans-IO core: aioquic's :class:`QuicConnection` configured and extended for libp2p.

Datagrams go in with :meth:`~aioquic.quic.connection.QuicConnection.receive_datagram`,
come out of ``datagrams_to_send``, events come out of ``next_event``; no
socket, no clock (times are passed in).  What this module adds to aioquic:

* the libp2p TLS handshake: our certificate, ALPN ``libp2p``, no SNI, a
  client certificate requested by the server, and :meth:`Libp2pQuicConnection.verify_peer`
  which checks the peer's certificate chain (libp2p TLS spec) and derives its
  peer id, closing the connection with a TLS ``bad_certificate`` error if not;
* receive flow control driven by the application: aioquic raises its
  windows as data *arrives*; here a stream's window (and the connection's)
  moves only when the application :meth:`consumes <Libp2pQuicConnection.consume>`
  data, so a reader that stops reading stops the sender;
* stream limits: at most ``max_inbound_streams`` concurrent bidirectional
  streams from the peer, no unidirectional streams (libp2p uses none).

The hooks into aioquic (``_initialize``, ``_write_stream_limits``,
``_write_connection_limits``, the stream-limit counters and initial stream windows,
a stream sender's acknowledged prefix, and the TLS context's client-certificate
switch and peer certificate) are private aioquic names;
they are all here, and the tests exercise each of them.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

from aioquic._buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import END_STATES, QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicProtocolVersion,
    pull_quic_transport_parameters,
)

from switchy.stack.errors import AuthenticationFailed
from switchy.stack.identity import PeerId
from switchy.transports.quic.tls import ALPN, Libp2pCertificate, verify_certificate_chain

__all__ = [
    "BAD_CERTIFICATE_ERROR",
    "CONNECTION_ID_LENGTH",
    "DEFAULT_CONNECTION_WINDOW",
    "DEFAULT_MAX_UDP_PAYLOAD_SIZE",
    "DEFAULT_STREAM_WINDOW",
    "IDLE_TIMEOUT",
    "INITIAL_STREAM_WINDOW",
    "MAX_DATAGRAM_FRAME_SIZE",
    "STREAM_RESET_CODE",
    "Libp2pQuicConnection",
    "make_configuration",
]

#: Application error code of RESET_STREAM / STOP_SENDING (0, as other libp2p QUICs).
STREAM_RESET_CODE: Final = 0
#: CONNECTION_CLOSE code for a refused peer certificate: CRYPTO_ERROR + bad_certificate alert.
BAD_CERTIFICATE_ERROR: Final = QuicErrorCode.CRYPTO_ERROR + 42
#: Length of the connection ids we issue (the socket demultiplexes on them).
CONNECTION_ID_LENGTH: Final = 8
#: Receive window per stream: bytes the peer may send beyond what the application read.
DEFAULT_STREAM_WINDOW: Final = 4 * 1024 * 1024
#: The window a new stream starts with (the transport parameters' initial limits); it
#: grows to twice what the application read, up to the stream window, so a stream
#: limited early (see :meth:`Libp2pQuicConnection.limit_stream_window`, e.g. by a relay
#: after reading the request) never had much more credit than this.  The window still
#: doubles per round trip while data flows: faster than the congestion window opens.
INITIAL_STREAM_WINDOW: Final = 256 * 1024
#: Receive window of the whole connection.
DEFAULT_CONNECTION_WINDOW: Final = 16 * 1024 * 1024
#: Largest DATAGRAM frame we accept (announced in the transport parameters, RFC 9221).
MAX_DATAGRAM_FRAME_SIZE: Final = 65536
#: The peer's ``max_udp_payload_size`` when its transport parameters leave it out (RFC 9000).
DEFAULT_MAX_UDP_PAYLOAD_SIZE: Final = 65527
#: A connection with no packet received for this long is closed (keep-alives prevent it).
IDLE_TIMEOUT: Final = 30.0
#: QUIC version 1 (RFC 9000), the one ``/quic-v1`` names.
QUIC_V1: Final = QuicProtocolVersion.VERSION_1


def make_configuration(
    cert: Libp2pCertificate,
    *,
    is_client: bool,
    stream_window: int = DEFAULT_STREAM_WINDOW,
    connection_window: int = DEFAULT_CONNECTION_WINDOW,
    datagrams: bool = True,
    idle_timeout: float = IDLE_TIMEOUT,
    max_datagram_size: int = SMALLEST_MAX_DATAGRAM_SIZE,
) -> QuicConfiguration:
    """An aioquic configuration for one side of a libp2p QUIC connection.

    ``max_datagram_size`` is the largest UDP payload sent: 1200 bytes fits every path;
    aioquic's cost is per packet, so where the path MTU is known to be larger (a LAN,
    loopback) raising it raises throughput nearly in proportion.
    """
    return QuicConfiguration(
        alpn_protocols=[ALPN],
        is_client=is_client,
        certificate=cert.certificate,
        private_key=cert.private_key,
        # Self-signed certificates: aioquic's CA check is off, verify_peer() does libp2p's.
        verify_mode=ssl.CERT_NONE,
        server_name=None,  # the libp2p TLS spec forbids SNI
        max_stream_data=stream_window,
        max_data=connection_window,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE if datagrams else None,
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        connection_id_length=CONNECTION_ID_LENGTH,
        supported_versions=[QUIC_V1],
    )


class Libp2pQuicConnection(QuicConnection):
    """An aioquic connection with libp2p authentication, app-driven windows and stream limits."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        max_inbound_streams: int,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
    ) -> None:
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        bidi = self._local_max_streams_bidi
        bidi.value = bidi.sent = max_inbound_streams
        uni = self._local_max_streams_uni
        uni.value = uni.sent = 0
        self._stream_window = configuration.max_stream_data
        self._connection_window = configuration.max_data
        # Announce a smaller initial window; consume() grants the full one as data is read.
        initial = min(self._stream_window, INITIAL_STREAM_WINDOW)
        self._local_max_stream_data_bidi_local = initial
        self._local_max_stream_data_bidi_remote = initial
        self._consumed: dict[int, int] = {}
        self._windows: dict[int, int] = {}
        self._consumed_total = 0
        self._remote_max_udp_payload_size = DEFAULT_MAX_UDP_PAYLOAD_SIZE
        #: The authenticated peer, once :meth:`verify_peer` succeeded.
        self.peer_id: PeerId | None = None

    # --- packet size ---------------------------------------------------------------------

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        if not from_session_ticket:
            params = pull_quic_transport_parameters(Buffer(data=data))
            if params.max_udp_payload_size is not None:
                self._remote_max_udp_payload_size = params.max_udp_payload_size

    def raise_datagram_size(self, size: int) -> int:
        """Send UDP payloads of up to ``size`` bytes from now on, never more than the peer's
        ``max_udp_payload_size`` (its transport parameters, RFC 9000 section 18.2) and never
        less than now; the caller knows the path carries them (loopback).  Returns the size
        in force.  Congestion control and pacing count in the new size too."""
        size = min(size, self._remote_max_udp_payload_size)
        if size > self._max_datagram_size:
            self._max_datagram_size = size
            loss = self._loss
            loss._pacer._max_datagram_size = size
            cc = loss._cc
            if hasattr(cc, "_max_datagram_size"):
                cc._max_datagram_size = size
            # RFC 9002 section 7.2's initial window for this size: a whole packet (a
            # DATAGRAM frame cannot be split) must always fit the window.
            initial = min(10 * size, max(14720, 2 * size))
            cc.congestion_window = max(cc.congestion_window, initial)
        return self._max_datagram_size

    @property
    def decrypted_any(self) -> bool:
        """Whether any packet received so far decrypted (an inbound connection whose first
        datagram did not is garbage or spoofed, and holds no handshake slot).  Reads
        aioquic's private packet-number spaces, like the overrides above."""
        # a packet that decrypted is acknowledged, or made us close (wrong ALPN, ...)
        return self._close_event is not None or any(
            len(space.ack_queue) for space in self._spaces.values()
        )

    # --- libp2p TLS ---------------------------------------------------------------------

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            # libp2p servers MUST require a client certificate.
            self.tls._request_client_certificate = True

    def verify_peer(self, expected: PeerId | None = None) -> PeerId:
        """Check the peer's certificate after the handshake; return its peer id.

        On failure the connection is closed with a ``bad_certificate`` crypto
        error and :class:`AuthenticationFailed` is raised.  ``expected``, if
        given, must be the peer id found.
        """
        try:
            if self.tls.alpn_negotiated != ALPN:
                raise AuthenticationFailed(
                    f"peer negotiated ALPN {self.tls.alpn_negotiated!r}, not {ALPN!r}"
                )
            leaf = self.tls._peer_certificate
            if leaf is None:
                raise AuthenticationFailed("peer presented no certificate")
            peer = verify_certificate_chain([leaf, *self.tls._peer_certificate_chain])
            if expected is not None and peer != expected:
                raise AuthenticationFailed(f"peer is {peer}, expected {expected}")
        except AuthenticationFailed as exc:
            self.close(error_code=BAD_CERTIFICATE_ERROR, reason_phrase=f"libp2p TLS: {exc}")
            raise
        self.peer_id = peer
        return peer

    # --- flow control driven by the application ------------------------------------------

    def consume(self, stream_id: int, n: int) -> bool:
        """The application read ``n`` bytes of ``stream_id``; True if new credit is to be sent."""
        granted = False
        total = self._consumed.get(stream_id, 0) + n
        self._consumed[stream_id] = total
        stream = self._streams.get(stream_id)
        if stream is not None and stream.max_stream_data_local:
            window = self._windows.get(stream_id)
            if window is None:  # grows with use: twice what was read, up to the full window
                window = min(self._stream_window, max(INITIAL_STREAM_WINDOW, 2 * total))
            target = total + window
            if target - stream.max_stream_data_local >= window // 2:
                stream.max_stream_data_local = target
                granted = True
        self._consumed_total += n
        limit = self._local_max_data
        target = self._consumed_total + self._connection_window
        if target - limit.value >= self._connection_window // 2:
            limit.value = target
            granted = True
        return granted

    def limit_stream_window(self, stream_id: int, window: int) -> None:
        """From now on grant ``stream_id`` at most ``window`` bytes beyond what was read.

        Credit already granted stays (at most :data:`INITIAL_STREAM_WINDOW` before the
        first read).  For streams whose data is forwarded (a relay's circuits): the
        sender then feels the next hop's backpressure instead of filling our buffer.
        """
        self._windows[stream_id] = max(1, min(window, self._stream_window))

    def settle(self, stream_id: int) -> bool:
        """The peer reset ``stream_id``: give back the connection credit of bytes never read.

        A reset's final size counts against the connection window even for bytes that
        never arrived or were never delivered; without this, every reset would shrink
        the window for good.  True if new credit is to be sent.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return False
        unread = stream.receiver.highest_offset - self._consumed.get(stream_id, 0)
        granted = self.consume(stream_id, unread) if unread > 0 else False
        self._consumed.pop(stream_id, None)
        self._windows.pop(stream_id, None)
        return granted

    def forget_stream(self, stream_id: int) -> None:
        """The application is done with ``stream_id``; prune counters of finished streams."""
        consumed = self._consumed
        if len(consumed) > 2 * len(self._streams) + 64:
            for sid in [sid for sid in consumed if sid not in self._streams]:
                del consumed[sid]
        windows = self._windows
        if len(windows) > 2 * len(self._streams) + 64:
            for sid in [sid for sid in windows if sid not in self._streams]:
                del windows[sid]

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # aioquic doubles a stream's window whenever half of it has arrived; hide the
        # arrivals so only consume() moves the window.
        receiver = stream.receiver
        highest = receiver.highest_offset
        receiver.highest_offset = 0
        try:
            super()._write_stream_limits(builder=builder, space=space, stream=stream)
        finally:
            receiver.highest_offset = highest

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        # Same for the connection window (MAX_DATA); MAX_STREAMS is left to aioquic.
        limit = self._local_max_data
        used = limit.used
        limit.used = 0
        try:
            super()._write_connection_limits(builder=builder, space=space)
        finally:
            limit.used = used

    # --- inspection -----------------------------------------------------------------------

    def sent_offset(self, stream_id: int) -> int | None:
        """How many bytes of ``stream_id`` were put on the wire at least once (None: no stream)."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.sender.highest_offset

    def acked_offset(self, stream_id: int) -> int | None:
        """How many bytes of ``stream_id`` the peer acknowledged, counted from the start
        without a gap (None: no stream)."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.sender._buffer_start

    def send_finished(self, stream_id: int) -> bool:
        """Whether everything we sent on ``stream_id`` (with FIN or reset) is acknowledged."""
        stream = self._streams.get(stream_id)
        return stream is None or stream.sender.is_finished

    def all_sent_acknowledged(self) -> bool:
        """Whether every stream byte (and FIN) we queued was sent and acknowledged."""
        return self._loss.bytes_in_flight == 0 and all(
            s.sender.buffer_is_empty for s in self._streams.values()
        )

    def closing_event(self) -> ConnectionTerminated | None:
        """Why the connection is closing, once a CONNECTION_CLOSE was sent or received."""
        if self._state in END_STATES:
            return self._close_event
        return None

    @property
    def remote_max_datagram_frame_size(self) -> int | None:
        """The peer's DATAGRAM frame limit (None: the peer does not support RFC 9221)."""
        return self._remote_max_datagram_frame_size

    @property
    def packet_payload_size(self) -> int:
        """The largest UDP payload this connection sends."""
        return self._max_datagram_size

    @property
    def peer_cid_length(self) -> int:
        """The length of the connection id we address the peer with."""
        return len(self._peer_cid.cid)
