"""AutoNAT v2 and v1 codecs: known bytes, round trips (hypothesis), limits and garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.autonat.pb import (
    DIAL_DATA_CHUNK,
    MAX_ADDR_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_REQUEST_ADDRS,
    DialBack,
    DialBackResponse,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    V1DialResponse,
    V1Message,
    V1MessageType,
    V1PeerInfo,
    V1Status,
    decode_dial_back,
    decode_dial_back_response,
    decode_frame,
    decode_v1,
    decode_v2,
    encode_dial_back,
    encode_dial_back_response,
    encode_frame,
    encode_v1,
    encode_v2,
    parse_addr,
)
from switchy.stack.codec import encode_uvarint, pb_bytes, pb_varint
from switchy.stack.errors import MessageTooLarge, P2PError, SerializationError

ADDR = Multiaddr("/ip4/1.2.3.4/tcp/4001")

u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, (1 << 64) - 1)
raw_addrs = st.lists(st.binary(max_size=40), max_size=MAX_REQUEST_ADDRS).map(tuple)
v2_messages = st.one_of(
    st.builds(DialRequest, raw_addrs, u64),
    st.builds(
        DialResponse,
        st.sampled_from(list(ResponseStatus)),
        u32,
        st.sampled_from(list(DialStatus)),
    ),
    st.builds(DialDataRequest, u32, st.integers(0, (1 << 63) - 1)),
    st.builds(DialDataResponse, st.binary(max_size=DIAL_DATA_CHUNK)),
)


def test_dial_request_known_bytes() -> None:
    msg = DialRequest.of([ADDR], 0x0102030405060708)
    raw = ADDR.to_bytes()
    inner = b"\x0a" + bytes([len(raw)]) + raw + b"\x11" + bytes.fromhex("0807060504030201")
    assert encode_v2(msg) == b"\x0a" + bytes([len(inner)]) + inner
    assert decode_v2(encode_v2(msg)) == msg


def test_dial_response_known_bytes_and_defaults() -> None:
    # proto3: OK (200) status, index 1, dial status OK (200)
    msg = DialResponse(ResponseStatus.OK, 1, DialStatus.OK)
    assert encode_v2(msg) == b"\x12\x08\x08\xc8\x01\x10\x01\x18\xc8\x01"
    # all-default response: E_INTERNAL_ERROR, index 0, UNUSED: an empty sub-message
    assert encode_v2(DialResponse(ResponseStatus.E_INTERNAL_ERROR)) == b"\x12\x00"
    assert decode_v2(b"\x12\x00") == DialResponse(ResponseStatus.E_INTERNAL_ERROR, 0, 0)


def test_dial_back_known_bytes() -> None:
    assert encode_dial_back(DialBack(1)) == b"\x09" + (1).to_bytes(8, "little")
    assert decode_dial_back(encode_dial_back(DialBack(2**64 - 1))) == DialBack(2**64 - 1)
    assert encode_dial_back_response(DialBackResponse()) == b""
    assert decode_dial_back_response(b"") == DialBackResponse(0)


@given(v2_messages)
def test_v2_round_trip(
    msg: DialRequest | DialResponse | DialDataRequest | DialDataResponse,
) -> None:
    assert decode_v2(encode_v2(msg)) == msg


@given(u64)
def test_dial_back_round_trip(nonce: int) -> None:
    assert decode_dial_back(encode_dial_back(DialBack(nonce))) == DialBack(nonce)


@given(
    st.sampled_from([None, *V1MessageType]),
    st.one_of(
        st.none(), st.builds(V1PeerInfo, st.one_of(st.none(), st.binary(max_size=40)), raw_addrs)
    ),
    st.one_of(
        st.none(),
        st.builds(
            V1DialResponse,
            st.one_of(st.none(), st.sampled_from(list(V1Status))),
            st.one_of(st.none(), st.text(max_size=50)),
            st.one_of(st.none(), st.binary(max_size=40)),
        ),
    ),
)
def test_v1_round_trip(
    mtype: V1MessageType | None, peer: V1PeerInfo | None, resp: V1DialResponse | None
) -> None:
    msg = V1Message(mtype, peer, resp)
    assert decode_v1(encode_v1(msg)) == msg


def test_unknown_status_codes_are_kept_as_integers() -> None:
    data = pb_bytes(2, pb_varint(1, 7) + pb_varint(3, 9))
    msg = decode_v2(data)
    assert msg == DialResponse(7, 0, 9)
    assert isinstance(msg, DialResponse) and not isinstance(msg.status, ResponseStatus)


def test_frames_and_the_size_limit() -> None:
    body = encode_v2(DialDataResponse(bytes(100)))
    framed = encode_frame(body)
    assert decode_frame(framed) == (body, len(framed))
    assert decode_frame(framed[:-1]) is None
    assert decode_frame(b"") is None
    with pytest.raises(MessageTooLarge, match="8193 bytes announced"):
        decode_frame(encode_uvarint(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(MessageTooLarge):
        decode_v2(bytes(MAX_MESSAGE_SIZE + 1))


def test_address_count_and_length_limits() -> None:
    many = b"".join(pb_bytes(1, ADDR.to_bytes()) for _ in range(MAX_REQUEST_ADDRS + 1))
    with pytest.raises(MessageTooLarge, match="more than 50 addresses"):
        decode_v2(pb_bytes(1, many))
    with pytest.raises(MessageTooLarge, match="at most 50"):
        DialRequest((b"x",) * (MAX_REQUEST_ADDRS + 1), 1)
    long = pb_bytes(1, bytes(MAX_ADDR_SIZE + 1))
    with pytest.raises(MessageTooLarge, match="513 bytes"):
        decode_v2(pb_bytes(1, long))
    peers = b"".join(pb_bytes(2, b"a") for _ in range(MAX_REQUEST_ADDRS + 1))
    with pytest.raises(MessageTooLarge, match=r"PeerInfo\.addrs"):
        decode_v1(pb_varint(1, 0) + pb_bytes(2, pb_bytes(1, peers)))
    with pytest.raises(MessageTooLarge):
        DialDataResponse(bytes(DIAL_DATA_CHUNK + 1))


def test_malformed_v2_messages_name_the_problem() -> None:
    with pytest.raises(SerializationError, match="no known msg"):
        decode_v2(b"")
    with pytest.raises(SerializationError, match="more than one member"):
        decode_v2(pb_bytes(2, b"") + pb_bytes(3, b""))
    with pytest.raises(SerializationError, match=r"DialRequest\.nonce must be a fixed64"):
        decode_v2(pb_bytes(1, pb_bytes(2, bytes(8))))  # nonce sent length-delimited
    with pytest.raises(SerializationError, match=r"DialResponse\.status must be a varint"):
        decode_v2(pb_bytes(2, pb_bytes(1, b"x")))
    with pytest.raises(SerializationError, match="Message field 1 must be a length-delimited"):
        decode_v2(pb_varint(1, 5))
    with pytest.raises(SerializationError, match="out of range"):
        decode_v2(pb_bytes(3, pb_varint(1, 1 << 40)))


def test_malformed_v1_messages_name_the_problem() -> None:
    with pytest.raises(SerializationError, match="statusText is not UTF-8"):
        decode_v1(pb_bytes(3, pb_bytes(2, b"\xff")))
    with pytest.raises(SerializationError, match=r"Message\.type must be a varint"):
        decode_v1(pb_bytes(1, b""))


@given(st.binary(max_size=300))
def test_garbage_never_escapes_the_error_hierarchy(data: bytes) -> None:
    for decoder in (decode_v2, decode_v1, decode_dial_back, decode_dial_back_response):
        with contextlib.suppress(P2PError):
            decoder(data)
    with contextlib.suppress(P2PError):
        decode_frame(data)


def test_parse_addr_keeps_unparseable_addresses_out() -> None:
    assert parse_addr(ADDR.to_bytes()) == ADDR
    assert parse_addr(b"\xff\xff") is None
    assert parse_addr(bytes(MAX_ADDR_SIZE + 1)) is None
