"""Reservation vouchers: a :class:`~transports.relay.pb.Voucher` in a signed envelope.

The envelope code lives in :mod:`stack.envelope`.  It is imported lazily so
that the relay works without it: a reservation without a voucher is valid
(the field is optional in the spec and vouchers are advisory).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from stack.errors import AuthenticationFailed
from transports.relay.pb import Voucher, decode_voucher, encode_voucher

if TYPE_CHECKING:
    from stack.identity import KeyPair, PeerId

__all__ = [
    "VOUCHER_DOMAIN",
    "VOUCHER_PAYLOAD_TYPE",
    "envelope_available",
    "open_voucher",
    "seal_voucher",
]

#: Signed-envelope domain of reservation vouchers.
VOUCHER_DOMAIN: Final = "libp2p-relay-rsvp"
#: Multicodec 0x0302 as its uvarint bytes: the envelope payload type of vouchers.
VOUCHER_PAYLOAD_TYPE: Final = b"\x03\x02"


def _envelope() -> object | None:
    try:
        return importlib.import_module("stack.envelope")
    except ImportError:
        return None


def envelope_available() -> bool:
    """Whether :mod:`stack.envelope` is installed (vouchers can be made and checked)."""
    return _envelope() is not None


def seal_voucher(key: KeyPair, peer: PeerId, expiration: int) -> bytes | None:
    """The voucher for ``peer``'s reservation on relay ``key``, or ``None`` without envelopes."""
    module = _envelope()
    if module is None:
        return None
    payload = encode_voucher(Voucher(key.peer_id, peer, expiration))
    sealed: bytes = module.seal_envelope(  # type: ignore[attr-defined]
        key, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, payload
    )
    return sealed


def open_voucher(data: bytes, relay: PeerId) -> Voucher:
    """Check a voucher's signature and content; it must be signed by ``relay``.

    Raises :class:`AuthenticationFailed` for a bad signature, another signer
    or a payload naming another relay, and ``RuntimeError`` when
    :mod:`stack.envelope` is missing.
    """
    module = _envelope()
    if module is None:
        raise RuntimeError("stack.envelope is not available; vouchers cannot be checked")
    env = module.open_envelope(  # type: ignore[attr-defined]
        data, VOUCHER_DOMAIN, expected_payload_type=VOUCHER_PAYLOAD_TYPE
    )
    if env.peer_id != relay:
        raise AuthenticationFailed(f"voucher signed by {env.peer_id}, expected relay {relay}")
    voucher = decode_voucher(env.payload)
    if voucher.relay != relay:
        raise AuthenticationFailed(f"voucher names relay {voucher.relay}, expected {relay}")
    return voucher
