"""libp2p TLS certificates: the spec's vectors, our round trip, and every way to be refused."""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from switchy.stack.codec import pb_bytes, pb_varint
from switchy.stack.errors import AuthenticationFailed, SerializationError
from switchy.stack.identity import KeyPair, PeerId
from switchy.transports.quic.der import TAG_SEQUENCE, der_children, der_encode, der_read
from switchy.transports.quic.tls import (
    LIBP2P_EXTENSION_OID,
    SIGNATURE_PREFIX,
    decode_signed_key,
    encode_signed_key,
    make_certificate,
    verify_certificate_chain,
)

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "libp2p_tls_certificates.json").read_text()
)["vectors"]
NOW = datetime.datetime.now(datetime.UTC)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["valid"]], ids=lambda v: v["name"])
def test_spec_vectors_valid(vector: dict[str, str]) -> None:
    peer = verify_certificate_chain([bytes.fromhex(vector["certificate"])])
    assert peer == PeerId.from_string(vector["peer_id"])


def test_spec_vector_invalid_is_refused() -> None:
    (vector,) = [v for v in VECTORS if not v["valid"]]
    with pytest.raises(AuthenticationFailed, match="signature does not verify"):
        verify_certificate_chain([bytes.fromhex(vector["certificate"])])


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519"])
def test_our_certificate_round_trip(key_type: str) -> None:
    key = KeyPair.from_seed(bytes(range(32)))
    cert = make_certificate(key, key_type=key_type)  # type: ignore[arg-type]
    assert verify_certificate_chain([cert.der]) == key.peer_id
    assert verify_certificate_chain([cert.certificate]) == key.peer_id
    assert cert.peer_id == key.peer_id
    ext = cert.certificate.extensions.get_extension_for_oid(LIBP2P_EXTENSION_OID)
    assert not ext.critical
    # valid now, and for a long time; starts a little in the past for skewed clocks
    assert cert.certificate.not_valid_before_utc < NOW < cert.certificate.not_valid_after_utc
    assert cert.certificate.not_valid_after_utc > NOW + datetime.timedelta(days=300)


def test_certificates_have_a_fixed_size_per_key_type() -> None:
    key = KeyPair.generate()
    sizes = {len(make_certificate(key, key_type="ed25519").der) for _ in range(20)}
    assert len(sizes) == 1


# --- building hostile certificates ---------------------------------------------------------


def build(
    identity: KeyPair,
    *,
    extension: bytes | None = None,
    with_extension: bool = True,
    sign_spki: bytes | None = None,
    start: datetime.datetime | None = None,
    end: datetime.datetime | None = None,
    extra_critical: bool = False,
    issuer: str = "1",
) -> x509.Certificate:
    """A certificate like ours with one thing changed."""
    cert_key = ec.generate_private_key(ec.SECP256R1())
    spki = cert_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    sig = identity.sign(SIGNATURE_PREFIX + (sign_spki if sign_spki is not None else spki))
    value = (
        extension
        if extension is not None
        else encode_signed_key(identity.public_key.to_protobuf(), sig)
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, issuer)]))
        .public_key(cert_key.public_key())
        .serial_number(1)
        .not_valid_before(start or NOW - datetime.timedelta(hours=1))
        .not_valid_after(end or NOW + datetime.timedelta(days=1))
    )
    if with_extension:
        b = b.add_extension(x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, value), False)
    if extra_critical:
        oid = x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")
        b = b.add_extension(x509.UnrecognizedExtension(oid, b"\x05\x00"), critical=True)
    return b.sign(cert_key, hashes.SHA256())


KEY = KeyPair.from_seed(b"\x07" * 32)


def test_certificate_without_the_extension() -> None:
    with pytest.raises(AuthenticationFailed, match="lacks the libp2p public key extension"):
        verify_certificate_chain([build(KEY, with_extension=False)])


def test_extension_signature_over_another_key() -> None:
    with pytest.raises(AuthenticationFailed, match="signature does not verify"):
        verify_certificate_chain([build(KEY, sign_spki=b"some other key")])


def test_expired_and_not_yet_valid() -> None:
    old = build(KEY, start=NOW - datetime.timedelta(days=10), end=NOW - datetime.timedelta(days=1))
    with pytest.raises(AuthenticationFailed, match="expired"):
        verify_certificate_chain([old])
    future = build(
        KEY, start=NOW + datetime.timedelta(days=1), end=NOW + datetime.timedelta(days=2)
    )
    with pytest.raises(AuthenticationFailed, match="not valid yet"):
        verify_certificate_chain([future])
    # the same certificate is fine at a time inside its window
    assert verify_certificate_chain([old], now=NOW - datetime.timedelta(days=5)) == KEY.peer_id


def test_wrong_and_unknown_key_types() -> None:
    sig = KEY.sign(b"whatever")
    unknown = encode_signed_key(pb_varint(1, 9) + pb_bytes(2, bytes(32)), sig)
    with pytest.raises(AuthenticationFailed, match="unknown public key type 9"):
        verify_certificate_chain([build(KEY, extension=unknown)])
    short = encode_signed_key(pb_varint(1, 1) + pb_bytes(2, bytes(31)), sig)
    with pytest.raises(AuthenticationFailed, match="Ed25519 public key must be 32 bytes"):
        verify_certificate_chain([build(KEY, extension=short)])


def test_malformed_extension_value() -> None:
    with pytest.raises(AuthenticationFailed, match="malformed libp2p extension"):
        verify_certificate_chain([build(KEY, extension=b"\x30\x03\x04\x01")])
    three = der_encode(TAG_SEQUENCE, der_encode(4, b"a") * 3)
    with pytest.raises(AuthenticationFailed, match="exactly two OCTET STRINGs"):
        verify_certificate_chain([build(KEY, extension=three)])


def test_chain_length_and_unknown_critical_extension() -> None:
    good = build(KEY)
    with pytest.raises(AuthenticationFailed, match="exactly one certificate, got 2"):
        verify_certificate_chain([good, good])
    with pytest.raises(AuthenticationFailed, match="exactly one certificate, got 0"):
        verify_certificate_chain([])
    with pytest.raises(
        AuthenticationFailed, match=r"unknown critical extension 1\.3\.6\.1\.4\.1\.99999\.1"
    ):
        verify_certificate_chain([build(KEY, extra_critical=True)])


def test_bad_self_signature_and_garbage() -> None:
    der = bytearray(build(KEY).public_bytes(Encoding.DER))
    der[-5] ^= 0x55  # inside the certificate's signature
    with pytest.raises(AuthenticationFailed, match=r"self-signature|does not parse"):
        verify_certificate_chain([bytes(der)])
    with pytest.raises(AuthenticationFailed, match="does not parse"):
        verify_certificate_chain([b"\x30\x03garbage"])
    with pytest.raises(AuthenticationFailed, match="exceeds"):
        verify_certificate_chain([bytes(20000)])


def test_issuer_name_is_not_required_to_match() -> None:
    # Only the self-signature matters (as in other implementations), not the names.
    assert verify_certificate_chain([build(KEY, issuer="2")]) == KEY.peer_id


# --- codecs ----------------------------------------------------------------------------------


@given(st.binary(max_size=600), st.binary(max_size=600))
def test_signed_key_round_trip(key: bytes, sig: bytes) -> None:
    assert decode_signed_key(encode_signed_key(key, sig)) == (key, sig)


@given(st.binary(max_size=300))
def test_der_parsers_never_crash(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        decode_signed_key(data)
    try:
        tlv = der_read(data)
        assert tlv.end <= len(data)
        if tlv.tag & 0x20:
            for child in der_children(data, tlv):
                assert tlv.content_start <= child.start < child.end <= tlv.end
    except SerializationError:
        pass


def test_der_refuses_non_minimal_and_indefinite_lengths() -> None:
    with pytest.raises(SerializationError, match="non-minimal"):
        der_read(b"\x04\x81\x01a")
    with pytest.raises(SerializationError, match="indefinite"):
        der_read(b"\x30\x80\x00\x00")
    with pytest.raises(SerializationError, match="claims 5 bytes"):
        der_read(b"\x04\x05abc")


def test_verification_cache_still_checks_the_validity_period() -> None:
    key = KeyPair.generate()
    cert = make_certificate(key)
    assert verify_certificate_chain([cert.der]) == key.peer_id
    assert verify_certificate_chain([cert.certificate]) == key.peer_id  # remembered
    later = cert.certificate.not_valid_after_utc + datetime.timedelta(seconds=1)
    with pytest.raises(AuthenticationFailed, match="expired"):
        verify_certificate_chain([cert.der], now=later)
    # a different certificate with the same extension is checked in full, not remembered
    with pytest.raises(AuthenticationFailed, match="signature does not verify"):
        verify_certificate_chain([build(key, sign_spki=b"x")])
