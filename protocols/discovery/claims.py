"""Signed name claims: "name N is held by peer P, reachable at these addresses".

A claim is a signed envelope (RFC 0002) with the domain
:data:`NAME_CLAIM_DOMAIN` and the payload type :data:`NAME_CLAIM_PAYLOAD_TYPE`
whose payload is the msgpack map ``{"name": N, "record": <signed peer record>}``.
The inner signed peer record is libp2p's (RFC 0003), so it can be handed on
unchanged.  Both must be signed by the same key, and the record must be that
key's; so a registry, or anyone else passing a claim on, can neither bind a
name to a peer that did not claim it nor change the peer's addresses.
"""

from __future__ import annotations

from typing import Final

import attrs
import msgpack
from multiaddr import Multiaddr

from switchy.protocols.discovery.codec import MAX_CLAIM_SIZE, validate_name
from switchy.stack.envelope import (
    PeerRecord,
    SignedEnvelope,
    open_envelope,
    open_peer_record,
    seal_envelope,
)
from switchy.stack.envelope import seal_peer_record as _seal_record
from switchy.stack.errors import AuthenticationFailed, MessageTooLarge, SerializationError
from switchy.stack.identity import KeyPair, PeerId

__all__ = [
    "NAME_CLAIM_DOMAIN",
    "NAME_CLAIM_PAYLOAD_TYPE",
    "NameClaim",
    "open_name_claim",
    "seal_name_claim",
]

#: Signature domain of name claims.
NAME_CLAIM_DOMAIN: Final = "switchy-discovery-name"
#: Payload type of name claims: a path under the multicodec ``namespace`` (``/``).
NAME_CLAIM_PAYLOAD_TYPE: Final = b"/switchy/discovery/name"


@attrs.frozen
class NameClaim:
    """A verified claim: who holds ``name`` and where it can be reached."""

    name: str
    record: PeerRecord
    #: The claim's envelope bytes, as verified.
    raw: bytes

    @property
    def peer_id(self) -> PeerId:
        """The peer holding the name."""
        return self.record.peer_id

    @property
    def addrs(self) -> tuple[Multiaddr, ...]:
        """The peer's signed addresses."""
        return self.record.addrs

    @property
    def seq(self) -> int:
        """The sequence number of the peer record."""
        return self.record.seq


def seal_name_claim(key: KeyPair, name: str, addrs: tuple[Multiaddr, ...], seq: int) -> bytes:
    """Sign a claim of ``name`` by ``key``'s peer, reachable at ``addrs``.

    Raises :class:`SerializationError` for an invalid name and
    :class:`MessageTooLarge` when the claim exceeds :data:`MAX_CLAIM_SIZE`.
    """
    validate_name(name)
    record = _seal_record(key, PeerRecord(key.peer_id, seq, addrs))
    payload = msgpack.packb({"name": name, "record": record}, use_bin_type=True)
    claim = seal_envelope(key, NAME_CLAIM_DOMAIN, NAME_CLAIM_PAYLOAD_TYPE, payload)
    if len(claim) > MAX_CLAIM_SIZE:
        raise MessageTooLarge(
            f"name claim of {len(claim)} bytes exceeds {MAX_CLAIM_SIZE} (too many addresses?)"
        )
    return claim


def open_name_claim(data: bytes, expected_name: str | None = None) -> NameClaim:
    """Verify a claim; with ``expected_name``, also that it claims that name.

    Raises :class:`AuthenticationFailed` for any signature that does not
    verify, a record of another peer than the claim's signer, or a claim of
    another name; :class:`SerializationError` (or :class:`MessageTooLarge`)
    for malformed bytes.
    """
    if len(data) > MAX_CLAIM_SIZE:
        raise MessageTooLarge(f"name claim of {len(data)} bytes exceeds {MAX_CLAIM_SIZE}")
    envelope = open_envelope(data, NAME_CLAIM_DOMAIN, NAME_CLAIM_PAYLOAD_TYPE)
    name, record_bytes = _decode_payload(envelope)
    record = open_peer_record(record_bytes)
    if record.peer_id != envelope.peer_id:
        raise AuthenticationFailed(
            f"claim of {name!r} signed by {envelope.peer_id} carries the record of {record.peer_id}"
        )
    if expected_name is not None and name != expected_name:
        raise AuthenticationFailed(
            f"asked for {expected_name!r} but the claim by {envelope.peer_id} is for {name!r}"
        )
    return NameClaim(name, record, bytes(data))


def _decode_payload(envelope: SignedEnvelope) -> tuple[str, bytes]:
    try:
        obj = msgpack.unpackb(
            envelope.payload,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_CLAIM_SIZE,
            max_bin_len=MAX_CLAIM_SIZE,
            max_array_len=8,
            max_map_len=8,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise SerializationError(f"name claim payload is not msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise SerializationError("name claim payload is not a map")
    record = obj.get("record")
    if not isinstance(record, bytes):
        raise SerializationError("name claim has no binary record")
    return validate_name(obj.get("name")), record
