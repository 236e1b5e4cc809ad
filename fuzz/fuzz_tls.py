"""libp2p TLS certificates: arbitrary DER, and valid certificates with an arbitrary libp2p
extension (the signed host key the spec puts in it)."""

from __future__ import annotations

import datetime

from _harness import expected, instrumented, main

with instrumented():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from switchy.transports.quic.tls import (
        LIBP2P_EXTENSION_OID,
        decode_signed_key,
        verify_certificate_chain,
    )

_KEY = ec.generate_private_key(ec.SECP256R1())
_NAME = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")])
_NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _cert_with_extension(value: bytes) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_NAME)
        .issuer_name(_NAME)
        .public_key(_KEY.public_key())
        .serial_number(1)
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=1))
        .add_extension(x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, value), critical=False)
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return builder.sign(_KEY, hashes.SHA256()).public_bytes(Encoding.DER)


def test_one_input(data: bytes) -> None:
    mode = data[0] % 3 if data else 0
    body = data[1:]
    with expected():
        if mode == 0:
            verify_certificate_chain([body], now=_NOW)
        elif mode == 1:
            decode_signed_key(body)
        else:
            verify_certificate_chain([_cert_with_extension(body)], now=_NOW)


if __name__ == "__main__":
    main(test_one_input)
