"""Noise: the cacophony vector, the libp2p handshake and payload, transport framing, the adapter."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from switchy.stack.codec import pb_bytes, pb_fields, pb_varint
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    InvalidConfiguration,
    P2PError,
    P2PTimeout,
    ProtocolError,
    SerializationError,
    StreamReset,
)
from switchy.stack.identity import (
    KEY_TYPE_ECDSA,
    KEY_TYPE_RSA,
    KEY_TYPE_SECP256K1,
    KeyPair,
    PeerId,
    PublicKey,
)
from switchy.stack.pipe import MemoryConnection, memory_pipe
from switchy.stack.security.noise import (
    MAX_FRAME,
    MAX_PLAINTEXT,
    MAX_WRITE_BATCH,
    SIGNATURE_PREFIX,
    CipherState,
    HandshakeComplete,
    HandshakePayload,
    HandshakeState,
    NoiseConnection,
    NoiseCredentials,
    NoiseHandshake,
    NoiseSecurity,
    NoiseTransport,
    decode_payload,
    encode_payload,
    x25519_public_key,
)
from switchy.stack.security.noise_core import MAX_NONCE, MAX_STREAM_MUXERS, SymmetricState

# The Noise_XX_25519_ChaChaPoly_SHA256 entry of haskell-cryptography/cacophony's
# vectors/cacophony.txt (see the "source" key of the file).
VECTOR = json.loads(
    (Path(__file__).parent / "vectors" / "noise_xx_25519_chachapoly_sha256.json").read_text()
)["vector"]
h = bytes.fromhex


@functools.cache
def _kp(n: int) -> KeyPair:
    return KeyPair.from_seed(bytes([n]) * 32)


@functools.cache
def _creds(n: int) -> NoiseCredentials:
    return NoiseCredentials.create(_kp(n), static=bytes([n + 100]) * 32)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


# --- Noise framework core ---------------------------------------------------------------


def test_cacophony_vector() -> None:
    v = VECTOR
    init = HandshakeState(
        True,
        prologue=h(v["init_prologue"]),
        static=h(v["init_static"]),
        ephemeral=h(v["init_ephemeral"]),
    )
    resp = HandshakeState(
        False,
        prologue=h(v["resp_prologue"]),
        static=h(v["resp_static"]),
        ephemeral=h(v["resp_ephemeral"]),
    )
    msgs = v["messages"]
    for i in range(3):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        ct = writer.write_message(h(msgs[i]["payload"]))
        assert ct.hex() == msgs[i]["ciphertext"]
        assert reader.read_message(ct) == h(msgs[i]["payload"])
    assert init.finished and resp.finished
    assert init.handshake_hash.hex() == v["handshake_hash"]
    assert resp.handshake_hash.hex() == v["handshake_hash"]
    assert init.remote_static == x25519_public_key(h(v["resp_static"]))
    assert resp.remote_static == x25519_public_key(h(v["init_static"]))
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    # Transport messages continue the alternation: responder first (message 3).
    for i in range(3, len(msgs)):
        send, recv = (r_send, i_recv) if i % 2 == 1 else (i_send, r_recv)
        ct = send.encrypt_with_ad(None, h(msgs[i]["payload"]))
        assert ct.hex() == msgs[i]["ciphertext"]
        assert recv.decrypt_with_ad(None, ct) == h(msgs[i]["payload"])
    assert (r_send.nonce, i_send.nonce) == (2, 1)


def test_symmetric_state_hashes_long_protocol_names() -> None:
    name = b"Noise_XXfallback+psk0_25519_AESGCM_SHA256"
    assert len(name) > 32
    assert SymmetricState(name).h == hashlib.sha256(name).digest()
    assert SymmetricState().h == b"Noise_XX_25519_ChaChaPoly_SHA256"


def test_nonce_exhaustion() -> None:
    key = bytes(range(32))
    sender = CipherState(key, nonce=MAX_NONCE - 1)
    receiver = CipherState(key, nonce=MAX_NONCE - 1)
    ct = sender.encrypt_with_ad(None, b"last one")
    assert receiver.decrypt_with_ad(None, ct) == b"last one"
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        sender.encrypt_with_ad(None, b"one too many")
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        receiver.decrypt_with_ad(None, ct)
    transport = NoiseTransport(CipherState(key, nonce=MAX_NONCE), CipherState(key))
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        transport.encrypt(b"x")


def test_nonce_is_little_endian_counter_after_four_zero_bytes() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    key = bytes(32)
    n = 0x0102030405060708
    ct = CipherState(key, nonce=n).encrypt_with_ad(b"ad", b"data")
    nonce = b"\x00" * 4 + bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert ct == ChaCha20Poly1305(key).encrypt(nonce, b"data", b"ad")


def test_handshake_state_refuses_out_of_turn_and_after_failure() -> None:
    init = HandshakeState(True)
    resp = HandshakeState(False)
    with pytest.raises(ProtocolError, match="not our turn"):
        resp.write_message(b"")
    with pytest.raises(ProtocolError, match="not our turn"):
        init.read_message(b"\x00" * 32)
    m1 = init.write_message(b"")
    with pytest.raises(ProtocolError, match="not finished"):
        init.split()
    resp.read_message(m1)
    m2 = bytearray(resp.write_message(b"payload"))
    m2[40] ^= 1  # inside the encrypted static key
    with pytest.raises(AuthenticationFailed, match="tampered"):
        init.read_message(bytes(m2))
    with pytest.raises(ProtocolError, match="already failed"):
        init.read_message(bytes(m2))
    short_m2 = HandshakeState(True)
    short_m2.write_message(b"")
    with pytest.raises(ProtocolError, match="at least 96"):
        short_m2.read_message(b"\x01" * 95)
    short = HandshakeState(False)
    with pytest.raises(ProtocolError, match="at least 32"):
        short.read_message(b"\x01" * 31)


def test_low_order_remote_ephemeral_is_rejected() -> None:
    resp = NoiseHandshake(False, _kp(1))
    with pytest.raises(AuthenticationFailed, match="low-order"):
        resp.receive_data(b"\x00\x20" + bytes(32))  # the all-zero point


# --- the libp2p payload -----------------------------------------------------------------


def test_payload_is_the_expected_protobuf() -> None:
    key = _kp(7)
    static_pub = x25519_public_key(b"\x05" * 32)
    payload = encode_payload(key, static_pub)
    # Hand-parsed: field 1 (LEN) = PublicKey protobuf, field 2 (LEN) = 64-byte signature.
    pub = key.public_key.to_protobuf()
    assert pub == b"\x08\x01\x12\x20" + key.public_bytes
    assert payload[:2] == b"\x0a" + bytes([len(pub)])
    assert payload[2 : 2 + len(pub)] == pub
    rest = payload[2 + len(pub) :]
    assert rest[:2] == b"\x12\x40" and len(rest) == 66
    sig = rest[2:]
    assert key.public_key.verify(b"noise-libp2p-static-key:" + static_pub, sig)
    assert dict(pb_fields(payload)) == {1: pub, 2: sig}

    with_ext = encode_payload(key, static_pub, stream_muxers=["/yamux/1.0.0", "/mplex/6.7.0"])
    fields = list(pb_fields(with_ext))
    assert [f for f, _ in fields] == [1, 2, 4]
    ext = fields[2][1]
    assert isinstance(ext, bytes)
    assert list(pb_fields(ext)) == [(2, b"/yamux/1.0.0"), (2, b"/mplex/6.7.0")]
    parsed = HandshakePayload.decode(with_ext)
    assert parsed.stream_muxers == ("/yamux/1.0.0", "/mplex/6.7.0")
    assert parsed.verify(static_pub) == key.public_key


def test_payload_ignores_unknown_fields_and_extensions() -> None:
    key = _kp(8)
    static_pub = x25519_public_key(b"\x06" * 32)
    base = encode_payload(key, static_pub)
    ext = pb_bytes(1, b"certhash") + pb_bytes(2, b"/yamux/1.0.0") + pb_varint(9, 5)
    extended = base + pb_bytes(3, b"legacy early data") + pb_bytes(4, ext) + pb_varint(99, 1)
    parsed = HandshakePayload.decode(extended)
    assert parsed.stream_muxers == ("/yamux/1.0.0",)
    assert parsed.verify(static_pub) == key.public_key


def test_payload_failures() -> None:
    key = _kp(9)
    static = x25519_public_key(b"\x01" * 32)
    payload = encode_payload(key, static)
    assert decode_payload(payload, static) == key.public_key
    with pytest.raises(AuthenticationFailed, match="signature"):
        decode_payload(payload, x25519_public_key(b"\x02" * 32))
    with pytest.raises(SerializationError):
        decode_payload(b"\xff\xff", static)  # truncated field key
    with pytest.raises(SerializationError, match="length-delimited"):
        decode_payload(pb_varint(1, 5), static)
    with pytest.raises(AuthenticationFailed, match="lacks the identity key"):
        decode_payload(b"", static)
    with pytest.raises(AuthenticationFailed, match="lacks the identity signature"):
        decode_payload(pb_bytes(1, key.public_key.to_protobuf()), static)
    with pytest.raises(AuthenticationFailed, match="bad identity key"):
        decode_payload(pb_bytes(1, b"\x08\x01\x12\x03abc") + pb_bytes(2, b"s" * 64), static)
    too_many = pb_bytes(4, b"".join(pb_bytes(2, b"/m") for _ in range(MAX_STREAM_MUXERS + 1)))
    with pytest.raises(SerializationError, match="more than"):
        HandshakePayload.decode(payload + too_many)
    with pytest.raises(SerializationError, match="UTF-8"):
        HandshakePayload.decode(payload + pb_bytes(4, pb_bytes(2, b"\xff\xfe")))
    with pytest.raises(SerializationError, match="must be a string"):
        HandshakePayload.decode(payload + pb_bytes(4, pb_varint(2, 1)))


def test_credentials_validate_advertised_muxers() -> None:
    with pytest.raises(InvalidConfiguration):
        NoiseCredentials.create(_kp(1), stream_muxers=[""])
    with pytest.raises(InvalidConfiguration):
        NoiseCredentials.create(_kp(1), stream_muxers=["/m"] * (MAX_STREAM_MUXERS + 1))
    creds = NoiseCredentials.create(_kp(1), static=b"\x03" * 32)
    assert creds.static_public == x25519_public_key(b"\x03" * 32)
    assert creds.peer_id == _kp(1).peer_id
    assert "static_private" not in repr(creds)


# --- the libp2p handshake machine -------------------------------------------------------


def _handshake(
    a: KeyPair | NoiseCredentials,
    b: KeyPair | NoiseCredentials,
    expected: PeerId | None = None,
) -> tuple[NoiseHandshake, NoiseHandshake]:
    init = NoiseHandshake(True, a, expected_peer=expected)
    resp = NoiseHandshake(False, b)
    assert resp.receive_data(init.data_to_send()) == []
    assert init.data_to_send() == b""
    init_events = init.receive_data(resp.data_to_send())
    resp_events = resp.receive_data(init.data_to_send())
    assert len(init_events) == 1 and len(resp_events) == 1
    return init, resp


def test_libp2p_handshake_authenticates_both_sides() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    init, resp = _handshake(a, b, b.peer_id)
    assert init.complete and resp.complete
    assert init.remote_peer == b.peer_id and resp.remote_peer == a.peer_id
    assert init.remote_key == b.public_key and resp.remote_key == a.public_key
    assert init.result is not None and resp.result is not None
    assert init.result.handshake_hash == resp.result.handshake_hash
    assert init.result.remote_stream_muxers == ()
    assert init.receive_data(b"") == []  # completion is reported once
    ta, left_a = init.transport()
    tb, left_b = resp.transport()
    assert left_a == left_b == b""
    assert tb.decrypt(ta.encrypt(b"hello")) == [b"hello"]
    assert ta.decrypt(tb.encrypt(b"back")) == [b"back"]


def test_message_sizes_and_framing() -> None:
    init = NoiseHandshake(True, _kp(1))
    m1 = init.data_to_send()
    assert m1[:2] == b"\x00\x20" and len(m1) == 34  # -> e, empty payload
    resp = NoiseHandshake(False, _kp(2))
    resp.receive_data(m1)
    m2 = resp.data_to_send()
    assert int.from_bytes(m2[:2], "big") == len(m2) - 2
    assert len(m2) - 2 == 32 + 48 + len(resp.credentials.payload) + 16


def test_stream_muxers_extension_reaches_the_peer() -> None:
    a = NoiseCredentials.create(_kp(1), stream_muxers=["/yamux/1.0.0"])
    b = NoiseCredentials.create(_kp(2), stream_muxers=["/mplex/6.7.0", "/yamux/1.0.0"])
    init, resp = _handshake(a, b)
    assert init.result is not None and resp.result is not None
    assert init.result.remote_stream_muxers == ("/mplex/6.7.0", "/yamux/1.0.0")
    assert resp.result.remote_stream_muxers == ("/yamux/1.0.0",)


def test_expected_peer_mismatch_names_both_ids() -> None:
    a, b, c = _kp(1), _kp(2), _kp(3)
    with pytest.raises(AuthenticationFailed) as info:
        _handshake(a, b, c.peer_id)
    assert str(c.peer_id) in str(info.value) and str(b.peer_id) in str(info.value)


def test_remote_with_our_own_identity_is_refused() -> None:
    with pytest.raises(AuthenticationFailed, match="our own identity"):
        _handshake(_kp(4), _kp(4))


def _bad_signature_credentials(key: KeyPair) -> NoiseCredentials:
    """Credentials whose payload signs some other static key than the one used."""
    static = b"\x11" * 32
    wrong = encode_payload(key, x25519_public_key(b"\x12" * 32))
    return NoiseCredentials(key, key.peer_id, static, x25519_public_key(static), wrong)


def test_bad_identity_signature_rejected_by_either_side() -> None:
    # A responder with a bad signature: the initiator rejects message 2.
    with pytest.raises(AuthenticationFailed, match="signature"):
        _handshake(_kp(1), _bad_signature_credentials(_kp(2)))
    # An initiator with a bad signature: the responder rejects message 3.
    init = NoiseHandshake(True, _bad_signature_credentials(_kp(1)))
    resp = NoiseHandshake(False, _kp(2))
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())  # the initiator accepts the honest responder
    with pytest.raises(AuthenticationFailed, match="signature"):
        resp.receive_data(init.data_to_send())
    with pytest.raises(ProtocolError, match="already failed"):
        resp.receive_data(b"\x00")


def _foreign_credentials(kind: str) -> tuple[NoiseCredentials, PeerId]:
    """Credentials signed by a non-Ed25519 identity key (as other libp2p peers may use)."""
    static = os.urandom(32)
    static_pub = x25519_public_key(static)
    message = SIGNATURE_PREFIX + static_pub
    if kind == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pub = PublicKey(KEY_TYPE_RSA, der)
        sig = rsa_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    else:
        curve: ec.EllipticCurve = ec.SECP256K1() if kind == "secp256k1" else ec.SECP256R1()
        ec_key = ec.generate_private_key(curve)
        if kind == "secp256k1":
            data = ec_key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            )
            pub = PublicKey(KEY_TYPE_SECP256K1, data)
        else:
            data = ec_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            pub = PublicKey(KEY_TYPE_ECDSA, data)
        sig = ec_key.sign(message, ec.ECDSA(hashes.SHA256()))
    peer = PeerId.from_public_key(pub)
    payload = HandshakePayload(pub.to_protobuf(), sig).encode()
    return NoiseCredentials(_kp(99), peer, static, static_pub, payload), peer


@pytest.mark.parametrize("kind", ["rsa", "secp256k1", "ecdsa"])
def test_remote_identity_of_other_key_types(kind: str) -> None:
    creds, peer = _foreign_credentials(kind)
    init, _ = _handshake(_kp(1), creds, expected=peer)
    assert init.remote_peer == peer
    _, resp2 = _handshake(creds, _kp(2))
    assert resp2.remote_peer == peer
    assert resp2.remote_key is not None and resp2.remote_key.key_type != 1


def test_final_message_and_transport_data_in_one_chunk() -> None:
    init = NoiseHandshake(True, _kp(1))
    resp = NoiseHandshake(False, _kp(2))
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    ta, _ = init.transport()
    frames = ta.encrypt(b"first") + ta.encrypt(b"second")
    events = resp.receive_data(init.data_to_send() + frames)
    assert [type(e) for e in events] == [HandshakeComplete]
    resp.receive_data(b"more")  # still buffered for the transport, not parsed
    tb, leftover = resp.transport()
    assert leftover == bytes(frames) + b"more"
    assert tb.decrypt(leftover[:-4]) == [b"first", b"second"]


def test_message1_payload_is_ignored() -> None:
    # The spec says the initiator must not send a payload in message 1; one that
    # does is hashed in (so both sides agree) and otherwise ignored.
    hs = HandshakeState(True, static=b"\x01" * 32)
    m1 = hs.write_message(b"early")
    resp = NoiseHandshake(False, _kp(2))
    assert resp.receive_data(len(m1).to_bytes(2, "big") + m1) == []
    assert resp.data_to_send()


def test_deterministic_with_injected_entropy() -> None:
    def entropy(n: int) -> bytes:
        return b"\x07" * n

    a = _kp(8)
    one = NoiseHandshake(True, a, entropy=entropy).data_to_send()
    two = NoiseHandshake(True, a, entropy=entropy).data_to_send()
    assert one == two
    assert NoiseHandshake(True, a).data_to_send() != one


def _complete_pair(seed: int = 1) -> tuple[NoiseTransport, NoiseTransport]:
    init, resp = _handshake(_creds(seed), _creds(seed + 1))
    return init.transport()[0], resp.transport()[0]


@given(st.lists(st.integers(1, 120), min_size=1, max_size=20), st.binary(max_size=200))
def test_handshake_any_chunking(cuts: list[int], payload: bytes) -> None:
    init = NoiseHandshake(True, _creds(1), expected_peer=_kp(2).peer_id)
    resp = NoiseHandshake(False, _creds(2))
    step = iter(range(1 << 30))

    def feed(target: NoiseHandshake, wire: bytes) -> list[HandshakeComplete]:
        events: list[HandshakeComplete] = []
        pos = 0
        while pos < len(wire):
            n = cuts[next(step) % len(cuts)]
            events += target.receive_data(wire[pos : pos + n])
            pos += n
        return events

    assert feed(resp, init.data_to_send()) == []
    assert len(feed(init, resp.data_to_send())) == 1
    ta, _ = init.transport()
    assert len(feed(resp, init.data_to_send() + ta.encrypt(payload))) == 1
    tb, leftover = resp.transport()
    assert b"".join(tb.decrypt(leftover)) == payload
    assert init.remote_peer == _kp(2).peer_id and resp.remote_peer == _kp(1).peer_id


# --- transport framing ------------------------------------------------------------------


def test_tampered_frame_detected_and_transport_poisoned() -> None:
    ta, tb = _complete_pair()
    frame = ta.encrypt(b"secret data")
    for i in range(2, len(frame)):  # every ciphertext and tag byte is covered
        ta2, tb2 = _complete_pair()
        bad = bytearray(ta2.encrypt(b"secret data"))
        bad[i] ^= 0x01
        with pytest.raises(AuthenticationFailed, match="tampered"):
            tb2.decrypt(bytes(bad))
        with pytest.raises(AuthenticationFailed, match="already failed"):
            tb2.decrypt(ta2.encrypt(b"ok"))
    assert tb.decrypt(bytes(frame)) == [b"secret data"]


def test_replayed_or_reordered_frames_fail() -> None:
    ta, tb = _complete_pair()
    f1, f2 = bytes(ta.encrypt(b"one")), bytes(ta.encrypt(b"two"))
    assert tb.decrypt(f1) == [b"one"]
    with pytest.raises(AuthenticationFailed):
        tb.decrypt(f1)  # replay
    ta, tb = _complete_pair()
    f1, f2 = bytes(ta.encrypt(b"one")), bytes(ta.encrypt(b"two"))
    with pytest.raises(AuthenticationFailed):
        tb.decrypt(f2)  # reorder


def test_frame_shorter_than_tag_is_a_protocol_error() -> None:
    _, tb = _complete_pair()
    with pytest.raises(ProtocolError, match="shorter than its 16-byte tag"):
        tb.decrypt(b"\x00\x0f" + b"x" * 15)
    _, tb = _complete_pair()
    tb.decrypt(b"\x00")  # split header
    with pytest.raises(ProtocolError, match="shorter"):
        tb.decrypt(b"\x01")


def test_frame_sizes_at_the_boundaries() -> None:
    ta, tb = _complete_pair()
    for n, frames in [(0, 1), (1, 1), (MAX_PLAINTEXT, 1), (MAX_PLAINTEXT + 1, 2), (256_000, 4)]:
        data = os.urandom(n)
        wire = bytes(ta.encrypt(data))
        assert len(wire) == n + frames * 18 == NoiseTransport.framed_size(n)
        pos = 0
        for _ in range(frames):
            length = int.from_bytes(wire[pos : pos + 2], "big")
            assert 16 <= length <= MAX_FRAME
            pos += 2 + length
        assert pos == len(wire)
        assert b"".join(tb.decrypt(wire)) == data
    assert tb.decrypt(bytes(ta.encrypt(b""))) == []  # tag-only frame: no plaintext piece
    assert tb.buffered == 0


def test_encrypt_accepts_any_byte_buffer() -> None:
    ta, tb = _complete_pair()
    wire = ta.encrypt(memoryview(bytearray(b"abcdef"))[1:4])
    assert tb.decrypt(memoryview(wire)) == [b"bcd"]


@given(
    st.lists(st.binary(max_size=3000), max_size=10),
    st.lists(st.integers(1, 5000), min_size=1),
)
def test_transport_any_chunking(messages: list[bytes], cuts: list[int]) -> None:
    ta, tb = _complete_pair(5)
    wire = b"".join(ta.encrypt(m) for m in messages)
    got: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(wire):
        n = cuts[i % len(cuts)]
        got += tb.decrypt(wire[pos : pos + n])
        pos += n
        i += 1
    assert b"".join(got) == b"".join(messages)
    assert tb.buffered == 0


@given(st.binary(max_size=400), st.integers(0, 2))
def test_handshake_garbage_only_raises_p2p_errors(data: bytes, stage: int) -> None:
    # Garbage at each stage: as message 1 (responder), message 2 (initiator), message 3.
    init = NoiseHandshake(True, _creds(3))
    resp = NoiseHandshake(False, _creds(4))
    if stage == 0:
        target = resp
    elif stage == 1:
        target = init
    else:
        resp.receive_data(init.data_to_send())
        target = resp
    with contextlib.suppress(P2PError):
        target.receive_data(data)
        target.receive_data(len(data).to_bytes(2, "big") + data)


@given(st.binary(max_size=400))
def test_transport_garbage_only_raises_p2p_errors(data: bytes) -> None:
    _, tb = _complete_pair(5)
    with contextlib.suppress(P2PError):
        tb.decrypt(data)


# --- the asyncio adapter ----------------------------------------------------------------


async def _secure_pair(
    sec: NoiseSecurity | None = None,
) -> tuple[NoiseConnection, NoiseConnection, KeyPair, KeyPair, MemoryConnection, MemoryConnection]:
    a, b = memory_pipe()
    ka, kb = KeyPair.generate(), KeyPair.generate()
    sec = sec or NoiseSecurity()
    out, inn = await asyncio.gather(
        sec.secure_outbound(a, ka, kb.peer_id), sec.secure_inbound(b, kb)
    )
    return out, inn, ka, kb, a, b


async def _assert_reset(conn: MemoryConnection) -> None:
    """The pipe end ``conn`` sees its peer reset (or closed) the connection."""
    with pytest.raises(ConnectionClosed):
        while await conn.read():
            pass
        await conn.write(b"x")


def test_adapter_handshake_both_directions_sets_peers_and_addrs() -> None:
    async def main() -> None:
        out, inn, ka, kb, a, b = await _secure_pair()
        assert (out.local_peer, out.remote_peer) == (ka.peer_id, kb.peer_id)
        assert (inn.local_peer, inn.remote_peer) == (kb.peer_id, ka.peer_id)
        assert out.remote_public_key == kb.public_key
        assert (out.local_addr, out.remote_addr) == (a.local_addr, a.remote_addr)
        assert (inn.local_addr, inn.remote_addr) == (b.local_addr, b.remote_addr)
        assert out.handshake_hash == inn.handshake_hash
        assert not out.is_limited and out.raw is a
        # The other way round over a new pipe, with the same security object.
        c, d = memory_pipe()
        d.is_limited = True
        sec = NoiseSecurity()
        back, fwd = await asyncio.gather(
            sec.secure_outbound(d, kb, ka.peer_id), sec.secure_inbound(c, ka)
        )
        assert back.remote_peer == ka.peer_id and fwd.remote_peer == kb.peer_id
        assert back.is_limited and not fwd.is_limited
        await back.write(b"ping")
        assert await fwd.read_exactly(4) == b"ping"

    run(main)


def test_adapter_byte_exact_echo_of_many_chunks() -> None:
    async def main() -> None:
        out, inn, *_ = await _secure_pair()
        sizes = [0, 1, 15, 16, 17, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1]
        sizes += [65536, 200_000, 1 << 20, MAX_WRITE_BATCH + 12345]
        sizes += [(i * 7919) % 100_000 for i in range(30)]
        chunks = [os.urandom(n) for n in sizes]
        expected = b"".join(chunks)

        async def echo() -> None:
            while data := await inn.read(70_000):
                assert len(data) <= 70_000
                await inn.write(data)
            await inn.close_write()

        async def send() -> None:
            for c in chunks:
                await out.write(c)
            await out.close_write()

        tasks = [asyncio.ensure_future(echo()), asyncio.ensure_future(send())]
        received = bytearray()
        read_sizes = [1, 7, 100, 4096, 65519, 65536, 300_000, -1]
        i = 0
        while data := await out.read(read_sizes[i % len(read_sizes)]):
            if read_sizes[i % len(read_sizes)] > 0:
                assert len(data) <= read_sizes[i % len(read_sizes)]
            received += data
            i += 1
        await asyncio.gather(*tasks)
        assert bytes(received) == expected
        assert await out.read() == b"" and await inn.read() == b""

    run(main)


def test_adapter_concurrent_writers_keep_frames_in_nonce_order() -> None:
    async def main() -> None:
        a, b = memory_pipe(buffer_size=1024)  # heavy backpressure
        ka, kb = _kp(1), _kp(2)
        sec = NoiseSecurity()
        out, inn = await asyncio.gather(sec.secure_outbound(a, ka, None), sec.secure_inbound(b, kb))

        async def writer(tag: int) -> None:
            for _ in range(20):
                await out.write(bytes([tag]) * 3000)

        tasks = [asyncio.ensure_future(writer(t)) for t in range(4)]
        got = await inn.read_exactly(4 * 20 * 3000)
        await asyncio.gather(*tasks)
        # Every write arrived whole (writes are not interleaved) and all of them arrived.
        pieces = [got[i : i + 3000] for i in range(0, len(got), 3000)]
        assert all(p == p[:1] * 3000 for p in pieces)
        assert sorted(p[0] for p in pieces) == sorted(list(range(4)) * 20)

    run(main)


def test_adapter_read_zero_and_half_close_and_reset() -> None:
    async def main() -> None:
        out, inn, *_ = await _secure_pair()
        assert await out.read(0) == b""
        await out.write(b"hello")
        await out.close_write()
        with pytest.raises(ConnectionClosed):
            await out.write(b"after close")
        assert await inn.read(2) == b"he"
        assert await inn.read() == b"llo"
        assert await inn.read() == b""
        await inn.write(b"still open")  # the other direction goes on
        assert await out.read_exactly(10) == b"still open"
        await inn.reset()
        with pytest.raises(StreamReset):
            await out.read()

    run(main)


def test_adapter_expected_peer_mismatch_fails_dialer_and_closes_listener() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        ka, kb, kc = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
        sec = NoiseSecurity()
        dial, listen = await asyncio.gather(
            sec.secure_outbound(a, ka, kc.peer_id),
            sec.secure_inbound(b, kb),
            return_exceptions=True,
        )
        assert isinstance(dial, AuthenticationFailed)
        assert str(kc.peer_id) in str(dial) and str(kb.peer_id) in str(dial)
        assert isinstance(listen, ConnectionClosed)  # the dialer reset the connection
        with pytest.raises(ConnectionClosed):
            await b.write(b"x")

    run(main)


def test_adapter_rejects_bad_identity_signature() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        evil = NoiseHandshake(True, _bad_signature_credentials(_kp(1)))
        listener = asyncio.ensure_future(NoiseSecurity().secure_inbound(b, _kp(2)))
        await a.write(evil.data_to_send())
        evil.receive_data(await a.read())
        await a.write(evil.data_to_send())
        with pytest.raises(AuthenticationFailed, match="signature"):
            await listener
        await _assert_reset(a)

    run(main)


@pytest.mark.parametrize("role", ["inbound", "outbound"])
def test_adapter_garbage_handshake_bytes(role: str) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        sec = NoiseSecurity()
        if role == "inbound":
            task = asyncio.ensure_future(sec.secure_inbound(b, _kp(1)))
        else:
            task = asyncio.ensure_future(sec.secure_outbound(b, _kp(1), None))
            assert len(await a.read()) == 34  # message 1
        await a.write(b"\x00\x05hello")
        with pytest.raises(ProtocolError, match="at least"):
            await task
        await _assert_reset(a)

    run(main)


def test_adapter_eof_during_handshake() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        task = asyncio.ensure_future(NoiseSecurity().secure_inbound(b, _kp(1)))
        await a.write(b"\x00\x20" + b"\x01" * 10)  # a partial message 1
        await a.close_write()
        with pytest.raises(ConnectionClosed, match="12 bytes of a partial message"):
            await task

    run(main)


@pytest.mark.parametrize("role", ["inbound", "outbound"])
def test_adapter_stalled_handshake_times_out(role: str) -> None:
    async def main() -> None:
        a, silent = memory_pipe()
        sec = NoiseSecurity(NetworkConfig(handshake_timeout=0.05))
        with pytest.raises(P2PTimeout, match=r"timed out after 0\.05s"):
            if role == "inbound":
                await sec.secure_inbound(a, _kp(1))
            else:
                await sec.secure_outbound(a, _kp(1), None)
        await _assert_reset(silent)

    run(main)


def test_adapter_cancelled_handshake_resets_the_connection() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        task = asyncio.ensure_future(NoiseSecurity().secure_outbound(b, _kp(1), None))
        assert len(await a.read()) == 34  # message 1 went out; now the handshake waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _assert_reset(a)

    run(main)


def test_adapter_truncated_frame_is_an_error() -> None:
    async def main() -> None:
        out, inn, *_ = await _secure_pair()
        await out.write(b"complete")
        await out.raw.write(b"\x01\x00" + b"x" * 10)  # a header promising 256 bytes
        await out.raw.close_write()
        assert await inn.read() == b"complete"
        with pytest.raises(ConnectionClosed, match="truncated"):
            await inn.read()
        with pytest.raises(ConnectionClosed, match="truncated"):
            await inn.read()

    run(main)


def test_adapter_tampered_frame_resets_the_connection() -> None:
    async def main() -> None:
        out, inn, *_ = await _secure_pair()
        await out.raw.write(b"\x00\x20" + bytes(32))
        with pytest.raises(AuthenticationFailed, match="tampered"):
            await inn.read()
        with pytest.raises(AuthenticationFailed):
            await inn.read()
        with pytest.raises(ConnectionClosed):
            await out.write(b"more")  # the reader reset the raw connection

    run(main)


def test_adapter_final_message_with_transport_data_in_one_write() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        listener = asyncio.ensure_future(NoiseSecurity().secure_inbound(b, _kp(2)))
        init = NoiseHandshake(True, _kp(1))
        await a.write(init.data_to_send())
        init.receive_data(await a.read())
        transport, _ = init.transport()
        await a.write(init.data_to_send() + transport.encrypt(b"early data"))
        conn = await listener
        assert await conn.read() == b"early data"
        assert conn.remote_peer == _kp(1).peer_id

    run(main)


def test_adapter_stream_muxers_hint_and_deterministic_entropy() -> None:
    async def main() -> None:
        counter = iter(range(1, 1000))

        def entropy(n: int) -> bytes:
            return bytes([next(counter)]) * n

        sec = NoiseSecurity(entropy=entropy, stream_muxers=["/yamux/1.0.0"])
        out, inn, *_ = await _secure_pair(sec)
        assert out.remote_stream_muxers == ("/yamux/1.0.0",)
        assert inn.remote_stream_muxers == ("/yamux/1.0.0",)
        plain, *_ = await _secure_pair()
        assert plain.remote_stream_muxers == ()
        await out.write(b"x")
        assert await inn.read() == b"x"

    run(main)
