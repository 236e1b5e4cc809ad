"""Circuit relay v2 message codecs: known encodings, round trips, hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.stack.codec import encode_uvarint, pb_bytes, pb_varint
from switchy.stack.errors import MessageTooLarge, SerializationError
from switchy.stack.identity import KeyPair, PeerId
from switchy.transports.relay.pb import (
    MAX_ADDRS,
    MAX_MESSAGE_SIZE,
    MAX_UINT32,
    HopMessage,
    HopType,
    Limit,
    Peer,
    Reservation,
    Status,
    StopMessage,
    StopType,
    Voucher,
    decode_frame,
    decode_hop,
    decode_stop,
    decode_voucher,
    encode_frame,
    encode_hop,
    encode_stop,
    encode_voucher,
    status_name,
)

PEER_A = KeyPair.from_seed(bytes(32)).peer_id
PEER_B = KeyPair.from_seed(bytes([1]) * 32).peer_id

peer_ids = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda d: PeerId(b"\x12\x20" + d)),
    st.binary(min_size=32, max_size=32).map(lambda s: KeyPair.from_seed(s).peer_id),
)
addrs = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(1, 65535)).map(
    lambda t: Multiaddr(f"/ip4/10.{t[0]}.{t[1]}.1/tcp/{t[2]}")
)
peers = st.builds(Peer, peer_ids, st.lists(addrs, max_size=4).map(tuple))
limits = st.builds(Limit, st.integers(0, MAX_UINT32), st.integers(0, (1 << 63) - 1))
statuses = st.one_of(st.sampled_from(list(Status)), st.integers(1, 1000))
reservations = st.builds(
    Reservation,
    st.integers(0, (1 << 63) - 1),
    st.lists(addrs, max_size=4).map(tuple),
    st.none() | st.binary(max_size=300),
)
hops = st.builds(
    HopMessage,
    st.sampled_from(list(HopType)),
    st.none() | peers,
    st.none() | reservations,
    st.none() | limits,
    st.none() | statuses,
)
stops = st.builds(
    StopMessage,
    st.sampled_from(list(StopType)),
    st.none() | peers,
    st.none() | limits,
    st.none() | statuses,
)


def test_known_encodings_follow_the_spec_field_numbers() -> None:
    # HopMessage{type=RESERVE}: field 1 varint 0 -- the type is always written.
    assert encode_hop(HopMessage(HopType.RESERVE)) == b"\x08\x00"
    pid = PEER_A.to_bytes()
    connect = HopMessage(HopType.CONNECT, peer=Peer(PEER_A))
    assert (
        encode_hop(connect)
        == b"\x08\x01" + b"\x12" + bytes([len(pid) + 2]) + b"\x0a" + bytes([len(pid)]) + pid
    )
    # STATUS OK (100) with Limit{duration=120, data=131072} in field 4, status field 5.
    ok = HopMessage(HopType.STATUS, limit=Limit(120, 131072), status=Status.OK)
    assert encode_hop(ok) == b"\x08\x02" + b"\x22\x06\x08\x78\x10\x80\x80\x08" + b"\x28\x64"
    # StopMessage: limit is field 3, status field 4.
    stop = StopMessage(StopType.STATUS, status=Status.CONNECTION_FAILED)
    assert encode_stop(stop) == b"\x08\x01" + b"\x20\xcb\x01"
    # Reservation: expire field 1, addrs 2, voucher 3.
    r = Reservation(7, (Multiaddr("/ip4/1.2.3.4/tcp/1"),), b"v")
    enc = encode_hop(HopMessage(HopType.STATUS, reservation=r, status=Status.OK))
    inner = b"\x08\x07" + pb_bytes(2, Multiaddr("/ip4/1.2.3.4/tcp/1").to_bytes()) + b"\x1a\x01v"
    assert enc == b"\x08\x02" + pb_bytes(3, inner) + b"\x28\x64"
    assert decode_hop(enc) == HopMessage(HopType.STATUS, reservation=r, status=Status.OK)


def test_voucher_payload_is_canonical() -> None:
    v = Voucher(PEER_A, PEER_B, 1_700_000_000)
    enc = encode_voucher(v)
    assert enc == pb_bytes(1, PEER_A.to_bytes()) + pb_bytes(2, PEER_B.to_bytes()) + pb_varint(
        3, 1_700_000_000
    )
    assert decode_voucher(enc) == v
    with pytest.raises(SerializationError, match="missing peer, expiration"):
        decode_voucher(pb_bytes(1, PEER_A.to_bytes()))


@given(hops)
def test_hop_round_trip(msg: HopMessage) -> None:
    enc = encode_hop(msg)
    assert len(enc) <= MAX_MESSAGE_SIZE
    assert decode_hop(enc) == msg
    assert encode_hop(decode_hop(enc)) == enc


@given(stops)
def test_stop_round_trip(msg: StopMessage) -> None:
    enc = encode_stop(msg)
    assert decode_stop(enc) == msg
    assert encode_stop(decode_stop(enc)) == enc


@given(peer_ids, peer_ids, st.integers(0, (1 << 63) - 1))
def test_voucher_round_trip(relay: PeerId, peer: PeerId, exp: int) -> None:
    v = Voucher(relay, peer, exp)
    assert decode_voucher(encode_voucher(v)) == v


@given(st.binary(max_size=600))
def test_decoders_never_crash_on_garbage(data: bytes) -> None:
    for decode in (decode_hop, decode_stop, decode_voucher):
        with contextlib.suppress(SerializationError, MessageTooLarge):
            decode(data)


@given(hops, st.data())
def test_truncated_messages_fail_cleanly(msg: HopMessage, data: st.DataObject) -> None:
    enc = encode_hop(msg)
    cut = data.draw(st.integers(0, len(enc) - 1))
    with contextlib.suppress(SerializationError, MessageTooLarge):
        decode_hop(enc[:cut])  # may be a valid shorter message; must not crash


@given(hops, st.data())
def test_frames_split_anywhere(msg: HopMessage, data: st.DataObject) -> None:
    frame = encode_frame(encode_hop(msg))
    extra = b"\x99rest"
    buf = frame + extra
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert decode_frame(buf[:cut]) is None
    got = decode_frame(buf)
    assert got is not None
    assert got[1] == len(frame) and decode_hop(got[0]) == msg


def test_frame_limits() -> None:
    with pytest.raises(MessageTooLarge, match="4097 bytes announced"):
        decode_frame(encode_uvarint(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(MessageTooLarge):
        encode_frame(bytes(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(SerializationError, match="longer than"):
        decode_frame(b"\xff" * 10)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"", SerializationError, "type is missing"),
        (b"\x08\x07", SerializationError, "unknown HopMessage.type 7"),
        (b"\x0a\x00", SerializationError, "HopMessage.type must be a varint"),
        (b"\x08\x01\x12\x00", SerializationError, "Peer.id is missing"),
        (b"\x08\x01\x12\x02\x0a\x00", SerializationError, "Peer.id is not a valid peer id"),
        (b"\x08\x01\x12\x03\x0a\x05\x00", SerializationError, "claims 5 bytes"),
        (b"\x08\x02\x1a\x00", SerializationError, "Reservation.expire is missing"),
        (b"\x08\x02\x22\x02\x0a\x00", SerializationError, "Limit.duration must be a varint"),
        (b"\x08\x02\x28", SerializationError, "truncated varint"),
        (b"\x08\x02" + pb_bytes(4, pb_varint(1, 1 << 32)), SerializationError, "not a uint32"),
        (b"\x08\x02\x2a\x00", SerializationError, "status must be a varint"),
        (bytes(MAX_MESSAGE_SIZE + 1), MessageTooLarge, "exceeds 4096"),
    ],
)
def test_malformed_hop_messages_name_the_problem(
    data: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        decode_hop(data)


def test_malformed_stop_messages() -> None:
    with pytest.raises(SerializationError, match=r"unknown StopMessage\.type 2"):
        decode_stop(b"\x08\x02")
    with pytest.raises(SerializationError, match=r"StopMessage\.type is missing"):
        decode_stop(b"\x20\x64")


def test_address_count_and_size_limits() -> None:
    one = pb_bytes(2, Multiaddr("/ip4/1.2.3.4/tcp/1").to_bytes())
    peer = pb_bytes(1, PEER_A.to_bytes()) + one * (MAX_ADDRS + 1)
    with pytest.raises(MessageTooLarge, match="more than 32 addresses"):
        decode_hop(b"\x08\x01" + pb_bytes(2, peer))
    big = pb_bytes(1, PEER_A.to_bytes()) + pb_bytes(2, bytes(600))
    with pytest.raises(MessageTooLarge, match="600 bytes exceeds"):
        decode_hop(b"\x08\x01" + pb_bytes(2, big))
    with pytest.raises(MessageTooLarge):
        Peer(PEER_A, (Multiaddr("/ip4/1.2.3.4/tcp/1"),) * (MAX_ADDRS + 1))
    with pytest.raises(MessageTooLarge, match="HopMessage of"):
        encode_hop(HopMessage(HopType.STATUS, reservation=Reservation(1, (), bytes(5000))))


def test_unparseable_addresses_are_skipped_unknown_fields_ignored() -> None:
    peer = pb_bytes(1, PEER_A.to_bytes()) + pb_bytes(2, b"\xff\xff\xff") + pb_varint(9, 1)
    msg = decode_hop(b"\x08\x01" + pb_bytes(2, peer) + pb_bytes(15, b"future"))
    assert msg == HopMessage(HopType.CONNECT, peer=Peer(PEER_A))


def test_unknown_status_codes_are_kept() -> None:
    msg = decode_hop(b"\x08\x02\x28" + encode_uvarint(299))
    assert msg.status == 299 and not isinstance(msg.status, Status)
    assert status_name(299) == "unknown status 299"
    assert status_name(Status.NO_RESERVATION) == "NO_RESERVATION (204)"
    assert status_name(None) == "no status"


def test_limit_and_reservation_ranges() -> None:
    with pytest.raises(SerializationError, match="not a uint32"):
        Limit(duration=MAX_UINT32 + 1)
    with pytest.raises(SerializationError):
        Limit(data=-1)
    with pytest.raises(SerializationError):
        Reservation(expire=-1)
