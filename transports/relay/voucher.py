"""Reservation vouchers: a :class:`~switchy.transports.relay.pb.Voucher` in a signed envelope
(:mod:`switchy.stack.envelope`, domain ``libp2p-relay-rsvp``, payload type 0x0302)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from switchy.stack.envelope import open_envelope, seal_envelope
from switchy.stack.errors import AuthenticationFailed
from switchy.transports.relay.pb import Voucher, decode_voucher, encode_voucher

if TYPE_CHECKING:
    from switchy.stack.identity import KeyPair, PeerId

__all__ = ["VOUCHER_DOMAIN", "VOUCHER_PAYLOAD_TYPE", "open_voucher", "seal_voucher"]

#: Signed-envelope domain of reservation vouchers.
VOUCHER_DOMAIN: Final = "libp2p-relay-rsvp"
#: Multicodec 0x0302 as its uvarint bytes: the envelope payload type of vouchers.
VOUCHER_PAYLOAD_TYPE: Final = b"\x03\x02"


def seal_voucher(key: KeyPair, peer: PeerId, expiration: int) -> bytes:
    """The voucher for ``peer``'s reservation on relay ``key``, valid until ``expiration``."""
    payload = encode_voucher(Voucher(key.peer_id, peer, expiration))
    return seal_envelope(key, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, payload)


def open_voucher(data: bytes, relay: PeerId) -> Voucher:
    """Check a voucher's signature and content; it must be signed by ``relay``.

    Raises :class:`AuthenticationFailed` for a bad signature, another signer
    or a payload naming another relay; :class:`~switchy.stack.errors.SerializationError`
    for malformed bytes.
    """
    env = open_envelope(data, VOUCHER_DOMAIN, expected_payload_type=VOUCHER_PAYLOAD_TYPE)
    if env.peer_id != relay:
        raise AuthenticationFailed(f"voucher signed by {env.peer_id}, expected relay {relay}")
    voucher = decode_voucher(env.payload)
    if voucher.relay != relay:
        raise AuthenticationFailed(f"voucher names relay {voucher.relay}, expected {relay}")
    return voucher
