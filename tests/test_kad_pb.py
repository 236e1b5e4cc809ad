"""Kademlia codec: known bytes, round trips (hypothesis), limits and garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.kad.pb import (
    MAX_ADDRS_PER_PEER,
    MAX_KEY_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_PEERS_PER_MESSAGE,
    MAX_VALUE_SIZE,
    ConnectionType,
    KadMessage,
    KadPeer,
    MessageType,
    Record,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
)
from switchy.stack.codec import encode_uvarint, pb_bytes, pb_varint
from switchy.stack.errors import MessageTooLarge, SerializationError
from tests.kad_helpers import peer

_ADDRS = [Multiaddr("/ip4/1.2.3.4/tcp/4001"), Multiaddr("/ip6/::1/udp/4001/quic-v1")]


def test_known_bytes_of_find_node() -> None:
    """A FIND_NODE request is type 4 (field 1) and the key (field 2), in that order."""
    msg = KadMessage(MessageType.FIND_NODE, key=b"abc")
    assert encode_message(msg) == b"\x08\x04\x12\x03abc"
    assert decode_message(b"\x08\x04\x12\x03abc") == msg


def test_known_bytes_of_peer_and_record() -> None:
    """closerPeers is field 8 with Peer.id 1, addrs 2, connection 3; Record is field 3."""
    p = peer(1)
    a = _ADDRS[0]
    body = pb_bytes(1, p.multihash) + pb_bytes(2, a.to_bytes()) + pb_varint(3, 1)
    rec = pb_bytes(1, b"k") + pb_bytes(2, b"v") + pb_bytes(5, b"2026-01-01T00:00:00Z")
    wire = pb_varint(1, 1) + pb_bytes(2, b"k") + pb_bytes(3, rec) + pb_bytes(8, body)
    msg = decode_message(wire)
    assert msg.type == MessageType.GET_VALUE
    assert msg.record == Record(b"k", b"v", "2026-01-01T00:00:00Z")
    assert msg.closer_peers == (KadPeer(p, (a,), ConnectionType.CONNECTED),)
    assert encode_message(msg) == wire


def test_provider_peers_and_cluster_level() -> None:
    """providerPeers is field 9; clusterLevelRaw (10) is carried; unknown fields skipped."""
    p = peer(2)
    wire = (
        pb_varint(1, 3)
        + pb_bytes(9, pb_bytes(1, p.multihash))
        + pb_varint(10, 7)
        + pb_varint(99, 1)
    )
    msg = decode_message(wire)
    assert msg.provider_peers == (KadPeer(p),)
    assert msg.cluster_level == 7


_peers = st.builds(
    KadPeer,
    st.integers(0, 10_000).map(peer),
    st.lists(st.sampled_from(_ADDRS), max_size=4).map(tuple),
    st.sampled_from(list(ConnectionType)),
)
_messages = st.builds(
    KadMessage,
    st.sampled_from(list(MessageType)),
    st.binary(max_size=100),
    st.none()
    | st.builds(
        Record, st.binary(max_size=60), st.binary(max_size=500), st.sampled_from(["", "x"])
    ),
    st.lists(_peers, max_size=20).map(tuple),
    st.lists(_peers, max_size=5).map(tuple),
    st.integers(0, 1000),
)


@given(_messages)
def test_round_trip(msg: KadMessage) -> None:
    """Every message decodes to itself, framed or not, also when split anywhere."""
    assert decode_message(encode_message(msg)) == msg
    frame = encode_frame(msg)
    assert decode_frame(frame) == (msg, len(frame))
    assert decode_frame(frame[: len(frame) - 1]) is None


@given(st.binary(max_size=300))
def test_garbage_raises_only_protocol_errors(data: bytes) -> None:
    """Random bytes either decode or raise a SerializationError, nothing else."""
    with contextlib.suppress(SerializationError):
        decode_message(data)


@given(_messages, st.integers(0, 200), st.integers(0, 255))
def test_corrupted_message_raises_only_protocol_errors(msg: KadMessage, at: int, byte: int) -> None:
    """A valid message with one byte changed decodes or raises SerializationError."""
    data = bytearray(encode_message(msg))
    if data:
        data[at % len(data)] = byte
    with contextlib.suppress(SerializationError):
        decode_message(bytes(data))


def test_limits_on_decode() -> None:
    """Oversized messages, keys, values, peer and address counts are refused by name."""
    with pytest.raises(MessageTooLarge):
        decode_frame(encode_uvarint(MAX_MESSAGE_SIZE + 1) + b"x")
    with pytest.raises(SerializationError, match="key"):
        decode_message(pb_bytes(2, b"k" * (MAX_KEY_SIZE + 1)))
    with pytest.raises(SerializationError, match="value"):
        decode_message(pb_bytes(3, pb_bytes(2, b"v" * (MAX_VALUE_SIZE + 1))))
    one = pb_bytes(8, pb_bytes(1, peer(1).multihash))
    with pytest.raises(SerializationError, match="peers"):
        decode_message(one * (MAX_PEERS_PER_MESSAGE + 1))
    many = pb_bytes(1, peer(1).multihash) + pb_bytes(2, _ADDRS[0].to_bytes()) * (
        MAX_ADDRS_PER_PEER + 1
    )
    with pytest.raises(SerializationError, match="addresses"):
        decode_message(pb_bytes(8, many))
    with pytest.raises(SerializationError, match="without an id"):
        decode_message(pb_bytes(8, b""))
    with pytest.raises(SerializationError, match="wire type"):
        decode_message(pb_bytes(1, b"x"))


def test_limits_on_encode() -> None:
    """We never send what we would refuse."""
    with pytest.raises(MessageTooLarge):
        encode_message(KadMessage(MessageType.PUT_VALUE, key=b"k" * (MAX_KEY_SIZE + 1)))
    with pytest.raises(MessageTooLarge):
        encode_message(
            KadMessage(MessageType.PUT_VALUE, record=Record(b"k", b"v" * (MAX_VALUE_SIZE + 1)))
        )
    peers = tuple(KadPeer(peer(i)) for i in range(MAX_PEERS_PER_MESSAGE + 1))
    with pytest.raises(MessageTooLarge):
        encode_message(KadMessage(MessageType.FIND_NODE, closer_peers=peers))


def test_bad_peer_ids_and_addresses_are_dropped() -> None:
    """A peer id that is no multihash is dropped; an address that does not parse too."""
    bad = pb_bytes(8, pb_bytes(1, b"\xff\xff\xff"))
    good = pb_bytes(8, pb_bytes(1, peer(3).multihash) + pb_bytes(2, b"\xff\xfe junk"))
    msg = decode_message(pb_varint(1, 4) + bad + good)
    assert msg.closer_peers == (KadPeer(peer(3)),)


def test_unknown_type_kept_as_integer() -> None:
    """A message type we do not know is kept for the caller to refuse."""
    assert decode_message(pb_varint(1, 42)).type == 42
