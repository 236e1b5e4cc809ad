"""Node identity: Ed25519 key pairs and libp2p peer ids.

Peer ids follow the libp2p peer-id spec: the public key is encoded as the
``PublicKey`` protobuf (``Type``, ``Data``); keys whose encoding is at most 42
bytes are embedded with the identity multihash, larger ones are hashed with
sha2-256.  The text form is base58btc of the multihash (``12D3KooW…`` for
Ed25519); the CIDv1 form (multibase, ``libp2p-key`` codec) is parsed too.

Our own nodes always use Ed25519.  Remote keys of the other libp2p types
(RSA, secp256k1, ECDSA) can be parsed and used to verify signatures so that a
peer using them can still authenticate.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

import base58
import nacl.bindings
import nacl.exceptions
import nacl.signing

from switchy.stack.codec import decode_uvarint, encode_uvarint, pb_bytes, pb_fields, pb_varint
from switchy.stack.errors import (
    AuthenticationFailed,
    InvalidConfiguration,
    InvalidPeerId,
    SerializationError,
)

__all__ = [
    "KEY_TYPE_ECDSA",
    "KEY_TYPE_ED25519",
    "KEY_TYPE_RSA",
    "KEY_TYPE_SECP256K1",
    "Entropy",
    "KeyPair",
    "PeerId",
    "PublicKey",
    "load_or_create_key",
]

KEY_TYPE_RSA: Final = 0
KEY_TYPE_ED25519: Final = 1
KEY_TYPE_SECP256K1: Final = 2
KEY_TYPE_ECDSA: Final = 3
_KEY_TYPE_NAMES = {0: "RSA", 1: "Ed25519", 2: "Secp256k1", 3: "ECDSA"}

#: Largest encoded public key we accept from the wire (RSA 4096 is ~550 bytes).
MAX_PUBLIC_KEY_SIZE: Final = 2048
#: Encoded keys up to this size are inlined with the identity multihash.
_MAX_INLINE_KEY_LENGTH: Final = 42
_MH_IDENTITY: Final = 0x00
_MH_SHA2_256: Final = 0x12
_CID_V1: Final = 0x01
_CODEC_LIBP2P_KEY: Final = 0x72

#: A source of random bytes: ``entropy(n)`` returns ``n`` bytes.
Entropy = Callable[[int], bytes]


class PublicKey:
    """A libp2p public key of any supported type, able to verify signatures."""

    __slots__ = ("_verifier", "data", "key_type")

    def __init__(self, key_type: int, data: bytes) -> None:
        if key_type not in _KEY_TYPE_NAMES:
            raise InvalidPeerId(f"unknown public key type {key_type}")
        if key_type == KEY_TYPE_ED25519 and len(data) != 32:
            raise InvalidPeerId(f"Ed25519 public key must be 32 bytes, got {len(data)}")
        self.key_type = key_type
        self.data = bytes(data)
        self._verifier: Callable[[bytes, bytes], bool] | None = None

    @classmethod
    def from_protobuf(cls, encoded: bytes) -> PublicKey:
        """Parse the ``PublicKey`` protobuf (``Type`` = 1, ``Data`` = 2)."""
        if len(encoded) > MAX_PUBLIC_KEY_SIZE:
            raise InvalidPeerId(f"public key of {len(encoded)} bytes exceeds {MAX_PUBLIC_KEY_SIZE}")
        key_type: int | None = None
        data: bytes | None = None
        try:
            for field, value in pb_fields(encoded):
                if field == 1 and isinstance(value, int):
                    key_type = value
                elif field == 2 and isinstance(value, bytes):
                    data = value
        except SerializationError as exc:
            raise InvalidPeerId(f"malformed public key protobuf: {exc}") from None
        if key_type is None or data is None:
            raise InvalidPeerId("public key protobuf lacks Type or Data")
        return cls(key_type, data)

    def to_protobuf(self) -> bytes:
        """The deterministic ``PublicKey`` protobuf encoding."""
        return pb_varint(1, self.key_type) + pb_bytes(2, self.data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Return whether ``signature`` is this key's valid signature of ``data``."""
        if self._verifier is None:
            self._verifier = _make_verifier(self.key_type, self.data)
        return self._verifier(data, signature)

    def to_peer_id(self) -> PeerId:
        """The peer id derived from this key."""
        return PeerId.from_public_key(self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PublicKey)
            and other.key_type == self.key_type
            and other.data == self.data
        )

    def __hash__(self) -> int:
        return hash((self.key_type, self.data))

    def __repr__(self) -> str:
        return f"PublicKey({_KEY_TYPE_NAMES[self.key_type]}, {self.data.hex()})"


def _make_verifier(key_type: int, data: bytes) -> Callable[[bytes, bytes], bool]:
    if key_type == KEY_TYPE_ED25519:
        vk = nacl.signing.VerifyKey(data)

        def verify_ed25519(msg: bytes, sig: bytes) -> bool:
            if len(sig) != 64:
                return False
            try:
                vk.verify(msg, sig)
            except nacl.exceptions.BadSignatureError:
                return False
            return True

        return verify_ed25519

    # Other key types are rare in practice; import cryptography's parsers lazily.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    try:
        if key_type == KEY_TYPE_SECP256K1:
            ec_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        elif key_type in (KEY_TYPE_ECDSA, KEY_TYPE_RSA):
            loaded = serialization.load_der_public_key(data)
            if key_type == KEY_TYPE_RSA:
                if not isinstance(loaded, rsa.RSAPublicKey):
                    raise InvalidPeerId("RSA key data is not an RSA public key")
                rsa_key = loaded

                def verify_rsa(msg: bytes, sig: bytes) -> bool:
                    try:
                        rsa_key.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
                    except InvalidSignature:
                        return False
                    return True

                return verify_rsa
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise InvalidPeerId("ECDSA key data is not an EC public key")
            ec_key = loaded
        else:  # pragma: no cover - guarded by PublicKey.__init__
            raise InvalidPeerId(f"unknown key type {key_type}")
    except (ValueError, TypeError) as exc:
        raise InvalidPeerId(f"malformed {_KEY_TYPE_NAMES[key_type]} public key: {exc}") from None

    def verify_ec(msg: bytes, sig: bytes) -> bool:
        try:
            ec_key.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    return verify_ec


class KeyPair:
    """An Ed25519 key pair: the identity of a node."""

    __slots__ = ("_signing", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise InvalidPeerId(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        self._signing = nacl.signing.SigningKey(seed)
        self.public_key = PublicKey(KEY_TYPE_ED25519, bytes(self._signing.verify_key))

    @classmethod
    def generate(cls, entropy: Entropy | None = None) -> KeyPair:
        """A fresh key pair from ``entropy`` (default: the OS CSPRNG)."""
        return cls((entropy or os.urandom)(32))

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The deterministic key pair of a 32-byte seed."""
        return cls(seed)

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed.  Keep it secret."""
        return bytes(self._signing)

    @property
    def public_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self.public_key.data

    @property
    def peer_id(self) -> PeerId:
        """The peer id of this key pair."""
        return PeerId.from_public_key(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return nacl.bindings.crypto_sign(data, self._signing._signing_key)[:64]

    def to_protobuf(self) -> bytes:
        """The libp2p ``PrivateKey`` protobuf (``Data`` = seed ‖ public key)."""
        return pb_varint(1, KEY_TYPE_ED25519) + pb_bytes(2, self.seed + self.public_bytes)

    @classmethod
    def from_protobuf(cls, encoded: bytes) -> KeyPair:
        """Parse a libp2p ``PrivateKey`` protobuf holding an Ed25519 key."""
        key_type: int | None = None
        data: bytes | None = None
        try:
            for field, value in pb_fields(encoded, max_size=4096):
                if field == 1 and isinstance(value, int):
                    key_type = value
                elif field == 2 and isinstance(value, bytes):
                    data = value
        except SerializationError as exc:
            raise InvalidPeerId(f"malformed private key protobuf: {exc}") from None
        if key_type != KEY_TYPE_ED25519 or data is None or len(data) not in (32, 64):
            raise InvalidPeerId("private key is not an Ed25519 key (Type 1, 64-byte Data)")
        pair = cls(data[:32])
        if len(data) == 64 and data[32:] != pair.public_bytes:
            raise InvalidPeerId("private key's public half does not match its seed")
        return pair

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to ``path`` (created with mode 0600, replaced atomically)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.to_protobuf())
        finally:
            os.close(fd)
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyPair:
        """Read a key file; refuse one that group or others can read or write.

        A directory raises :class:`InvalidConfiguration` (not a permissions error).
        """
        target = Path(path)
        if target.is_dir():
            raise InvalidConfiguration(f"key file {target} is a directory, not a key file")
        mode = target.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthenticationFailed(
                f"key file {target} has permissions {stat.filemode(mode)}; "
                "it must be readable by its owner only (chmod 600)"
            )
        return cls.from_protobuf(target.read_bytes())

    def __repr__(self) -> str:
        return f"KeyPair({self.peer_id})"


def load_or_create_key(path: str | os.PathLike[str]) -> KeyPair:
    """Load the key at ``path``, or create and save a new one if the file does not exist."""
    if Path(path).exists():
        return KeyPair.load(path)
    pair = KeyPair.generate()
    pair.save(path)
    return pair


#: Peer ids whose text form is remembered across instances (each connection makes a
#: new PeerId for the same remote; base58 encoding is slow pure Python).
_TEXT_CACHE_SIZE: Final = 4096


@functools.lru_cache(maxsize=_TEXT_CACHE_SIZE)
def _base58_text(multihash: bytes) -> str:
    return base58.b58encode(multihash).decode("ascii")


class PeerId:
    """A libp2p peer id: the multihash of a public key."""

    __slots__ = ("_hash", "_str", "multihash")

    def __init__(self, multihash: bytes) -> None:
        _check_multihash(multihash)
        self.multihash = bytes(multihash)
        self._str: str | None = None
        self._hash = hash(self.multihash)

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        """The peer id of ``key`` (identity multihash when the encoding is ≤ 42 bytes)."""
        encoded = key.to_protobuf()
        if len(encoded) <= _MAX_INLINE_KEY_LENGTH:
            return cls(bytes([_MH_IDENTITY]) + encode_uvarint(len(encoded)) + encoded)
        return cls(bytes([_MH_SHA2_256, 32]) + hashlib.sha256(encoded).digest())

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        """Parse the binary multihash form (as carried in ``/p2p/`` and protobufs)."""
        return cls(data)

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc (``12D3KooW…``, ``Qm…``) or a CIDv1 (``bafz…``) peer id."""
        if not text:
            raise InvalidPeerId("empty peer id")
        if text[0] in "1Q":
            try:
                return cls(base58.b58decode(text))
            except ValueError as exc:
                raise InvalidPeerId(f"invalid base58 peer id {text!r}: {exc}") from None
        return cls._from_cid(text)

    @classmethod
    def _from_cid(cls, text: str) -> PeerId:
        prefix, body = text[0], text[1:]
        try:
            if prefix == "b":
                pad = "=" * (-len(body) % 8)
                raw = base64.b32decode(body.upper() + pad)
            elif prefix == "z":
                raw = base58.b58decode(body)
            elif prefix == "f":
                raw = bytes.fromhex(body)
            else:
                raise InvalidPeerId(f"unsupported multibase prefix {prefix!r} in {text!r}")
        except ValueError as exc:
            raise InvalidPeerId(f"invalid CID peer id {text!r}: {exc}") from None
        try:
            r = decode_uvarint(raw)
            if r is None or r[0] != _CID_V1:
                raise InvalidPeerId(f"{text!r} is not a CIDv1")
            r2 = decode_uvarint(raw, r[1])
        except SerializationError as exc:
            raise InvalidPeerId(f"invalid CID peer id {text!r}: {exc}") from None
        if r2 is None or r2[0] != _CODEC_LIBP2P_KEY:
            raise InvalidPeerId(f"CID {text!r} does not use the libp2p-key codec")
        return cls(raw[r2[1] :])

    def to_bytes(self) -> bytes:
        """The binary multihash."""
        return self.multihash

    def to_base58(self) -> str:
        """The canonical text form."""
        if self._str is None:
            self._str = _base58_text(self.multihash)
        return self._str

    def to_cid(self) -> str:
        """The CIDv1 text form (base32, ``libp2p-key`` codec)."""
        raw = bytes([_CID_V1, _CODEC_LIBP2P_KEY]) + self.multihash
        return "b" + base64.b32encode(raw).decode("ascii").lower().rstrip("=")

    def fmt_short(self) -> str:
        """A short form for logs and UIs: the last 6 characters, like ``…`` in libp2p tools."""
        return self.to_base58()[-6:]

    def extract_public_key(self) -> PublicKey | None:
        """The public key inlined in an identity-multihash peer id, else ``None``."""
        if self.multihash[0] != _MH_IDENTITY:
            return None
        r = decode_uvarint(self.multihash, 1)
        assert r is not None  # checked in __init__
        return PublicKey.from_protobuf(self.multihash[r[1] :])

    @property
    def raw(self) -> bytes:
        """The raw 32-byte Ed25519 public key of this peer id."""
        key = self.extract_public_key()
        if key is None or key.key_type != KEY_TYPE_ED25519:
            raise InvalidPeerId(f"peer id {self} does not inline an Ed25519 key")
        return key.data

    def matches(self, key: PublicKey) -> bool:
        """Whether this peer id is the id of ``key``."""
        return PeerId.from_public_key(key) == self

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerId({self.to_base58()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other.multihash == self.multihash

    def __hash__(self) -> int:
        return self._hash


def _check_multihash(mh: bytes) -> None:
    try:
        r = decode_uvarint(mh)
        if r is None:
            raise InvalidPeerId("empty or truncated multihash")
        code, pos = r
        r = decode_uvarint(mh, pos)
    except SerializationError as exc:
        raise InvalidPeerId(f"malformed multihash: {exc}") from None
    if r is None:
        raise InvalidPeerId("truncated multihash length")
    length, pos = r
    if code == _MH_IDENTITY:
        if length > MAX_PUBLIC_KEY_SIZE:
            raise InvalidPeerId(f"identity multihash of {length} bytes is too long")
    elif code == _MH_SHA2_256:
        if length != 32:
            raise InvalidPeerId(f"sha2-256 multihash must have 32 bytes, not {length}")
    else:
        raise InvalidPeerId(f"unsupported multihash code 0x{code:x}")
    if len(mh) - pos != length:
        raise InvalidPeerId(f"multihash claims {length} digest bytes but has {len(mh) - pos}")
    if code == _MH_IDENTITY:
        PublicKey.from_protobuf(mh[pos:])
