"""libp2p identify (``/ipfs/id/1.0.0``) and identify push (``/ipfs/id/push/1.0.0``).

On every new connection the node asks the remote who it is; the answer (one
or more varint-delimited ``Identify`` protobufs, merged, until the stream
ends) fills the peer store: public key, listen addresses, protocols,
versions, and our own address as the remote observed it.  When our protocols
change, we push a fresh record to connected peers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.addresses import multiaddr_from_bytes, split_peer
from switchy.stack.codec import decode_uvarint, pb_bytes, pb_fields_typed, pb_want_bytes
from switchy.stack.errors import AuthenticationFailed, InvalidPeerId, P2PError, SerializationError
from switchy.stack.identity import PeerId, PublicKey
from switchy.stack.node import ConnectionEvent, Node, ProtocolService

if TYPE_CHECKING:
    from switchy.stack.metrics import MetricsRegistry
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.node import Target
    from switchy.stack.stream import MuxedStream

__all__ = [
    "IDENTIFY_PROTOCOL",
    "IDENTIFY_PUSH_PROTOCOL",
    "IdentifyInfo",
    "IdentifyMetrics",
    "IdentifyService",
    "decode_identify",
    "encode_identify",
    "identify",
    "identify_connection",
]

log = logging.getLogger(__name__)

IDENTIFY_PROTOCOL: Final = "/ipfs/id/1.0.0"
IDENTIFY_PUSH_PROTOCOL: Final = "/ipfs/id/push/1.0.0"
#: protocolVersion we announce (the value libp2p implementations use).
PROTOCOL_VERSION: Final = "ipfs/0.1.0"
#: Largest identify answer accepted (all messages together).
MAX_IDENTIFY_SIZE: Final = 64 * 1024
#: Listen addresses / protocols accepted from one identify answer.
MAX_IDENTIFY_ADDRS: Final = 128
MAX_IDENTIFY_PROTOCOLS: Final = 512
#: Longest multiaddr (bytes) accepted in an identify answer.
MAX_ADDR_BYTES: Final = 1024


@attrs.define
class IdentifyInfo:
    """The content of an identify message."""

    protocol_version: str | None = None
    agent_version: str | None = None
    public_key: PublicKey | None = None
    listen_addrs: list[Multiaddr] = attrs.field(factory=list)
    observed_addr: Multiaddr | None = None
    protocols: list[str] = attrs.field(factory=list)
    signed_peer_record: bytes | None = None


def encode_identify(info: IdentifyInfo) -> bytes:
    """Encode ``info`` as an ``Identify`` protobuf (fields in number order)."""
    out = bytearray()
    if info.public_key is not None:
        out += pb_bytes(1, info.public_key.to_protobuf())
    for addr in info.listen_addrs:
        out += pb_bytes(2, addr.to_bytes())
    for proto in info.protocols:
        out += pb_bytes(3, proto.encode())
    if info.observed_addr is not None:
        out += pb_bytes(4, info.observed_addr.to_bytes())
    if info.protocol_version is not None:
        out += pb_bytes(5, info.protocol_version.encode())
    if info.agent_version is not None:
        out += pb_bytes(6, info.agent_version.encode())
    if info.signed_peer_record is not None:
        out += pb_bytes(8, info.signed_peer_record)
    return bytes(out)


#: The fields of ``Identify`` we read, all length-delimited, by number.
_FIELD_NAMES = {
    1: "Identify.publicKey",
    2: "Identify.listenAddrs",
    3: "Identify.protocols",
    4: "Identify.observedAddr",
    5: "Identify.protocolVersion",
    6: "Identify.agentVersion",
    8: "Identify.signedPeerRecord",
}


def decode_identify(data: bytes, into: IdentifyInfo | None = None) -> IdentifyInfo:
    """Decode one ``Identify`` protobuf, merging into ``into`` when given.

    Unparseable addresses are skipped; malformed protobuf or text, or a known field of
    the wrong wire type, raises :class:`SerializationError`.
    """
    info = into or IdentifyInfo()
    try:
        for field, wire_type, item in pb_fields_typed(data, max_size=MAX_IDENTIFY_SIZE):
            name = _FIELD_NAMES.get(field)
            if name is None:
                continue  # unknown fields are skipped (protobuf semantics)
            value = pb_want_bytes(name, wire_type, item)  # no fixed64 taken as an address
            if field == 1:
                info.public_key = PublicKey.from_protobuf(value)
            elif field == 2:
                if len(info.listen_addrs) >= MAX_IDENTIFY_ADDRS:
                    continue  # the rest is not even parsed
                addr = multiaddr_from_bytes(value, MAX_ADDR_BYTES)
                if addr is not None:
                    info.listen_addrs.append(addr)
            elif field == 3:
                if len(info.protocols) < MAX_IDENTIFY_PROTOCOLS:
                    info.protocols.append(value.decode())
            elif field == 4:
                info.observed_addr = multiaddr_from_bytes(value, MAX_ADDR_BYTES)
            elif field == 5:
                info.protocol_version = value.decode()
            elif field == 6:
                info.agent_version = value.decode()
            elif field == 8:
                info.signed_peer_record = value
    except UnicodeDecodeError as exc:
        raise SerializationError(f"identify text field is not UTF-8: {exc}") from None
    except InvalidPeerId as exc:
        raise SerializationError(f"identify public key is malformed: {exc}") from None
    return info


def decode_identify_stream(data: bytes) -> IdentifyInfo:
    """Decode the whole content of an identify stream: varint-delimited messages, merged."""
    info = IdentifyInfo()
    pos = 0
    while pos < len(data):
        r = decode_uvarint(data, pos)
        if r is None:
            raise SerializationError("identify stream ends inside a length prefix")
        length, pos = r
        if length > len(data) - pos:
            raise SerializationError(
                f"identify message claims {length} bytes, only {len(data) - pos} present"
            )
        decode_identify(data[pos : pos + length], info)
        pos += length
    return info


class IdentifyMetrics:
    """The identify service's ``libp2p_identify_*`` metrics on a node's registry, each
    registered once (when the service is attached), under go-libp2p's names.

    ``libp2p_identify_received_total{type}`` (identify answers and pushes received),
    ``libp2p_identify_addrs_received`` and ``libp2p_identify_protocols_received``
    (histograms per message), ``libp2p_identify_identify_push_total{dir}`` (pushes sent,
    ``outbound``, and applied, ``inbound``) and ``libp2p_identify_push_failures_total``
    (pushes we could not deliver: refused, reset, timed out).
    """

    def __init__(self, registry: MetricsRegistry) -> None:
        from switchy.stack.metrics import COUNT_BUCKETS

        ns = "libp2p_identify_"
        self.received = registry.counter(
            ns + "received_total", "Identify answers and pushes received", ("type",)
        )
        self.addrs = registry.histogram(
            ns + "addrs_received",
            "Addresses in each identify message received",
            buckets=COUNT_BUCKETS,
        )
        self.protocols = registry.histogram(
            ns + "protocols_received",
            "Protocols in each identify message received",
            buckets=COUNT_BUCKETS,
        )
        self.push = registry.counter(
            ns + "identify_push_total",
            "Identify pushes sent (outbound) and received (inbound)",
            ("dir",),
        )
        self.push_failures = registry.counter(
            ns + "push_failures_total", "Identify pushes that could not be delivered"
        )

    def record_received(self, info: IdentifyInfo, *, push: bool) -> None:
        """Count an identify answer (or a push) received."""
        self.received.labels("push" if push else "identify").inc()
        self.addrs.observe(len(info.listen_addrs))
        self.protocols.observe(len(info.protocols))


class IdentifyService(ProtocolService):
    """Answers identify, identifies every new connection, and pushes protocol changes."""

    service_name = "identify"
    service_protocols = (IDENTIFY_PROTOCOL, IDENTIFY_PUSH_PROTOCOL)

    def __init__(self, *, identify_on_connect: bool = True) -> None:
        self.identify_on_connect = identify_on_connect
        self.node: Node | None = None
        #: The ``libp2p_identify_*`` metrics (made when the service is attached).
        self.metrics: IdentifyMetrics | None = None
        self._identified: dict[PeerId, asyncio.Event] = {}
        self._record: tuple[tuple[bytes, ...], bytes] | None = None
        self._record_seq = 0

    def attach(self, node: Node) -> None:
        self.node = node
        self.metrics = IdentifyMetrics(node.metrics)
        node.handle(IDENTIFY_PROTOCOL, self._handle_identify)
        node.handle(IDENTIFY_PUSH_PROTOCOL, self._handle_push)
        if self.identify_on_connect:
            node.on_connection_event(self._on_event)
        node.on_protocols_changed(self.push)
        node.addresses.on_changed(self._addresses_changed)

    def _addresses_changed(self) -> Coroutine[Any, Any, None] | None:
        """Our announced addresses changed: push (with a new signed peer record)."""
        assert self.node is not None
        if not self.node.connected_peers or self.node.is_closed:
            return None
        return self.push()

    def local_info(self, observed: Multiaddr | None) -> IdentifyInfo:
        """What we tell others about ourselves."""
        assert self.node is not None
        return IdentifyInfo(
            protocol_version=PROTOCOL_VERSION,
            agent_version=self.node.agent_version,
            public_key=self.node.key.public_key,
            listen_addrs=self.node.announced_addrs,
            observed_addr=observed,
            protocols=self.node.protocols,
            signed_peer_record=self.signed_peer_record(),
        )

    def signed_peer_record(self) -> bytes:
        """Our signed peer record (RFC 0003) for our announced addresses, made once per set.

        ``seq`` is the wall clock in nanoseconds (kept increasing), so a record
        made after a restart supersedes the older ones, as the RFC asks.
        """
        from switchy.stack.envelope import PeerRecord, seal_peer_record

        assert self.node is not None
        addrs = self.node.announced_addrs
        key = tuple(a.to_bytes() for a in addrs)
        if self._record is None or self._record[0] != key:
            self._record_seq = max(self._record_seq + 1, time.time_ns())
            record = PeerRecord(self.node.peer_id, self._record_seq, tuple(addrs))
            self._record = (key, seal_peer_record(self.node.key, record))
        return self._record[1]

    async def _handle_identify(self, stream: MuxedStream) -> None:
        msg = encode_identify(self.local_info(stream.muxed_conn.remote_addr))
        await stream.send_message(msg, max_size=MAX_IDENTIFY_SIZE)
        await stream.close_write()

    async def _handle_push(self, stream: MuxedStream) -> None:
        data = await stream.read_all(limit=MAX_IDENTIFY_SIZE)
        info = decode_identify_stream(data)
        self._apply(stream.remote_peer, info, push=True)
        if self.metrics is not None:
            self.metrics.push.labels("inbound").inc()

    def _apply(
        self,
        peer: PeerId,
        info: IdentifyInfo,
        *,
        push: bool = False,
        conn: MuxedConnection | None = None,
    ) -> None:
        assert self.node is not None
        if self.metrics is not None:
            self.metrics.record_received(info, push=push)
        if info.public_key is not None and not peer.matches(info.public_key):
            raise AuthenticationFailed(f"identify from {peer} carries another peer's public key")
        store = self.node.peerstore
        rec = store.get(peer)
        if info.public_key is not None:
            rec.public_key = info.public_key
        if info.listen_addrs:
            store.add_addrs(peer, info.listen_addrs)
        if info.protocols or not push:
            store.set_protocols(peer, info.protocols)
        if info.agent_version is not None:
            rec.agent_version = info.agent_version
        if info.protocol_version is not None:
            rec.protocol_version = info.protocol_version
        if info.observed_addr is not None and not push:
            observed = self._own_observed(peer, info.observed_addr)
            if observed is not None:
                store.add_observed_addr(observed)
                if conn is not None:  # the address book counts it if it tells something
                    self.node.report_observed(conn, observed)
        if info.signed_peer_record is not None:
            self._check_record(peer, info.signed_peer_record)
        self._identified.setdefault(peer, asyncio.Event()).set()

    def _own_observed(self, peer: PeerId, addr: Multiaddr) -> Multiaddr | None:
        """``addr`` as one of our addresses: a trailing ``/p2p/<our id>`` (as js-libp2p
        sends it) is stripped; one naming another peer, or a bare ``/p2p``, is ignored."""
        assert self.node is not None
        try:
            base, named = split_peer(addr)
        except InvalidPeerId as exc:
            log.debug("ignoring %s's observed address %s: %s", peer, addr, exc)
            return None
        if named is not None and named != self.node.peer_id:
            log.debug("ignoring %s's observed address %s: it names another peer", peer, addr)
            return None
        if not base.to_bytes():
            log.debug("ignoring %s's observed address %s: no transport address", peer, addr)
            return None
        return base

    def _check_record(self, peer: PeerId, data: bytes) -> None:
        """Keep the remote's signed peer record when it verifies and is its own."""
        from switchy.stack.envelope import open_peer_record

        assert self.node is not None
        try:
            record = open_peer_record(data)
        except P2PError as exc:
            log.debug("ignoring a bad signed peer record from %s: %s", peer, exc)
            return
        if record.peer_id != peer:
            log.debug("ignoring %s's signed peer record for %s", peer, record.peer_id)
            return
        rec = self.node.peerstore.get(peer)
        if rec.peer_record is None or rec.peer_record.seq < record.seq:
            rec.peer_record = record
            rec.signed_peer_record = bytes(data)

    async def _on_event(self, event: ConnectionEvent) -> None:
        if event.kind != "connected":
            return
        assert self.node is not None
        try:
            info = await identify_connection(self.node, event.connection)
            self._apply(event.peer, info, conn=event.connection)
        except (P2PError, TimeoutError) as exc:  # a peer that does not answer in time
            log.debug("identify of %s failed: %s", event.peer, exc or "timed out")

    async def wait_identified(self, peer: PeerId, timeout: float | None = None) -> None:
        """Wait until an identify answer from ``peer`` was applied."""
        event = self._identified.setdefault(peer, asyncio.Event())
        async with asyncio.timeout(timeout):
            await event.wait()

    async def push(self) -> None:
        """Send our current record to every connected peer that speaks identify push.

        Returns once every push was delivered, refused or timed out (``Stream.finish``).
        """
        assert self.node is not None
        node = self.node
        peers = [
            p for p in node.connected_peers if IDENTIFY_PUSH_PROTOCOL in node.peerstore.protocols(p)
        ]
        if peers:
            message = encode_identify(self.local_info(None))
            await asyncio.gather(*(self._push_to(peer, message) for peer in peers))

    async def _push_to(self, peer: PeerId, message: bytes) -> None:
        assert self.node is not None
        try:
            stream = await self.node.open_stream(peer, IDENTIFY_PUSH_PROTOCOL)
            try:
                await stream.send_message(message, max_size=MAX_IDENTIFY_SIZE)
            except BaseException:
                await stream.reset()
                raise
            # Half-close and wait for the peer's end: the multistream answer arrives
            # after our data, and a plain close() would answer it with STOP_SENDING on
            # QUIC (js-libp2p then drops the push).
            await stream.finish()
        except P2PError as exc:
            log.debug("identify push to %s failed: %s", peer, exc)
            if self.metrics is not None:
                self.metrics.push_failures.inc()
            return
        if self.metrics is not None:
            self.metrics.push.labels("outbound").inc()


async def identify(node: Node, target: Target) -> IdentifyInfo:
    """Ask ``target`` who it is (does not update the peer store)."""
    async with asyncio.timeout(node.config.request_timeout):
        stream = await node.open_stream(target, IDENTIFY_PROTOCOL)
    return await _read_identify(node, stream)


async def identify_connection(node: Node, conn: MuxedConnection) -> IdentifyInfo:
    """Ask the peer of ``conn`` who it is, on that connection (its observed address is
    then about this connection's local side)."""
    async with asyncio.timeout(node.config.request_timeout):
        stream = await node.open_protocol_stream(conn, IDENTIFY_PROTOCOL)
    return await _read_identify(node, stream)


async def _read_identify(node: Node, stream: MuxedStream) -> IdentifyInfo:
    async with asyncio.timeout(node.config.request_timeout):
        try:
            data = await stream.read_all(limit=MAX_IDENTIFY_SIZE)
        except BaseException:
            await stream.reset()
            raise
        await stream.close()
    info = decode_identify_stream(data)
    if info.public_key is not None and not stream.remote_peer.matches(info.public_key):
        raise AuthenticationFailed(
            f"identify from {stream.remote_peer} carries another peer's public key"
        )
    return info
