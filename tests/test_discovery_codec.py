"""The /switchy/discovery/1.0.0 wire format: round trips, chunking, malformed input, limits."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.discovery.claims import (
    NAME_CLAIM_DOMAIN,
    NAME_CLAIM_PAYLOAD_TYPE,
    open_name_claim,
    seal_name_claim,
)
from switchy.protocols.discovery.codec import (
    MAX_CLAIM_SIZE,
    MAX_FRAME_SIZE,
    MAX_NAME_LENGTH,
    MAX_PIPELINED_REQUESTS,
    MAX_TTL,
    ClientCore,
    Lookup,
    Message,
    Refresh,
    Register,
    Response,
    ServerCore,
    Status,
    Unregister,
    decode_message,
    encode_frame,
    encode_message,
    validate_name,
)
from switchy.stack.codec import encode_uvarint
from switchy.stack.envelope import PeerRecord, seal_envelope, seal_peer_record
from switchy.stack.errors import AuthenticationFailed, MessageTooLarge, ProtocolError, SerializationError
from switchy.stack.identity import KeyPair

KEY = KeyPair.from_seed(b"k" * 32)
OTHER = KeyPair.from_seed(b"o" * 32)
ADDR = (Multiaddr("/ip4/127.0.0.1/tcp/4001"),)

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Cf", "Co", "Cn")),
    min_size=1,
    max_size=16,
).filter(lambda n: len(n.encode()) <= MAX_NAME_LENGTH and n.isprintable())
ttls = st.integers(1, MAX_TTL)
claims = st.binary(min_size=1, max_size=300)
requests = st.one_of(
    st.builds(Register, names, ttls, claims),
    st.builds(Refresh, names, ttls),
    st.builds(Unregister, names),
    st.builds(Lookup, names),
)
responses = st.builds(
    Response,
    st.sampled_from(Status),
    st.text(max_size=40),
    st.integers(0, MAX_TTL),
    st.one_of(st.just(b""), claims),
)


@given(st.one_of(requests, responses))
def test_every_message_round_trips(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@given(st.lists(requests, min_size=1, max_size=MAX_PIPELINED_REQUESTS), st.data())
def test_server_core_reassembles_any_chunking(reqs: list[Register], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(r) for r in reqs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    server = ServerCore()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += server.receive_data(wire[a:b])
    assert got == reqs
    assert server.pending == len(reqs)
    for r in reqs:
        server.send_response(Response(Status.OK, r.name))
    client = ClientCore()
    for r in reqs:
        client.send_request(r)
    assert client.data_to_send() == wire
    answers = client.receive_data(server.data_to_send())
    assert [a.message for a in answers] == [r.name for r in reqs]
    assert client.pending == 0 and server.pending == 0


@given(st.binary(max_size=200))
def test_garbage_is_a_protocol_error_never_a_crash(data: bytes) -> None:
    server = ServerCore()
    try:
        server.receive_data(data)
    except ProtocolError:
        assert server.failed
    with contextlib.suppress(ProtocolError):
        decode_message(data)


def _body(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ([1, 2], "is a map"),
        ({"type": "HELLO", "name": "a"}, "unknown discovery message type 'HELLO'"),
        ({"type": "LOOKUP"}, "a name is a string"),
        ({"type": "LOOKUP", "name": ""}, "1 to 64 UTF-8 bytes, got 0"),
        ({"type": "LOOKUP", "name": "x" * 65}, "1 to 64 UTF-8 bytes, got 65"),
        ({"type": "LOOKUP", "name": "living room"}, "whitespace"),
        ({"type": "LOOKUP", "name": "a\x00b"}, "control"),
        ({"type": "REFRESH", "name": "a"}, "lacks a ttl"),
        ({"type": "REFRESH", "name": "a", "ttl": 0}, "not within 1..86400"),
        ({"type": "REFRESH", "name": "a", "ttl": MAX_TTL + 1}, "not within"),
        ({"type": "REFRESH", "name": "a", "ttl": "5"}, "ttl is an integer"),
        ({"type": "REFRESH", "name": "a", "ttl": True}, "ttl is an integer"),
        ({"type": "REGISTER", "name": "a", "ttl": 5}, "lacks a claim"),
        ({"type": "REGISTER", "name": "a", "ttl": 5, "claim": "text"}, "claim is binary"),
        ({"type": "REGISTER", "name": "a", "ttl": 5, "claim": b""}, "claim is empty"),
        ({"type": "RESPONSE"}, "integer status"),
        ({"type": "RESPONSE", "status": 99}, "unknown status code 99"),
        ({"type": "RESPONSE", "status": 0, "message": 5}, "message is not a string"),
        ({1: 2}, "not one msgpack value"),  # strict_map_key: only str/bytes keys
    ],
)
def test_malformed_messages_name_the_problem(obj: object, error: str) -> None:
    with pytest.raises(SerializationError, match=error):
        decode_message(_body(obj))


def test_framing_limits() -> None:
    with pytest.raises(SerializationError, match="not one msgpack value"):
        decode_message(_body({"type": "LOOKUP", "name": "a"}) + b"\x00")
    big_claim = {"type": "REGISTER", "name": "a", "ttl": 5, "claim": b"x" * (MAX_CLAIM_SIZE + 1)}
    with pytest.raises(MessageTooLarge, match="claim of 4097 bytes"):
        decode_message(_body(big_claim))
    with pytest.raises(MessageTooLarge):
        encode_message(Register("a", 5, b"x" * (MAX_CLAIM_SIZE + 1)))
    # An announced length over the limit fails before any body byte arrives.
    server = ServerCore()
    with pytest.raises(MessageTooLarge, match="8193 bytes announced"):
        server.receive_data(encode_uvarint(MAX_FRAME_SIZE + 1))
    with pytest.raises(ProtocolError, match="already failed"):
        server.receive_data(b"")
    # A length prefix that never ends is cut off at three bytes.
    with pytest.raises(MessageTooLarge):
        ServerCore().receive_data(b"\xff\xff\xff")
    assert ServerCore().receive_data(b"\xff\xff") == []
    with pytest.raises(SerializationError, match="minimally"):
        ServerCore().receive_data(b"\x80\x00")


def test_pipelining_and_direction_rules() -> None:
    server = ServerCore()
    lookups = b"".join(encode_frame(Lookup(f"n{i}")) for i in range(MAX_PIPELINED_REQUESTS + 1))
    with pytest.raises(MessageTooLarge, match="without reading answers"):
        server.receive_data(lookups)
    server.fail("too many")
    assert decode_message(server.data_to_send()[1:]) == Response(Status.BAD_REQUEST, "too many")
    with pytest.raises(SerializationError, match="client sent a RESPONSE"):
        ServerCore().receive_data(encode_frame(Response(Status.OK)))
    with pytest.raises(ProtocolError, match="no request is waiting"):
        ServerCore().send_response(Response(Status.OK))
    client = ClientCore()
    with pytest.raises(ProtocolError, match="response to no request"):
        client.receive_data(encode_frame(Response(Status.OK)))
    with pytest.raises(SerializationError, match="sent a LOOKUP request"):
        ClientCore().receive_data(encode_frame(Lookup("x")))
    for i in range(MAX_PIPELINED_REQUESTS):
        client.send_request(Lookup(f"n{i}"))
    with pytest.raises(ProtocolError, match="already unanswered"):
        client.send_request(Lookup("one-more"))


def test_validate_name() -> None:
    assert validate_name("living-room") == "living-room"
    assert validate_name("wohnzimmer-ü") == "wohnzimmer-ü"
    assert validate_name("x" * MAX_NAME_LENGTH)
    with pytest.raises(SerializationError):
        validate_name("ü" * 33)  # 66 bytes
    with pytest.raises(SerializationError):
        validate_name(b"bytes")


def test_name_claims_verify_and_bind_name_peer_and_addresses() -> None:
    claim = seal_name_claim(KEY, "living-room", ADDR, 7)
    opened = open_name_claim(claim, "living-room")
    assert (opened.name, opened.peer_id, opened.addrs, opened.seq) == (
        "living-room",
        KEY.peer_id,
        ADDR,
        7,
    )
    with pytest.raises(AuthenticationFailed, match="asked for 'kitchen'"):
        open_name_claim(claim, "kitchen")
    # Tampering with the inner address breaks a signature.
    old, new = ADDR[0].to_bytes(), Multiaddr("/ip4/127.0.0.9/tcp/4001").to_bytes()
    with pytest.raises(AuthenticationFailed):
        open_name_claim(claim.replace(old, new))
    # A claim signed by one key around another peer's (valid) record is refused.
    other_record = seal_peer_record(OTHER, PeerRecord(OTHER.peer_id, 1, ADDR))
    payload = msgpack.packb({"name": "living-room", "record": other_record}, use_bin_type=True)
    mixed = seal_envelope(KEY, NAME_CLAIM_DOMAIN, NAME_CLAIM_PAYLOAD_TYPE, payload)
    with pytest.raises(AuthenticationFailed, match="carries the record of"):
        open_name_claim(mixed)
    # Wrong payloads inside a valid envelope.
    for bad, error in [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1]), "not a map"),
        (msgpack.packb({"name": "a"}), "no binary record"),
    ]:
        env = seal_envelope(KEY, NAME_CLAIM_DOMAIN, NAME_CLAIM_PAYLOAD_TYPE, bad)
        with pytest.raises(SerializationError, match=error):
            open_name_claim(env)
    with pytest.raises(MessageTooLarge):
        long = tuple(Multiaddr(f"/dns4/{'h' * 60}.example/tcp/{p}") for p in range(64))
        seal_name_claim(KEY, "a", long, 1)
    with pytest.raises(MessageTooLarge):
        open_name_claim(b"x" * (MAX_CLAIM_SIZE + 1))
    with pytest.raises(SerializationError):
        seal_name_claim(KEY, "bad name", ADDR, 1)
