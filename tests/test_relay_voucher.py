"""Reservation vouchers through the agreed ``stack.envelope`` API.

``stack.envelope`` is written on another branch.  These tests check our side
of the contract with a stand-in module that has the agreed signatures
(``seal_envelope(key, domain, payload_type, payload) -> bytes`` and
``open_envelope(data, domain, expected_payload_type=None) -> SignedEnvelope``),
and that without the module reservations simply carry no voucher.
"""

from __future__ import annotations

import sys
import types

import attrs
import pytest

from stack.codec import pb_bytes
from stack.errors import AuthenticationFailed
from stack.identity import KeyPair, PeerId, PublicKey
from transports.relay.pb import Voucher, decode_voucher, encode_voucher
from transports.relay.voucher import (
    VOUCHER_DOMAIN,
    VOUCHER_PAYLOAD_TYPE,
    envelope_available,
    open_voucher,
    seal_voucher,
)

RELAY = KeyPair.from_seed(bytes([7]) * 32)
PEER = KeyPair.from_seed(bytes([8]) * 32).peer_id


@attrs.frozen
class _Envelope:
    public_key: PublicKey
    peer_id: PeerId
    payload_type: bytes
    payload: bytes
    raw: bytes


def _stand_in() -> tuple[types.ModuleType, list[tuple[object, ...]]]:
    """A toy envelope module: (domain, type, payload) signed with the key, in a protobuf."""
    calls: list[tuple[object, ...]] = []
    module = types.ModuleType("stack.envelope")

    def seal_envelope(key: KeyPair, domain: str, payload_type: bytes, payload: bytes) -> bytes:
        calls.append(("seal", key.peer_id, domain, payload_type, payload))
        sig = key.sign(domain.encode() + payload_type + payload)
        return (
            pb_bytes(1, key.public_key.to_protobuf())
            + pb_bytes(2, payload_type)
            + pb_bytes(3, payload)
            + pb_bytes(5, sig)
        )

    def open_envelope(
        data: bytes, domain: str, expected_payload_type: bytes | None = None
    ) -> _Envelope:
        from stack.codec import pb_fields

        f = {n: v for n, v in pb_fields(data)}
        assert isinstance(f[1], bytes) and isinstance(f[2], bytes)
        assert isinstance(f[3], bytes) and isinstance(f[5], bytes)
        calls.append(("open", domain, expected_payload_type))
        key = PublicKey.from_protobuf(f[1])
        if expected_payload_type is not None and f[2] != expected_payload_type:
            raise AuthenticationFailed("wrong payload type")
        if not key.verify(domain.encode() + f[2] + f[3], f[5]):
            raise AuthenticationFailed("bad signature")
        return _Envelope(key, key.to_peer_id(), f[2], f[3], data)

    module.seal_envelope = seal_envelope  # type: ignore[attr-defined]
    module.open_envelope = open_envelope  # type: ignore[attr-defined]
    return module, calls


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    module, calls = _stand_in()
    monkeypatch.setitem(sys.modules, "stack.envelope", module)
    return calls


def test_voucher_is_sealed_with_the_spec_domain_and_payload_type(
    stand_in: list[tuple[object, ...]],
) -> None:
    assert envelope_available()
    sealed = seal_voucher(RELAY, PEER, 1_800_000_000)
    assert sealed is not None
    (call,) = stand_in
    assert call[:4] == ("seal", RELAY.peer_id, "libp2p-relay-rsvp", b"\x03\x02")
    assert decode_voucher(call[4]) == Voucher(RELAY.peer_id, PEER, 1_800_000_000)  # type: ignore[arg-type]
    assert open_voucher(sealed, RELAY.peer_id) == Voucher(RELAY.peer_id, PEER, 1_800_000_000)
    assert stand_in[-1] == ("open", VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE)


def test_voucher_from_another_signer_or_naming_another_relay_is_refused(
    stand_in: list[tuple[object, ...]],
) -> None:
    sealed = seal_voucher(RELAY, PEER, 1)
    assert sealed is not None
    with pytest.raises(AuthenticationFailed, match="voucher signed by"):
        open_voucher(sealed, PEER)
    # Signed by the right key but naming another relay in the payload.
    module = sys.modules["stack.envelope"]
    forged = module.seal_envelope(
        RELAY, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, encode_voucher(Voucher(PEER, PEER, 1))
    )
    with pytest.raises(AuthenticationFailed, match="voucher names relay"):
        open_voucher(forged, RELAY.peer_id)


def test_without_stack_envelope_there_is_no_voucher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "stack.envelope", None)  # import raises ImportError
    assert not envelope_available()
    assert seal_voucher(RELAY, PEER, 1) is None
    with pytest.raises(RuntimeError, match=r"stack\.envelope is not available"):
        open_voucher(b"", RELAY.peer_id)


def test_relay_reservation_carries_a_voucher_the_client_checks(
    stand_in: list[tuple[object, ...]],
) -> None:
    import asyncio

    from stack.node import Node
    from transports.relay import RelayService, RelayTransport

    async def main() -> None:
        async with (
            Node.default(services=[RelayService()], listen=["/ip4/127.0.0.1/tcp/0"]) as r,
            Node.default() as b,
        ):
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            t = next(t for t in b.transports if isinstance(t, RelayTransport))
            (listener,) = t.listeners
            assert listener.reservation is not None and listener.reservation.voucher
            v = open_voucher(listener.reservation.voucher, r.peer_id)
            assert v.peer == b.peer_id and v.relay == r.peer_id
            assert ("open", VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE) in stand_in

    asyncio.run(asyncio.wait_for(main(), 30))
