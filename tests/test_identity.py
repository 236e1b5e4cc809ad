"""Identity: keys and peer ids against the libp2p peer-id spec's vectors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchy.stack.errors import AuthenticationFailed, InvalidConfiguration, InvalidPeerId
from switchy.stack.identity import (
    KEY_TYPE_ECDSA,
    KEY_TYPE_ED25519,
    KEY_TYPE_SECP256K1,
    KeyPair,
    PeerId,
    PublicKey,
    load_or_create_key,
)

# Test vectors from the libp2p specs repository, peer-ids/peer-ids.md ("Test vectors").
ED25519_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
ED25519_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SECP256K1_PUBLIC = bytes.fromhex(
    "08021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
)
ECDSA_PUBLIC = bytes.fromhex(
    "0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004de3d300fa36ae0e8f5d5"
    "30899d83abab44abf3161f162a4bc901d8e6ecda020e8b6d5f8da30525e71d6851510c098e5c47c646"
    "a597fb4dcec034e9f77c409e62"
)
# The spec's example peer id, in base58btc and as a CIDv1 (same multihash).
SPEC_B58 = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
SPEC_CID = "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"


def test_ed25519_private_vector_round_trips() -> None:
    pair = KeyPair.from_protobuf(ED25519_PRIVATE)
    assert pair.to_protobuf() == ED25519_PRIVATE
    assert pair.public_key.to_protobuf() == ED25519_PUBLIC
    assert pair.public_bytes == ED25519_PUBLIC[4:]


def test_ed25519_peer_id_is_identity_multihash() -> None:
    pair = KeyPair.from_protobuf(ED25519_PRIVATE)
    pid = pair.peer_id
    assert pid.to_bytes() == b"\x00\x24" + ED25519_PUBLIC
    assert str(pid).startswith("12D3KooW")
    assert pid.raw == pair.public_bytes
    assert pid.extract_public_key() == pair.public_key
    assert PeerId.from_string(str(pid)) == pid
    assert PeerId.from_string(pid.to_cid()) == pid
    assert pid.fmt_short() == str(pid)[-6:]


def test_other_key_types_parse_and_hash() -> None:
    secp = PublicKey.from_protobuf(SECP256K1_PUBLIC)
    assert secp.key_type == KEY_TYPE_SECP256K1
    assert secp.to_protobuf() == SECP256K1_PUBLIC
    assert PeerId.from_public_key(secp).to_bytes()[0] == 0x00  # 37 bytes: inlined
    ecdsa = PublicKey.from_protobuf(ECDSA_PUBLIC)
    assert ecdsa.key_type == KEY_TYPE_ECDSA
    mh = PeerId.from_public_key(ecdsa).to_bytes()
    assert mh[:2] == b"\x12\x20" and len(mh) == 34  # 95 bytes: sha2-256
    assert PeerId.from_public_key(ecdsa).extract_public_key() is None


def test_cid_and_base58_forms_agree() -> None:
    assert PeerId.from_string(SPEC_CID) == PeerId.from_string(SPEC_B58)
    assert PeerId.from_string(SPEC_B58).to_cid() == SPEC_CID


def test_sign_and_verify() -> None:
    pair = KeyPair.generate()
    sig = pair.sign(b"message")
    assert len(sig) == 64
    assert pair.public_key.verify(b"message", sig)
    assert not pair.public_key.verify(b"other", sig)
    assert not pair.public_key.verify(b"message", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not pair.public_key.verify(b"message", b"short")


def test_secp256k1_and_ecdsa_signatures_verify() -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    for curve, key_type in ((ec.SECP256K1(), KEY_TYPE_SECP256K1), (ec.SECP256R1(), KEY_TYPE_ECDSA)):
        priv = ec.generate_private_key(curve)
        if key_type == KEY_TYPE_SECP256K1:
            data = priv.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            )
        else:
            data = priv.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        pub = PublicKey(key_type, data)
        sig = priv.sign(b"msg", ec.ECDSA(hashes.SHA256()))
        assert pub.verify(b"msg", sig)
        assert not pub.verify(b"other", sig)


def test_seed_is_deterministic() -> None:
    seed = bytes(range(32))
    assert KeyPair.from_seed(seed).peer_id == KeyPair.from_seed(seed).peer_id
    assert KeyPair.from_seed(seed).seed == seed
    assert KeyPair.generate(lambda n: seed[:n]).peer_id == KeyPair.from_seed(seed).peer_id


@pytest.mark.parametrize(
    "text",
    ["", "12D3KooW", "Qm0OIl", "xyz", "bafz", "b" + "a" * 10, "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDw"],
)
def test_bad_peer_id_strings_rejected(text: str) -> None:
    with pytest.raises(InvalidPeerId):
        PeerId.from_string(text)


@pytest.mark.parametrize(
    "mh",
    [
        b"",
        b"\x00",
        b"\x00\x05abc",
        b"\x12\x20" + b"a" * 31,
        b"\x13\x20" + b"a" * 32,
        b"\x00\x04\x08\x01\x12\x00",
        b"\x00\x03\x08\x09\x10",
    ],
)
def test_bad_multihashes_rejected(mh: bytes) -> None:
    with pytest.raises(InvalidPeerId):
        PeerId.from_bytes(mh)


@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_crash_peer_id_parsing(data: bytes) -> None:
    try:
        pid = PeerId.from_bytes(data)
    except InvalidPeerId:
        return
    assert PeerId.from_string(str(pid)) == pid


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_round_trips(seed: bytes) -> None:
    pid = KeyPair.from_seed(seed).peer_id
    assert PeerId.from_string(str(pid)) == pid
    assert PeerId.from_string(pid.to_cid()) == pid
    assert PeerId.from_bytes(pid.to_bytes()) == pid
    assert hash(PeerId.from_bytes(pid.to_bytes())) == hash(pid)


def test_key_file_written_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    pair = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path).peer_id == pair.peer_id


def test_key_file_readable_by_others_refused(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    KeyPair.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(AuthenticationFailed, match="chmod 600"):
        KeyPair.load(path)


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o755)
    for load in (KeyPair.load, load_or_create_key):
        with pytest.raises(InvalidConfiguration, match="is a directory, not a key file"):
            load(folder)


def test_private_key_with_mismatched_public_half_rejected() -> None:
    bad = bytearray(ED25519_PRIVATE)
    bad[-1] ^= 1
    with pytest.raises(InvalidPeerId, match="does not match"):
        KeyPair.from_protobuf(bytes(bad))


def test_public_key_type_checks() -> None:
    with pytest.raises(InvalidPeerId):
        PublicKey(KEY_TYPE_ED25519, b"short")
    with pytest.raises(InvalidPeerId):
        PublicKey(9, b"x")
    with pytest.raises(InvalidPeerId):
        PublicKey.from_protobuf(b"\x08\x01")
