"""Sans-IO codec of the Kademlia DHT messages (libp2p spec ``kad-dht/README.md``).

The protocol id is :data:`PROTOCOL` (``/ipfs/kad/1.0.0``).  Every message is a
protobuf ``Message`` prefixed by its length as an unsigned varint; requests and
responses use the same message, and a response has the request's type.

Field numbers (the spec's ``dht.proto``): ``Message.type`` = 1, ``key`` = 2,
``record`` = 3, ``closerPeers`` = 8, ``providerPeers`` = 9,
``clusterLevelRaw`` = 10; ``Record.key`` = 1, ``value`` = 2,
``timeReceived`` = 5; ``Peer.id`` = 1, ``addrs`` = 2, ``connection`` = 3.

The encoding is written by hand on :mod:`switchy.stack.codec` (fields in number
order, minimal varints).  Decoders never trust the input: the message size,
the key and value sizes, the number of peers, every peer's number of addresses
and each address's size are checked against the explicit limits below, and a
known field with the wrong wire type is an error.  Unknown fields are skipped.
A peer whose id is not a valid multihash, or an address that does not parse,
is dropped (other implementations add address kinds we may not know);
too many of them is still an error.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.addresses import multiaddr_from_bytes
from switchy.stack.codec import (
    frame_message,
    pb_bytes,
    pb_fields_typed,
    pb_varint,
    pb_want_bytes,
    pb_want_int,
    split_frame,
)
from switchy.stack.errors import InvalidPeerId, MessageTooLarge, SerializationError
from switchy.stack.identity import PeerId

__all__ = [
    "MAX_ADDRS_PER_PEER",
    "MAX_ADDR_SIZE",
    "MAX_KEY_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_PEERS_PER_MESSAGE",
    "MAX_PEER_ID_SIZE",
    "MAX_VALUE_SIZE",
    "PROTOCOL",
    "ConnectionType",
    "KadMessage",
    "KadPeer",
    "MessageType",
    "Record",
    "decode_frame",
    "decode_message",
    "encode_frame",
    "encode_message",
    "peers_of",
]

#: The Kademlia protocol id of the public libp2p (IPFS) DHT.
PROTOCOL: Final = "/ipfs/kad/1.0.0"

#: Largest message we send or accept.  go-libp2p accepts 4 MiB and rust-libp2p
#: 16 KiB by default; 64 KiB holds k = 20 peers with many addresses, a value of
#: :data:`MAX_VALUE_SIZE` or a few hundred providers, and bounds what one peer
#: can make us buffer.
MAX_MESSAGE_SIZE: Final = 64 * 1024
#: Largest key (record keys such as ``/pk/<multihash>``; provider keys are
#: limited further by the service, to 80 bytes).
MAX_KEY_SIZE: Final = 512
#: Largest record value (an IPNS record is at most 10 KiB by its spec).
MAX_VALUE_SIZE: Final = 16 * 1024
#: Most peers in ``closerPeers`` plus ``providerPeers`` of one message: an
#: honest peer sends k = 20 closer peers and a bounded number of providers.
MAX_PEERS_PER_MESSAGE: Final = 100
#: Most addresses of one peer.
MAX_ADDRS_PER_PEER: Final = 32
#: Largest binary address.
MAX_ADDR_SIZE: Final = 512
#: Largest peer id (an inlined RSA-2048 key would not fit; libp2p hashes those).
MAX_PEER_ID_SIZE: Final = 128
#: Longest ``timeReceived`` string (RFC 3339 timestamps are ~30 characters).
_MAX_TIME_SIZE: Final = 64


class MessageType(enum.IntEnum):
    """``Message.MessageType``."""

    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    """``Message.ConnectionType``: what the sender knows of its link to a peer."""

    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@attrs.frozen
class KadPeer:
    """``Message.Peer``: a peer and its addresses."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...] = ()
    #: A :class:`ConnectionType`, or an integer we do not know.
    connection: int = ConnectionType.NOT_CONNECTED


@attrs.frozen
class Record:
    """``Record``: a key and its value (``timeReceived`` is set by a receiver)."""

    key: bytes
    value: bytes
    time_received: str = ""


@attrs.frozen
class KadMessage:
    """``Message``: one request or response."""

    #: A :class:`MessageType`, or an integer we do not know (the caller refuses it).
    type: int
    key: bytes = b""
    record: Record | None = None
    closer_peers: tuple[KadPeer, ...] = ()
    provider_peers: tuple[KadPeer, ...] = ()
    cluster_level: int = 0


# --- encoding ---------------------------------------------------------------------------


def _encode_peer(peer: KadPeer) -> bytes:
    out = [pb_bytes(1, peer.peer_id.multihash)]
    out.extend(pb_bytes(2, addr.to_bytes()) for addr in peer.addrs)
    if peer.connection:
        out.append(pb_varint(3, int(peer.connection)))
    return b"".join(out)


def _encode_record(record: Record) -> bytes:
    out = [pb_bytes(1, record.key), pb_bytes(2, record.value)]
    if record.time_received:
        out.append(pb_bytes(5, record.time_received.encode()))
    return b"".join(out)


def _check_outgoing(msg: KadMessage) -> None:
    if len(msg.key) > MAX_KEY_SIZE:
        raise MessageTooLarge(f"kad key of {len(msg.key)} bytes exceeds {MAX_KEY_SIZE}")
    if msg.record is not None:
        if len(msg.record.key) > MAX_KEY_SIZE:
            raise MessageTooLarge(
                f"kad record key of {len(msg.record.key)} bytes exceeds {MAX_KEY_SIZE}"
            )
        if len(msg.record.value) > MAX_VALUE_SIZE:
            raise MessageTooLarge(
                f"kad record value of {len(msg.record.value)} bytes exceeds {MAX_VALUE_SIZE}"
            )
    if len(msg.closer_peers) + len(msg.provider_peers) > MAX_PEERS_PER_MESSAGE:
        raise MessageTooLarge(f"kad message with more than {MAX_PEERS_PER_MESSAGE} peers")
    for peer in (*msg.closer_peers, *msg.provider_peers):
        if len(peer.addrs) > MAX_ADDRS_PER_PEER:
            raise MessageTooLarge(
                f"kad peer {peer.peer_id} with {len(peer.addrs)} addresses "
                f"(limit {MAX_ADDRS_PER_PEER})"
            )


def encode_message(msg: KadMessage) -> bytes:
    """The protobuf bytes of ``msg`` (unframed).

    Raises :class:`MessageTooLarge` when a limit of this module is exceeded.
    """
    _check_outgoing(msg)
    out = [pb_varint(1, int(msg.type))]
    if msg.key:
        out.append(pb_bytes(2, msg.key))
    if msg.record is not None:
        out.append(pb_bytes(3, _encode_record(msg.record)))
    out.extend(pb_bytes(8, _encode_peer(p)) for p in msg.closer_peers)
    out.extend(pb_bytes(9, _encode_peer(p)) for p in msg.provider_peers)
    if msg.cluster_level:
        out.append(pb_varint(10, msg.cluster_level & 0xFFFFFFFF))
    data = b"".join(out)
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"kad message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return data


def encode_frame(msg: KadMessage) -> bytes:
    """``msg`` encoded and prefixed by its length (one write on a stream)."""
    return frame_message(encode_message(msg), MAX_MESSAGE_SIZE, "kad message")


# --- decoding ---------------------------------------------------------------------------


def _decode_peer(data: bytes) -> KadPeer | None:
    raw_id: bytes | None = None
    addrs: list[Multiaddr] = []
    count = 0
    connection = 0
    for field, wire, value in pb_fields_typed(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            value = pb_want_bytes("Peer.id", wire, value)
            if len(value) > MAX_PEER_ID_SIZE:
                raise SerializationError(
                    f"kad peer id of {len(value)} bytes exceeds {MAX_PEER_ID_SIZE}"
                )
            raw_id = value
        elif field == 2:
            value = pb_want_bytes("Peer.addrs", wire, value)
            count += 1
            if count > MAX_ADDRS_PER_PEER:
                raise SerializationError(f"kad peer with more than {MAX_ADDRS_PER_PEER} addresses")
            addr = multiaddr_from_bytes(value, MAX_ADDR_SIZE)
            if addr is not None:
                addrs.append(addr)
        elif field == 3:
            value = pb_want_int("Peer.connection", wire, value)
            connection = value
    if raw_id is None:
        raise SerializationError("kad peer without an id")
    try:
        peer_id = PeerId(raw_id)
    except (InvalidPeerId, ValueError):
        return None
    return KadPeer(peer_id, tuple(addrs), connection)


def _decode_record(data: bytes) -> Record:
    key = b""
    value = b""
    time_received = ""
    for field, wire, item in pb_fields_typed(data, max_size=MAX_MESSAGE_SIZE):
        if field in (1, 2, 5):
            item = pb_want_bytes(f"Record.{field}", wire, item)
            if field == 1:
                if len(item) > MAX_KEY_SIZE:
                    raise SerializationError(
                        f"kad record key of {len(item)} bytes exceeds {MAX_KEY_SIZE}"
                    )
                key = item
            elif field == 2:
                if len(item) > MAX_VALUE_SIZE:
                    raise SerializationError(
                        f"kad record value of {len(item)} bytes exceeds {MAX_VALUE_SIZE}"
                    )
                value = item
            else:
                if len(item) > _MAX_TIME_SIZE:
                    raise SerializationError("kad record timeReceived is too long")
                try:
                    time_received = item.decode()
                except UnicodeDecodeError:
                    raise SerializationError("kad record timeReceived is not UTF-8") from None
    return Record(key, value, time_received)


def decode_message(data: bytes) -> KadMessage:
    """Parse one unframed message.

    Raises :class:`MessageTooLarge` above :data:`MAX_MESSAGE_SIZE` and
    :class:`SerializationError` for anything malformed or over a limit.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"kad message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    kind = 0
    key = b""
    record: Record | None = None
    closer: list[KadPeer] = []
    providers: list[KadPeer] = []
    peers_seen = 0
    cluster = 0
    for field, wire, value in pb_fields_typed(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            value = pb_want_int("Message.type", wire, value)
            kind = value
        elif field == 2:
            value = pb_want_bytes("Message.key", wire, value)
            if len(value) > MAX_KEY_SIZE:
                raise SerializationError(f"kad key of {len(value)} bytes exceeds {MAX_KEY_SIZE}")
            key = value
        elif field == 3:
            value = pb_want_bytes("Message.record", wire, value)
            record = _decode_record(value)
        elif field in (8, 9):
            value = pb_want_bytes("Message.closerPeers/providerPeers", wire, value)
            peers_seen += 1
            if peers_seen > MAX_PEERS_PER_MESSAGE:
                raise SerializationError(
                    f"kad message with more than {MAX_PEERS_PER_MESSAGE} peers"
                )
            peer = _decode_peer(value)
            if peer is not None:
                (closer if field == 8 else providers).append(peer)
        elif field == 10:
            value = pb_want_int("Message.clusterLevelRaw", wire, value)
            cluster = value & 0xFFFFFFFF
    return KadMessage(kind, key, record, tuple(closer), tuple(providers), cluster)


def decode_frame(data: bytes | bytearray) -> tuple[KadMessage, int] | None:
    """Split and parse one framed message off ``data``: ``(message, bytes used)``.

    Returns ``None`` while more bytes are needed.
    """
    r = split_frame(data, MAX_MESSAGE_SIZE, "kad message")
    if r is None:
        return None
    body, used = r
    return decode_message(body), used


def peers_of(items: Sequence[tuple[PeerId, Sequence[Multiaddr]]]) -> tuple[KadPeer, ...]:
    """``KadPeer`` entries for ``(peer, addresses)`` pairs (at most :data:`MAX_ADDRS_PER_PEER`
    addresses each)."""
    return tuple(KadPeer(p, tuple(a)[:MAX_ADDRS_PER_PEER]) for p, a in items)
