"""Signed envelopes (RFC 0002) and peer records (RFC 0003): vectors, properties, tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.stack.codec import encode_uvarint, pb_bytes, pb_varint
from switchy.stack.envelope import (
    MAX_ENVELOPE_SIZE,
    MAX_RECORD_ADDRS,
    MAX_SEQ,
    PEER_RECORD_DOMAIN,
    PEER_RECORD_PAYLOAD_TYPE,
    PeerRecord,
    open_envelope,
    open_peer_record,
    seal_envelope,
    seal_peer_record,
)
from switchy.stack.errors import (
    AuthenticationFailed,
    InvalidPeerId,
    MessageTooLarge,
    SerializationError,
)
from switchy.stack.identity import KeyPair, PeerId

VECTOR = json.loads(
    (Path(__file__).parent / "vectors" / "signed_peer_record_pylibp2p.json").read_text()
)
KEY_A = KeyPair.from_seed(b"a" * 32)
KEY_B = KeyPair.from_seed(b"b" * 32)
ADDRS = (Multiaddr("/ip4/127.0.0.1/tcp/4001"), Multiaddr("/ip6/::1/udp/9/quic-v1"))


def test_constants_match_go_and_py_libp2p() -> None:
    assert PEER_RECORD_DOMAIN == "libp2p-peer-record"
    assert PEER_RECORD_PAYLOAD_TYPE == b"\x03\x01"


def test_py_libp2p_vector_opens_and_our_seal_is_byte_identical() -> None:
    # Ed25519 signatures are deterministic: the same key and payload give the same bytes.
    key = KeyPair.from_seed(bytes.fromhex(VECTOR["ed25519_seed"]))
    assert str(key.peer_id) == VECTOR["peer_id"]
    record = open_peer_record(bytes.fromhex(VECTOR["envelope"]))
    assert str(record.peer_id) == VECTOR["peer_id"]
    assert record.seq == VECTOR["seq"]
    assert [str(a) for a in record.addrs] == VECTOR["addrs"]
    assert record.encode().hex() == VECTOR["payload"]
    assert seal_peer_record(key, record).hex() == VECTOR["envelope"]


def test_envelope_wire_layout_and_signed_buffer() -> None:
    sealed = seal_envelope(KEY_A, "my-domain", b"\x12\x34", b"hello")
    signed = (
        encode_uvarint(9) + b"my-domain" + encode_uvarint(2) + b"\x12\x34" + encode_uvarint(5)
    ) + b"hello"
    expected = (
        pb_bytes(1, KEY_A.public_key.to_protobuf())
        + pb_bytes(2, b"\x12\x34")
        + pb_bytes(3, b"hello")
        + pb_bytes(5, KEY_A.sign(signed))
    )
    assert sealed == expected
    env = open_envelope(sealed, "my-domain", b"\x12\x34")
    assert env.public_key == KEY_A.public_key
    assert env.peer_id == KEY_A.peer_id
    assert (env.payload_type, env.payload, env.raw) == (b"\x12\x34", b"hello", sealed)


@given(
    domain=st.text(max_size=40),
    payload_type=st.binary(max_size=16),
    payload=st.binary(max_size=2000),
)
def test_envelope_round_trip(domain: str, payload_type: bytes, payload: bytes) -> None:
    sealed = seal_envelope(KEY_A, domain, payload_type, payload)
    env = open_envelope(sealed, domain, payload_type)
    assert (env.payload_type, env.payload, env.peer_id) == (payload_type, payload, KEY_A.peer_id)
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        open_envelope(sealed, domain + "x")


@given(st.data())
def test_any_flipped_bit_is_rejected(data: st.DataObject) -> None:
    sealed = seal_envelope(KEY_A, "d", b"\x01", b"payload bytes")
    i = data.draw(st.integers(0, len(sealed) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(sealed)
    tampered[i] ^= 1 << bit
    # Either the structure breaks, or the key/signature/payload no longer match.
    with pytest.raises((AuthenticationFailed, SerializationError)):
        env = open_envelope(bytes(tampered), "d", b"\x01")
        # A flip inside the public key may yield another valid key: still never KEY_A's payload.
        assert env.peer_id != KEY_A.peer_id


@given(st.binary(max_size=300))
def test_garbage_raises_only_the_documented_errors(data: bytes) -> None:
    with pytest.raises((SerializationError, AuthenticationFailed)):
        open_envelope(data, "d")
    with pytest.raises((SerializationError, AuthenticationFailed)):
        open_peer_record(data)


def test_structural_errors_name_the_problem() -> None:
    key = pb_bytes(1, KEY_A.public_key.to_protobuf())
    sig = pb_bytes(5, b"\x00" * 64)
    with pytest.raises(SerializationError, match="no public key"):
        open_envelope(sig, "d")
    with pytest.raises(SerializationError, match="no signature"):
        open_envelope(key, "d")
    with pytest.raises(SerializationError, match="more than once"):
        open_envelope(key + pb_bytes(3, b"x") + pb_bytes(3, b"y") + sig, "d")
    with pytest.raises(SerializationError, match="not length-delimited"):
        open_envelope(key + pb_varint(2, 7) + sig, "d")
    with pytest.raises(SerializationError, match="public key is unusable"):
        open_envelope(pb_bytes(1, b"\x08\x01\x12\x03abc") + sig, "d")
    with pytest.raises(SerializationError, match="exceeds"):
        open_envelope(b"\x00" * (MAX_ENVELOPE_SIZE + 1), "d")
    with pytest.raises(MessageTooLarge):
        seal_envelope(KEY_A, "d", b"", b"\x00" * MAX_ENVELOPE_SIZE)
    sealed = seal_envelope(KEY_A, "d", b"\x01", b"x")
    with pytest.raises(SerializationError, match="payload type is 01, expected 0301"):
        open_envelope(sealed, "d", PEER_RECORD_PAYLOAD_TYPE)
    # Unknown fields are tolerated (forward compatibility): they are not signed.
    assert open_envelope(sealed + pb_varint(9, 1), "d").payload == b"x"


def test_signature_of_another_key_is_rejected() -> None:
    sealed = seal_envelope(KEY_A, "d", b"", b"x")
    forged = sealed.replace(KEY_A.public_key.to_protobuf(), KEY_B.public_key.to_protobuf())
    with pytest.raises(AuthenticationFailed, match=str(KEY_B.peer_id)):
        open_envelope(forged, "d")


records = st.builds(
    PeerRecord,
    peer_id=st.just(KEY_A.peer_id),
    seq=st.integers(0, MAX_SEQ),
    addrs=st.lists(
        st.builds(
            lambda ip, port: Multiaddr(f"/ip4/{ip}/tcp/{port}"),
            st.ip_addresses(v=4),
            st.integers(0, 65535),
        ),
        max_size=8,
    ).map(tuple),
)


@given(records)
def test_peer_record_round_trip(record: PeerRecord) -> None:
    assert PeerRecord.decode(record.encode()) == record
    assert open_peer_record(seal_peer_record(KEY_A, record)) == record


def test_record_signed_by_another_key_is_rejected() -> None:
    lie = PeerRecord(KEY_B.peer_id, 1, ADDRS)
    with pytest.raises(InvalidPeerId):
        seal_peer_record(KEY_A, lie)
    sealed = seal_envelope(KEY_A, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, lie.encode())
    with pytest.raises(AuthenticationFailed, match="signed by another peer"):
        open_peer_record(sealed)


def test_record_in_another_domain_or_type_is_rejected() -> None:
    rec = PeerRecord(KEY_A.peer_id, 5, ADDRS).encode()
    with pytest.raises(AuthenticationFailed):
        open_peer_record(seal_envelope(KEY_A, "libp2p-relay-rsvp", PEER_RECORD_PAYLOAD_TYPE, rec))
    with pytest.raises(SerializationError, match="payload type"):
        open_peer_record(seal_envelope(KEY_A, PEER_RECORD_DOMAIN, b"\x03\x02", rec))


def test_tampered_record_addresses_are_rejected() -> None:
    sealed = seal_peer_record(KEY_A, PeerRecord(KEY_A.peer_id, 5, ADDRS))
    old = Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes()
    new = Multiaddr("/ip4/127.0.0.2/tcp/4001").to_bytes()
    assert old in sealed
    with pytest.raises(AuthenticationFailed):
        open_peer_record(sealed.replace(old, new))


def test_peer_record_limits_and_malformed_payloads() -> None:
    many = tuple(Multiaddr(f"/ip4/10.0.0.1/tcp/{p}") for p in range(MAX_RECORD_ADDRS + 1))
    with pytest.raises(MessageTooLarge):
        PeerRecord(KEY_A.peer_id, 1, many)
    encoded = pb_bytes(1, KEY_A.peer_id.to_bytes()) + b"".join(
        pb_bytes(3, pb_bytes(1, a.to_bytes())) for a in many
    )
    with pytest.raises(SerializationError, match="more than"):
        PeerRecord.decode(encoded)
    with pytest.raises(SerializationError, match="no peer_id"):
        PeerRecord.decode(pb_varint(2, 1))
    with pytest.raises(SerializationError, match="peer_id is invalid"):
        PeerRecord.decode(pb_bytes(1, b"\x99\x01"))
    with pytest.raises(SerializationError, match="repeated"):
        PeerRecord.decode(pb_bytes(1, KEY_A.peer_id.to_bytes()) * 2)
    with pytest.raises(SerializationError, match="no multiaddr"):
        PeerRecord.decode(pb_bytes(1, KEY_A.peer_id.to_bytes()) + pb_bytes(3, b""))
    # An address we cannot parse (unknown protocol code) is skipped, the rest is kept.
    unknown = pb_bytes(3, pb_bytes(1, b"\xff\xff\x03\x01"))
    rec = PeerRecord.decode(
        pb_bytes(1, KEY_A.peer_id.to_bytes())
        + unknown
        + pb_bytes(3, pb_bytes(1, ADDRS[0].to_bytes()))
    )
    assert rec.addrs == (ADDRS[0],) and rec.seq == 0
    with pytest.raises(SerializationError, match="not within"):
        PeerRecord(KEY_A.peer_id, -1)
    with pytest.raises(SerializationError, match="not within"):
        PeerRecord(KEY_A.peer_id, MAX_SEQ + 1)
    assert PeerId.from_bytes(rec.peer_id.to_bytes()) == KEY_A.peer_id
    huge = pb_bytes(1, KEY_A.peer_id.to_bytes()) + pb_bytes(3, pb_bytes(1, b"\x00" * 2000))
    with pytest.raises(SerializationError, match="AddressInfo of"):
        PeerRecord.decode(huge)
