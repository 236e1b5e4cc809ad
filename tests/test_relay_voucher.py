"""Reservation vouchers: signed envelopes with the spec's domain and payload type."""

from __future__ import annotations

import asyncio

import pytest

from switchy.presets import default_node
from switchy.stack.envelope import open_envelope, seal_envelope
from switchy.stack.errors import AuthenticationFailed, SerializationError
from switchy.stack.identity import KeyPair
from switchy.transports.relay.pb import Voucher, decode_voucher, encode_voucher
from switchy.transports.relay.voucher import (
    VOUCHER_DOMAIN,
    VOUCHER_PAYLOAD_TYPE,
    open_voucher,
    seal_voucher,
)

RELAY = KeyPair.from_seed(bytes([7]) * 32)
PEER = KeyPair.from_seed(bytes([8]) * 32).peer_id


def test_voucher_is_sealed_with_the_spec_domain_and_payload_type() -> None:
    sealed = seal_voucher(RELAY, PEER, 1_800_000_000)
    env = open_envelope(sealed, "libp2p-relay-rsvp", expected_payload_type=b"\x03\x02")
    assert env.peer_id == RELAY.peer_id
    assert decode_voucher(env.payload) == Voucher(RELAY.peer_id, PEER, 1_800_000_000)
    assert open_voucher(sealed, RELAY.peer_id) == Voucher(RELAY.peer_id, PEER, 1_800_000_000)


def test_voucher_from_another_signer_or_naming_another_relay_is_refused() -> None:
    sealed = seal_voucher(RELAY, PEER, 1)
    with pytest.raises(AuthenticationFailed, match="voucher signed by"):
        open_voucher(sealed, PEER)
    forged = seal_envelope(
        RELAY, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, encode_voucher(Voucher(PEER, PEER, 1))
    )
    with pytest.raises(AuthenticationFailed, match="voucher names relay"):
        open_voucher(forged, RELAY.peer_id)
    other_domain = seal_envelope(
        RELAY,
        "libp2p-peer-record",
        VOUCHER_PAYLOAD_TYPE,
        encode_voucher(Voucher(RELAY.peer_id, PEER, 1)),
    )
    with pytest.raises(AuthenticationFailed):
        open_voucher(other_domain, RELAY.peer_id)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        open_voucher(bytes(tampered), RELAY.peer_id)
    with pytest.raises(SerializationError):
        open_voucher(b"\xff\xff", RELAY.peer_id)


def test_relay_reservation_carries_a_voucher_the_client_checks() -> None:
    from switchy.transports.relay import RelayService, RelayTransport

    async def main() -> None:
        async with (
            default_node(services=[RelayService()], listen=["/ip4/127.0.0.1/tcp/0"]) as r,
            default_node() as b,
        ):
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            t = next(t for t in b.transports if isinstance(t, RelayTransport))
            (listener,) = t.listeners
            assert listener.reservation is not None and listener.reservation.voucher
            v = open_voucher(listener.reservation.voucher, r.peer_id)
            assert v.peer == b.peer_id and v.relay == r.peer_id

    asyncio.run(asyncio.wait_for(main(), 30))
