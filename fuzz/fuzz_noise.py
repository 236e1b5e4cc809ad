"""Noise XX: the handshake payload parser, a responder fed arbitrary bytes, and a complete
handshake whose remote sends an arbitrary (correctly encrypted) payload."""

from __future__ import annotations

from _harness import chunks, expected, instrumented, main

with instrumented():
    from switchy.stack.identity import KeyPair
    from switchy.stack.security.noise_core import (
        HandshakePayload,
        NoiseCredentials,
        NoiseHandshake,
        decode_payload,
    )

_ALICE = NoiseCredentials.create(KeyPair.from_seed(b"a" * 32), static=b"\x01" * 32)
_BOB_KEY = KeyPair.from_seed(b"b" * 32)
_BOB = NoiseCredentials.create(_BOB_KEY, static=b"\x02" * 32)


def _ephemeral(n: int) -> bytes:
    return bytes([n]) * 32


def test_one_input(data: bytes) -> None:
    mode = data[0] % 4 if data else 0
    body = data[1:]
    with expected():
        if mode == 0:
            HandshakePayload.decode(body)
            decode_payload(body, _BOB.static_public)
        elif mode == 1:  # a responder: message 1 (and on) from an attacker
            hs = NoiseHandshake(False, _BOB, ephemeral=_ephemeral(3))
            for piece in chunks(body):
                hs.receive_data(piece)
        elif mode == 2:  # an initiator: message 2 from an attacker
            hs = NoiseHandshake(True, _ALICE, ephemeral=_ephemeral(4))
            hs.data_to_send()
            for piece in chunks(body):
                hs.receive_data(piece)
        else:  # the responder's payload is attacker-chosen, encrypted as the protocol says
            evil = NoiseCredentials(
                _BOB_KEY, _BOB.peer_id, _BOB.static_private, _BOB.static_public, body
            )
            alice = NoiseHandshake(True, _ALICE, ephemeral=_ephemeral(5))
            bob = NoiseHandshake(False, evil, ephemeral=_ephemeral(6))
            bob.receive_data(alice.data_to_send())
            alice.receive_data(bob.data_to_send())


if __name__ == "__main__":
    main(test_one_input)
