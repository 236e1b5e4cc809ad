"""libp2p TLS certificates: make ours, verify the peer's and derive its peer id.

Follows the libp2p TLS handshake spec (``tls/tls.md``): each endpoint presents
a self-signed X.509 certificate whose key is unrelated to its identity; the
identity key is carried in the libp2p Public Key Extension (OID
``1.3.6.1.4.1.53594.1.1``), a DER ``SignedKey ::= SEQUENCE { publicKey OCTET
STRING, signature OCTET STRING }`` where ``publicKey`` is the libp2p
``PublicKey`` protobuf and ``signature`` signs ``"libp2p-tls-handshake:"`` +
the certificate's DER ``SubjectPublicKeyInfo`` with the identity key.

:func:`verify_certificate_chain` checks everything the spec requires (one
certificate, validity period, self-signature, the extension, its signature,
no unknown critical extension, no deprecated unique ids) and raises
:class:`~switchy.stack.errors.AuthenticationFailed` naming what was wrong.
"""

from __future__ import annotations

import datetime
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final, Literal

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from switchy.stack.errors import AuthenticationFailed, InvalidPeerId, SerializationError
from switchy.stack.identity import KeyPair, PeerId, PublicKey
from switchy.transports.quic.der import (
    TAG_OCTET_STRING,
    TAG_SEQUENCE,
    der_children,
    der_encode,
    der_read_one,
)

__all__ = [
    "ALPN",
    "CERTIFICATE_VALIDITY",
    "CLOCK_SKEW",
    "LIBP2P_EXTENSION_OID",
    "MAX_CERTIFICATE_SIZE",
    "SIGNATURE_PREFIX",
    "VERIFIED_CACHE_SIZE",
    "CertificateKeyType",
    "Libp2pCertificate",
    "decode_signed_key",
    "encode_signed_key",
    "make_certificate",
    "verify_certificate_chain",
]

#: The libp2p Public Key Extension (allocated by IANA to the libp2p project).
LIBP2P_EXTENSION_OID: Final = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
#: Prepended to the certificate's SubjectPublicKeyInfo before signing with the identity key.
SIGNATURE_PREFIX: Final = b"libp2p-tls-handshake:"
#: The ALPN protocol of libp2p over TLS and QUIC.
ALPN: Final = "libp2p"
#: Lifetime of the certificates we make.
CERTIFICATE_VALIDITY: Final = datetime.timedelta(days=365)
#: Our certificates start this long before "now", for peers whose clock is behind.
CLOCK_SKEW: Final = datetime.timedelta(hours=1)
#: Largest peer certificate (DER) we parse.
MAX_CERTIFICATE_SIZE: Final = 16 * 1024
#: Verified peer certificates remembered (see ``_verified``).
VERIFIED_CACHE_SIZE: Final = 1024
#: Largest SignedKey extension value we parse (an RSA-4096 key and signature fit).
MAX_SIGNED_KEY_SIZE: Final = 4096

#: Key types for the (throw-away) certificate key.  ECDSA P-256 is what other
#: libp2p implementations use; Ed25519 gives fixed-size handshakes (simulations).
CertificateKeyType = Literal["ecdsa-p256", "ed25519"]

_CertPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@attrs.frozen
class Libp2pCertificate:
    """Our certificate and its private key, ready for a TLS/QUIC configuration."""

    certificate: x509.Certificate
    private_key: _CertPrivateKey
    peer_id: PeerId

    @property
    def der(self) -> bytes:
        """The certificate's DER encoding."""
        return self.certificate.public_bytes(Encoding.DER)


def encode_signed_key(public_key: bytes, signature: bytes) -> bytes:
    """DER ``SignedKey``: the identity key protobuf and its signature."""
    body = der_encode(TAG_OCTET_STRING, public_key) + der_encode(TAG_OCTET_STRING, signature)
    return der_encode(TAG_SEQUENCE, body)


def decode_signed_key(data: bytes) -> tuple[bytes, bytes]:
    """Parse a DER ``SignedKey`` into ``(public_key, signature)``; SerializationError if bad."""
    if len(data) > MAX_SIGNED_KEY_SIZE:
        raise SerializationError(f"SignedKey of {len(data)} bytes exceeds {MAX_SIGNED_KEY_SIZE}")
    seq = der_read_one(data, TAG_SEQUENCE)
    fields = list(der_children(data, seq))
    if len(fields) != 2 or any(f.tag != TAG_OCTET_STRING for f in fields):
        raise SerializationError("SignedKey must be a SEQUENCE of exactly two OCTET STRINGs")
    return fields[0].content(data), fields[1].content(data)


def _new_cert_key(kind: CertificateKeyType) -> _CertPrivateKey:
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown certificate key type {kind!r}")


def make_certificate(
    identity: KeyPair,
    *,
    key_type: CertificateKeyType = "ecdsa-p256",
    now: datetime.datetime | None = None,
) -> Libp2pCertificate:
    """A fresh self-signed certificate carrying ``identity`` in the libp2p extension."""
    private_key = _new_cert_key(key_type)
    spki = private_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    signature = identity.sign(SIGNATURE_PREFIX + spki)
    extension = x509.UnrecognizedExtension(
        LIBP2P_EXTENSION_OID, encode_signed_key(identity.public_key.to_protobuf(), signature)
    )
    # A 63-bit serial with its top bit set: a fixed-size encoding, hence fixed-size handshakes.
    serial = (int.from_bytes(os.urandom(8), "big") >> 2) | (1 << 62)
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial))])
    start = (now or datetime.datetime.now(datetime.UTC)) - CLOCK_SKEW
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + CLOCK_SKEW + CERTIFICATE_VALIDITY)
        .add_extension(extension, critical=False)
    )
    algorithm = hashes.SHA256() if isinstance(private_key, ec.EllipticCurvePrivateKey) else None
    cert = builder.sign(private_key, algorithm)
    return Libp2pCertificate(cert, private_key, identity.peer_id)


def _tbs_spki(der: bytes) -> bytes:
    """The exact DER ``SubjectPublicKeyInfo`` inside a certificate; also refuses unique ids."""
    cert = der_read_one(der, TAG_SEQUENCE)
    children = der_children(der, cert)
    tbs = next(children, None)
    if tbs is None or tbs.tag != TAG_SEQUENCE:
        raise SerializationError("certificate has no tbsCertificate SEQUENCE")
    fields = list(der_children(der, tbs))
    if fields and fields[0].tag == 0xA0:  # [0] EXPLICIT version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
    if len(fields) < 6 or fields[5].tag != TAG_SEQUENCE:
        raise SerializationError("tbsCertificate lacks a SubjectPublicKeyInfo")
    for f in fields[6:]:
        if f.tag in (0x81, 0xA1, 0x82, 0xA2):
            raise SerializationError(
                "certificate carries the deprecated issuerUniqueID/subjectUniqueID"
            )
    return fields[5].raw(der)


def _check_self_signature(cert: x509.Certificate) -> None:
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise AuthenticationFailed(f"certificate key cannot be used: {exc}") from None
    sig = cert.signature
    tbs = cert.tbs_certificate_bytes
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            hash_alg = cert.signature_hash_algorithm
            if hash_alg is None:
                raise AuthenticationFailed("ECDSA certificate signature names no hash")
            key.verify(sig, tbs, ec.ECDSA(hash_alg))
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(sig, tbs)
        elif isinstance(key, rsa.RSAPublicKey):
            hash_alg = cert.signature_hash_algorithm
            params = cert.signature_algorithm_parameters
            if hash_alg is None or not isinstance(params, padding.PKCS1v15 | padding.PSS):
                raise AuthenticationFailed("RSA certificate signature has unsupported parameters")
            key.verify(sig, tbs, params, hash_alg)
        else:
            raise AuthenticationFailed(
                f"certificate key type {type(key).__name__} is not supported"
            )
    except InvalidSignature:
        raise AuthenticationFailed("certificate self-signature is invalid") from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise AuthenticationFailed(f"certificate self-signature cannot be checked: {exc}") from None


#: Certificates already verified: DER -> (peer id, not before, not after).  Peers reuse
#: one certificate for many connections; the signatures of identical bytes verify the same
#: way every time, only the validity period depends on the moment.
_verified: OrderedDict[bytes, tuple[PeerId, datetime.datetime, datetime.datetime]] = OrderedDict()


def verify_certificate_chain(
    chain: Sequence[x509.Certificate | bytes], *, now: datetime.datetime | None = None
) -> PeerId:
    """Verify a peer's certificate chain per the libp2p TLS spec; return its peer id.

    Raises :class:`AuthenticationFailed` naming the first problem found.
    """
    if len(chain) == 1:
        item = chain[0]
        der = item if isinstance(item, bytes) else item.public_bytes(Encoding.DER)
        hit = _verified.get(der)
        if hit is not None:
            peer, start, end = hit
            moment = now or datetime.datetime.now(datetime.UTC)
            if start <= moment <= end:
                _verified.move_to_end(der)
                return peer
        peer = _verify_chain(chain, now=now)
        cert = item if isinstance(item, x509.Certificate) else x509.load_der_x509_certificate(der)
        _verified[der] = (peer, cert.not_valid_before_utc, cert.not_valid_after_utc)
        if len(_verified) > VERIFIED_CACHE_SIZE:
            _verified.popitem(last=False)
        return peer
    return _verify_chain(chain, now=now)


def _verify_chain(
    chain: Sequence[x509.Certificate | bytes], *, now: datetime.datetime | None = None
) -> PeerId:
    if len(chain) != 1:
        raise AuthenticationFailed(f"peer must present exactly one certificate, got {len(chain)}")
    item = chain[0]
    if isinstance(item, bytes):
        if len(item) > MAX_CERTIFICATE_SIZE:
            raise AuthenticationFailed(
                f"certificate of {len(item)} bytes exceeds {MAX_CERTIFICATE_SIZE}"
            )
        try:
            cert = x509.load_der_x509_certificate(item)
        except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion: no ValueError
            raise AuthenticationFailed(f"certificate does not parse: {exc}") from None
        der = item
    else:
        cert = item
        der = cert.public_bytes(Encoding.DER)
        if len(der) > MAX_CERTIFICATE_SIZE:
            raise AuthenticationFailed(
                f"certificate of {len(der)} bytes exceeds {MAX_CERTIFICATE_SIZE}"
            )
    moment = now or datetime.datetime.now(datetime.UTC)
    if moment < cert.not_valid_before_utc:
        raise AuthenticationFailed(
            f"certificate is not valid yet (valid from {cert.not_valid_before_utc.isoformat()})"
        )
    if moment > cert.not_valid_after_utc:
        raise AuthenticationFailed(
            f"certificate has expired (valid until {cert.not_valid_after_utc.isoformat()})"
        )
    try:
        spki = _tbs_spki(der)
    except SerializationError as exc:
        raise AuthenticationFailed(f"malformed certificate: {exc}") from None
    _check_self_signature(cert)
    try:
        extensions = list(cert.extensions)
    except ValueError as exc:
        raise AuthenticationFailed(f"certificate extensions do not parse: {exc}") from None
    signed_key: bytes | None = None
    for ext in extensions:
        if ext.oid == LIBP2P_EXTENSION_OID:
            if signed_key is not None:
                raise AuthenticationFailed("certificate carries the libp2p extension twice")
            value = ext.value
            assert isinstance(value, x509.UnrecognizedExtension)
            signed_key = value.value
        elif ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise AuthenticationFailed(
                f"certificate has an unknown critical extension {ext.oid.dotted_string}"
            )
    if signed_key is None:
        raise AuthenticationFailed(
            "certificate lacks the libp2p public key extension "
            f"({LIBP2P_EXTENSION_OID.dotted_string})"
        )
    try:
        key_bytes, signature = decode_signed_key(signed_key)
    except SerializationError as exc:
        raise AuthenticationFailed(f"malformed libp2p extension: {exc}") from None
    try:
        host_key = PublicKey.from_protobuf(key_bytes)
        valid = host_key.verify(SIGNATURE_PREFIX + spki, signature)
    except InvalidPeerId as exc:
        raise AuthenticationFailed(f"libp2p extension carries a bad host key: {exc}") from None
    if not valid:
        raise AuthenticationFailed(
            "libp2p extension signature does not verify with the host key it carries"
        )
    return host_key.to_peer_id()
