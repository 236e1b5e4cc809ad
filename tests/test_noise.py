"""Noise: the cacophony vector, the libp2p handshake, transport framing, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stack.config import NetworkConfig
from stack.errors import AuthenticationFailed, ConnectionClosed, P2PError, P2PTimeout, ProtocolError
from stack.identity import KeyPair
from stack.pipe import memory_pipe
from stack.security.noise import (
    MAX_PLAINTEXT,
    HandshakeState,
    NoiseHandshake,
    NoiseSecurity,
    decode_payload,
    encode_payload,
)
from stack.stream import Connection

VECTOR = json.loads(
    (Path(__file__).parent / "vectors" / "noise_xx_25519_chachapoly_sha256.json").read_text()
)["vector"]
h = bytes.fromhex


def test_cacophony_vector() -> None:
    v = VECTOR
    init = HandshakeState(
        True, prologue=h(v["init_prologue"]), static=h(v["init_static"]),
        ephemeral=h(v["init_ephemeral"]),
    )
    resp = HandshakeState(
        False, prologue=h(v["resp_prologue"]), static=h(v["resp_static"]),
        ephemeral=h(v["resp_ephemeral"]),
    )
    msgs = v["messages"]
    for i in range(3):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        ct = writer.write_message(h(msgs[i]["payload"]))
        assert ct.hex() == msgs[i]["ciphertext"]
        assert reader.read_message(ct) == h(msgs[i]["payload"])
    assert init.handshake_hash.hex() == v["handshake_hash"]
    assert resp.handshake_hash.hex() == v["handshake_hash"]
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    for i in range(3, len(msgs)):
        send, recv = (r_send, i_recv) if i % 2 == 1 else (i_send, r_recv)
        ct = send.encrypt_with_ad(None, h(msgs[i]["payload"]))
        assert ct.hex() == msgs[i]["ciphertext"]
        assert recv.decrypt_with_ad(None, ct) == h(msgs[i]["payload"])


def _handshake(
    a: KeyPair, b: KeyPair, expected: object = None
) -> tuple[NoiseHandshake, NoiseHandshake]:
    init = NoiseHandshake(True, a, expected_peer=expected)  # type: ignore[arg-type]
    resp = NoiseHandshake(False, b)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    resp.receive_data(init.data_to_send())
    return init, resp


def test_libp2p_handshake_authenticates_both_sides() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    init, resp = _handshake(a, b, b.peer_id)
    assert init.complete and resp.complete
    assert init.remote_peer == b.peer_id and resp.remote_peer == a.peer_id
    ta, _ = init.transport()
    tb, _ = resp.transport()
    assert tb.decrypt(ta.encrypt(b"hello")) == [b"hello"]
    assert ta.decrypt(tb.encrypt(b"back")) == [b"back"]


def test_expected_peer_mismatch() -> None:
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    with pytest.raises(AuthenticationFailed, match=str(c.peer_id)):
        _handshake(a, b, c.peer_id)


def test_payload_signature_checked() -> None:
    key = KeyPair.generate()
    static = b"\x01" * 32
    payload = encode_payload(key, static)
    assert decode_payload(payload, static) == key.public_key
    with pytest.raises(AuthenticationFailed, match="signature"):
        decode_payload(payload, b"\x02" * 32)
    with pytest.raises(AuthenticationFailed):
        decode_payload(b"\x0a\x02\x08\x01", static)
    with pytest.raises(AuthenticationFailed):
        decode_payload(b"\xff\xff", static)


def test_tampered_frame_detected() -> None:
    init, resp = _handshake(KeyPair.generate(), KeyPair.generate())
    ta, _ = init.transport()
    tb, _ = resp.transport()
    frame = bytearray(ta.encrypt(b"secret data"))
    frame[5] ^= 0x01
    with pytest.raises(AuthenticationFailed, match="tampered"):
        tb.decrypt(bytes(frame))


def test_large_writes_split_into_frames() -> None:
    init, resp = _handshake(KeyPair.generate(), KeyPair.generate())
    ta, _ = init.transport()
    tb, _ = resp.transport()
    data = bytes(range(256)) * 1000
    wire = ta.encrypt(data)
    frames = -(-len(data) // MAX_PLAINTEXT)
    assert frames == 4
    assert len(wire) == len(data) + frames * (2 + 16)
    assert b"".join(tb.decrypt(wire)) == data


@given(st.lists(st.binary(max_size=3000), max_size=10), st.lists(st.integers(1, 5000), min_size=1))
def test_transport_any_chunking(messages: list[bytes], cuts: list[int]) -> None:
    init, resp = _handshake(KeyPair.from_seed(b"\x01" * 32), KeyPair.from_seed(b"\x02" * 32))
    ta, _ = init.transport()
    tb, _ = resp.transport()
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


@given(st.binary(max_size=400))
def test_handshake_garbage_only_raises_p2p_errors(data: bytes) -> None:
    resp = NoiseHandshake(False, KeyPair.from_seed(b"\x03" * 32))
    with contextlib.suppress(P2PError):
        resp.receive_data(data)
    init = NoiseHandshake(True, KeyPair.from_seed(b"\x04" * 32))
    with contextlib.suppress(P2PError):
        init.receive_data(data)


@given(st.binary(max_size=400))
def test_transport_garbage_only_raises_p2p_errors(data: bytes) -> None:
    init, _ = _handshake(KeyPair.from_seed(b"\x05" * 32), KeyPair.from_seed(b"\x06" * 32))
    t, _ = init.transport()
    with contextlib.suppress(P2PError):
        t.decrypt(data)


def test_deterministic_with_injected_entropy() -> None:
    def entropy(n: int) -> bytes:
        return b"\x07" * n

    a, b = KeyPair.from_seed(b"\x08" * 32), KeyPair.from_seed(b"\x09" * 32)
    one = NoiseHandshake(True, a, entropy=entropy).data_to_send()
    two = NoiseHandshake(True, a, entropy=entropy).data_to_send()
    assert one == two
    assert NoiseHandshake(True, b).data_to_send() != one


async def _secure_pair(
    cfg: NetworkConfig | None = None, expected: object = None
) -> tuple[Connection, Connection, KeyPair, KeyPair]:
    a, b = memory_pipe()
    ka, kb = KeyPair.generate(), KeyPair.generate()
    sec = NoiseSecurity(cfg)
    out, inn = await asyncio.gather(
        sec.secure_outbound(a, ka, expected or kb.peer_id),  # type: ignore[arg-type]
        sec.secure_inbound(b, kb),
    )
    return out, inn, ka, kb


def test_adapter_echo_many_chunks_and_half_close() -> None:
    async def main() -> None:
        out, inn, ka, kb = await _secure_pair()
        assert out.remote_peer == kb.peer_id and inn.remote_peer == ka.peer_id
        chunks = [bytes([i % 256]) * (i * 997 % 200_000) for i in range(40)]

        async def send() -> None:
            for c in chunks:
                await out.write(c)
            await out.close_write()

        task = asyncio.ensure_future(send())
        received = await inn.read_all(limit=1 << 30)
        await task
        assert received == b"".join(chunks)
        await inn.write(b"reply")
        assert await out.read(3) == b"rep"
        assert await out.read() == b"ly"

    asyncio.run(main())


def test_adapter_wrong_peer_closes_both() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        ka, kb, kc = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
        sec = NoiseSecurity()
        results = await asyncio.gather(
            sec.secure_outbound(a, ka, kc.peer_id), sec.secure_inbound(b, kb),
            return_exceptions=True,
        )
        assert isinstance(results[0], AuthenticationFailed)
        assert isinstance(results[1], P2PError)  # the listener sees the dialer hang up

    asyncio.run(main())


def test_adapter_stalled_handshake_times_out() -> None:
    async def main() -> None:
        a, _silent = memory_pipe()
        with pytest.raises(P2PTimeout):
            await NoiseSecurity(NetworkConfig(handshake_timeout=0.05)).secure_inbound(
                a, KeyPair.generate()
            )

    asyncio.run(main())


def test_adapter_truncated_frame_is_an_error() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        ka, kb = KeyPair.generate(), KeyPair.generate()
        sec = NoiseSecurity()
        _out, inn = await asyncio.gather(
            sec.secure_outbound(a, ka, None), sec.secure_inbound(b, kb)
        )
        await a.write(b"\x01\x00" + b"x" * 10)  # a frame header promising 256 bytes
        await a.close_write()
        with pytest.raises((ConnectionClosed, ProtocolError)):
            await inn.read()

    asyncio.run(main())
