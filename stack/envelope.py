"""libp2p signed envelopes (RFC 0002) and peer records (RFC 0003).

A signed envelope carries an arbitrary payload, a payload type and the
public key that signed both, so that it can be passed through anyone and
still be verified.  The signature covers the *domain* string (never sent:
both sides must agree on it), the payload type and the payload, each
prefixed with its length as an unsigned varint; a signature made for one
domain is therefore worthless in another.

Wire format (protobuf ``record.pb.Envelope``)::

    message Envelope {
      PublicKey public_key = 1;   // libp2p PublicKey protobuf
      bytes payload_type = 2;
      bytes payload = 3;
      bytes signature = 5;
    }

A peer record (``peer.pb.PeerRecord``: ``peer_id = 1``, ``seq = 2``,
``repeated AddressInfo addresses = 3`` with ``AddressInfo.multiaddr = 1``) is
sealed in an envelope with the domain ``libp2p-peer-record`` and the payload
type ``0x03 0x01`` (the ``libp2p-peer-record`` multicodec, as go-libp2p and
py-libp2p write it).  Opening one checks the signature first, then that the
record's peer id is the signing key's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.codec import encode_uvarint, pb_bytes, pb_fields, pb_varint
from switchy.stack.errors import AuthenticationFailed, InvalidPeerId, MessageTooLarge, SerializationError
from switchy.stack.identity import KeyPair, PeerId, PublicKey

__all__ = [
    "MAX_ENVELOPE_SIZE",
    "MAX_RECORD_ADDRS",
    "MAX_RECORD_ADDR_BYTES",
    "MAX_SEQ",
    "PEER_RECORD_DOMAIN",
    "PEER_RECORD_PAYLOAD_TYPE",
    "PeerRecord",
    "SignedEnvelope",
    "open_envelope",
    "open_peer_record",
    "seal_envelope",
    "seal_peer_record",
]

#: Signature domain of peer records.
PEER_RECORD_DOMAIN: Final = "libp2p-peer-record"
#: Payload type of peer records: the ``libp2p-peer-record`` multicodec (0x0301) as two bytes.
PEER_RECORD_PAYLOAD_TYPE: Final = b"\x03\x01"
#: Largest encoded envelope accepted (or produced).
MAX_ENVELOPE_SIZE: Final = 64 * 1024
#: Largest signature accepted (RSA-8192 signatures are 1024 bytes).
MAX_SIGNATURE_SIZE: Final = 1024
#: Largest payload type accepted (a multicodec, optionally followed by a short path).
MAX_PAYLOAD_TYPE_SIZE: Final = 256
#: Most addresses accepted in (or written to) one peer record.
MAX_RECORD_ADDRS: Final = 64
#: Longest binary multiaddr accepted in a peer record.
MAX_RECORD_ADDR_BYTES: Final = 1024
#: Largest ``seq``.  Protobuf allows a uint64, but our varints (like multiformats') stop at
#: 63 bits; time-based sequence numbers (Unix nanoseconds) fit until the year 2262.
MAX_SEQ: Final = (1 << 63) - 1

_F_PUBLIC_KEY: Final = 1
_F_PAYLOAD_TYPE: Final = 2
_F_PAYLOAD: Final = 3
_F_SIGNATURE: Final = 5


@attrs.frozen
class SignedEnvelope:
    """An opened envelope whose signature was verified for the domain it was opened with."""

    #: The key that signed the envelope.
    public_key: PublicKey
    #: The peer id of :attr:`public_key`.
    peer_id: PeerId
    #: The payload type (a multicodec, possibly followed by more bytes).
    payload_type: bytes
    #: The signed payload.
    payload: bytes
    #: The envelope's encoding as received (pass it on unchanged to keep it verifiable).
    raw: bytes


def _signed_data(domain: str, payload_type: bytes, payload: bytes) -> bytes:
    d = domain.encode("utf-8")
    return b"".join(
        (
            encode_uvarint(len(d)),
            d,
            encode_uvarint(len(payload_type)),
            payload_type,
            encode_uvarint(len(payload)),
            payload,
        )
    )


def seal_envelope(key: KeyPair, domain: str, payload_type: bytes, payload: bytes) -> bytes:
    """Sign ``payload`` of ``payload_type`` for ``domain`` with ``key``; the envelope's bytes.

    Empty fields are left out, as protobuf 3 does.  Raises
    :class:`MessageTooLarge` when the envelope would exceed :data:`MAX_ENVELOPE_SIZE`.
    """
    if not isinstance(domain, str):
        raise TypeError(f"an envelope domain is a str, not {type(domain).__name__}")
    payload_type = bytes(payload_type)
    payload = bytes(payload)
    if len(payload_type) > MAX_PAYLOAD_TYPE_SIZE:
        raise MessageTooLarge(
            f"payload type of {len(payload_type)} bytes exceeds {MAX_PAYLOAD_TYPE_SIZE}"
        )
    signature = key.sign(_signed_data(domain, payload_type, payload))
    out = pb_bytes(_F_PUBLIC_KEY, key.public_key.to_protobuf())
    if payload_type:
        out += pb_bytes(_F_PAYLOAD_TYPE, payload_type)
    if payload:
        out += pb_bytes(_F_PAYLOAD, payload)
    out += pb_bytes(_F_SIGNATURE, signature)
    if len(out) > MAX_ENVELOPE_SIZE:
        raise MessageTooLarge(f"envelope of {len(out)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    return out


def open_envelope(
    data: bytes, domain: str, expected_payload_type: bytes | None = None
) -> SignedEnvelope:
    """Parse an envelope and verify its signature for ``domain``.

    Raises :class:`SerializationError` for malformed bytes (including a
    repeated field, a missing key or signature, an unparseable key, a payload
    type other than ``expected_payload_type`` when one is given, and more
    than :data:`MAX_ENVELOPE_SIZE` bytes), and
    :class:`AuthenticationFailed` when the signature does not verify (tampered
    bytes, another signer, or another domain).
    """
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_SIZE:
        raise SerializationError(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}")
    found: dict[int, bytes] = {}
    for field, value in pb_fields(data, max_size=MAX_ENVELOPE_SIZE):
        if field not in (_F_PUBLIC_KEY, _F_PAYLOAD_TYPE, _F_PAYLOAD, _F_SIGNATURE):
            continue  # unknown fields are allowed by protobuf; they are not signed
        if not isinstance(value, bytes):
            raise SerializationError(f"envelope field {field} is not length-delimited")
        if field in found:
            raise SerializationError(f"envelope field {field} appears more than once")
        found[field] = value
    if _F_PUBLIC_KEY not in found:
        raise SerializationError("envelope has no public key (field 1)")
    signature = found.get(_F_SIGNATURE)
    if not signature:
        raise SerializationError("envelope has no signature (field 5)")
    if len(signature) > MAX_SIGNATURE_SIZE:
        raise SerializationError(
            f"envelope signature of {len(signature)} bytes exceeds {MAX_SIGNATURE_SIZE}"
        )
    payload_type = found.get(_F_PAYLOAD_TYPE, b"")
    if len(payload_type) > MAX_PAYLOAD_TYPE_SIZE:
        raise SerializationError(
            f"envelope payload type of {len(payload_type)} bytes exceeds {MAX_PAYLOAD_TYPE_SIZE}"
        )
    payload = found.get(_F_PAYLOAD, b"")
    try:
        public_key = PublicKey.from_protobuf(found[_F_PUBLIC_KEY])
        peer_id = public_key.to_peer_id()
        valid = public_key.verify(_signed_data(domain, payload_type, payload), signature)
    except InvalidPeerId as exc:
        raise SerializationError(f"envelope public key is unusable: {exc}") from None
    if not valid:
        raise AuthenticationFailed(
            f"envelope signature by {peer_id} does not verify for domain {domain!r} "
            "(tampered, or signed for another domain)"
        )
    if expected_payload_type is not None and payload_type != expected_payload_type:
        raise SerializationError(
            f"envelope payload type is {payload_type.hex() or 'empty'}, "
            f"expected {bytes(expected_payload_type).hex()}"
        )
    return SignedEnvelope(public_key, peer_id, payload_type, payload, data)


def _addrs(value: Iterable[Multiaddr]) -> tuple[Multiaddr, ...]:
    return tuple(value)


@attrs.frozen
class PeerRecord:
    """A peer's id, its addresses and a sequence number (RFC 0003), before signing.

    ``seq`` must grow with each new record of a peer; a receiver keeps the
    highest one.
    """

    peer_id: PeerId
    seq: int
    addrs: tuple[Multiaddr, ...] = attrs.field(default=(), converter=_addrs)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.seq, int) or isinstance(self.seq, bool):
            raise TypeError(f"seq is an int, not {type(self.seq).__name__}")
        if not 0 <= self.seq <= MAX_SEQ:
            raise SerializationError(f"seq {self.seq} is not within 0..2**63-1")
        if len(self.addrs) > MAX_RECORD_ADDRS:
            raise MessageTooLarge(
                f"a peer record holds at most {MAX_RECORD_ADDRS} addresses, got {len(self.addrs)}"
            )

    def encode(self) -> bytes:
        """The ``PeerRecord`` protobuf (fields in number order; ``seq`` 0 left out)."""
        out = pb_bytes(1, self.peer_id.to_bytes())
        if self.seq:
            out += pb_varint(2, self.seq)
        for addr in self.addrs:
            out += pb_bytes(3, pb_bytes(1, addr.to_bytes()))
        return out

    @classmethod
    def decode(cls, data: bytes) -> PeerRecord:
        """Parse a ``PeerRecord`` protobuf.

        Addresses this implementation cannot parse (unknown multiaddr
        protocols) are skipped; everything else malformed raises
        :class:`SerializationError` (too many addresses too).
        """
        peer_raw: bytes | None = None
        seq: int | None = None
        addrs: list[Multiaddr] = []
        for field, value in pb_fields(bytes(data), max_size=MAX_ENVELOPE_SIZE):
            if field == 1:
                if not isinstance(value, bytes) or peer_raw is not None:
                    raise SerializationError("peer record peer_id is repeated or not bytes")
                peer_raw = value
            elif field == 2:
                if not isinstance(value, int) or seq is not None:
                    raise SerializationError("peer record seq is repeated or not a varint")
                seq = value
            elif field == 3:
                if not isinstance(value, bytes):
                    raise SerializationError("peer record address is not a message")
                if len(addrs) >= MAX_RECORD_ADDRS:
                    raise SerializationError(
                        f"peer record has more than {MAX_RECORD_ADDRS} addresses"
                    )
                addr = _decode_address_info(value)
                if addr is not None:
                    addrs.append(addr)
        if peer_raw is None:
            raise SerializationError("peer record has no peer_id (field 1)")
        try:
            peer = PeerId.from_bytes(peer_raw)
        except InvalidPeerId as exc:
            raise SerializationError(f"peer record peer_id is invalid: {exc}") from None
        return cls(peer, seq or 0, tuple(addrs))


def _decode_address_info(data: bytes) -> Multiaddr | None:
    if len(data) > MAX_RECORD_ADDR_BYTES + 16:
        raise SerializationError(f"peer record AddressInfo of {len(data)} bytes is too long")
    raw: bytes | None = None
    for field, value in pb_fields(data, max_size=MAX_RECORD_ADDR_BYTES + 16):
        if field == 1:
            if not isinstance(value, bytes) or raw is not None:
                raise SerializationError("AddressInfo multiaddr is repeated or not bytes")
            raw = value
    if raw is None:
        raise SerializationError("AddressInfo has no multiaddr (field 1)")
    if len(raw) > MAX_RECORD_ADDR_BYTES:
        raise SerializationError(
            f"peer record address of {len(raw)} bytes exceeds {MAX_RECORD_ADDR_BYTES}"
        )
    try:
        addr = Multiaddr(raw)
        str(addr)  # bytes are parsed lazily: decode every component now
    except Exception:  # the multiaddr package raises several types for unknown/invalid bytes
        return None
    return addr


def seal_peer_record(key: KeyPair, record: PeerRecord) -> bytes:
    """Seal ``record`` in an envelope signed by ``key`` (whose peer id must be the record's)."""
    if record.peer_id != key.peer_id:
        raise InvalidPeerId(
            f"cannot sign a record of {record.peer_id} with the key of {key.peer_id}"
        )
    return seal_envelope(key, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE, record.encode())


def open_peer_record(data: bytes) -> PeerRecord:
    """Verify a signed peer record and return the record.

    Raises :class:`AuthenticationFailed` for a bad signature or a record whose
    peer id is not the signing key's, :class:`SerializationError` for
    malformed or oversized bytes or another payload type.
    """
    envelope = open_envelope(data, PEER_RECORD_DOMAIN, PEER_RECORD_PAYLOAD_TYPE)
    record = PeerRecord.decode(envelope.payload)
    if record.peer_id != envelope.peer_id:
        raise AuthenticationFailed(
            f"peer record of {record.peer_id} is signed by another peer, {envelope.peer_id}"
        )
    return record
