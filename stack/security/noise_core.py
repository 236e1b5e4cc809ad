"""Sans-IO core of libp2p Noise: ``Noise_XX_25519_ChaChaPoly_SHA256`` plus the libp2p payload.

Nothing here does I/O or touches asyncio; every class takes bytes and returns
bytes (or events), so it can be checked against published test vectors and
driven byte by byte from tests or from the deterministic simulator.

Layers, bottom up:

* :class:`CipherState`, :class:`SymmetricState` and :class:`HandshakeState` are
  the Noise Protocol Framework objects (spec revision 34) for the single suite
  libp2p uses.  The static and ephemeral X25519 keys are injectable; otherwise
  they come from an ``entropy`` callable (default :func:`os.urandom`).
* :class:`HandshakePayload` is the libp2p ``NoiseHandshakePayload`` protobuf
  (``identity_key`` = 1, ``identity_sig`` = 2, ``extensions`` = 4, of which the
  ``stream_muxers`` list, field 2, is understood and everything else ignored).
* :class:`NoiseHandshake` runs the XX handshake with libp2p framing (every
  message prefixed by a 2-byte big-endian length) and authenticates the peer:
  the responder sends its payload in message 2, the initiator in message 3.
  ``receive_data`` returns a :class:`HandshakeComplete` event once the remote
  identity is verified.
* :class:`NoiseTransport` encrypts plaintext into length-prefixed transport
  frames and decrypts frames from any chunking of the received bytes.

Error policy: a frame that cannot be parsed raises
:class:`~switchy.stack.errors.ProtocolError` (or its subclass
:class:`~switchy.stack.errors.SerializationError` for a malformed protobuf); a failed
AEAD tag, a bad identity signature, a bad key or an unexpected peer raises
:class:`~switchy.stack.errors.AuthenticationFailed`.  After any failure the object
refuses further input.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable
from typing import Final

import attrs
import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from switchy.stack.codec import pb_bytes, pb_fields
from switchy.stack.errors import (
    AuthenticationFailed,
    InvalidConfiguration,
    InvalidPeerId,
    ProtocolError,
    SerializationError,
)
from switchy.stack.identity import Entropy, KeyPair, PeerId, PublicKey

__all__ = [
    "DH_SIZE",
    "HASH_SIZE",
    "MAX_FRAME",
    "MAX_NONCE",
    "MAX_PLAINTEXT",
    "MAX_STREAM_MUXERS",
    "NOISE_PROTOCOL",
    "PROTOCOL_NAME",
    "SIGNATURE_PREFIX",
    "TAG_SIZE",
    "CipherState",
    "HandshakeComplete",
    "HandshakePayload",
    "HandshakeState",
    "NoiseCredentials",
    "NoiseHandshake",
    "NoiseTransport",
    "SymmetricState",
    "decode_payload",
    "encode_payload",
    "x25519_public_key",
]

#: The multistream-select protocol id of libp2p Noise.
NOISE_PROTOCOL: Final = "/noise"
#: The Noise protocol name hashed into the initial handshake state.
PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_SHA256"
#: Largest Noise message on the wire: the limit of the 2-byte length prefix.
MAX_FRAME: Final = 65535
#: Size of the Poly1305 authentication tag.
TAG_SIZE: Final = 16
#: Largest plaintext carried by one transport frame (65519 bytes).
MAX_PLAINTEXT: Final = MAX_FRAME - TAG_SIZE
#: Size of an X25519 public key and of a shared secret.
DH_SIZE: Final = 32
#: Size of a SHA-256 digest (``HASHLEN``).
HASH_SIZE: Final = 32
#: Nonce value a cipher state refuses to use: 2^64 - 1 is reserved by the Noise spec.
MAX_NONCE: Final = (1 << 64) - 1
#: Prefix of the data an identity key signs to vouch for a Noise static key.
SIGNATURE_PREFIX: Final = b"noise-libp2p-static-key:"
#: Most entries accepted in the ``stream_muxers`` extension of a remote payload.
MAX_STREAM_MUXERS: Final = 32
#: Longest stream-muxer protocol id accepted in that extension (bytes of UTF-8).
MAX_MUXER_NAME: Final = 1024

_LENGTH: Final = 2  # size of the big-endian frame length prefix
_MSG1_MIN: Final = DH_SIZE  # e
_MSG2_MIN: Final = DH_SIZE + DH_SIZE + TAG_SIZE + TAG_SIZE  # e, enc(s), enc(payload)
_MSG3_MIN: Final = DH_SIZE + TAG_SIZE + TAG_SIZE  # enc(s), enc(payload)

_NONCE: Final = struct.Struct("<4xQ")  # 4 zero bytes, then the 64-bit counter little-endian
_pack_nonce = _NONCE.pack
_pack_length = struct.Struct(">H").pack_into


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise ``HKDF(chaining_key, ikm, 2)`` with HMAC-SHA256."""
    temp = hmac.digest(chaining_key, ikm, "sha256")
    out1 = hmac.digest(temp, b"\x01", "sha256")
    out2 = hmac.digest(temp, out1 + b"\x02", "sha256")
    return out1, out2


def x25519_public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    if len(private) != DH_SIZE:
        raise InvalidConfiguration(f"X25519 private key must be 32 bytes, got {len(private)}")
    public: bytes = nacl.bindings.crypto_scalarmult_base(private)
    return public


def _dh(private: bytes, public: bytes) -> bytes:
    """X25519; a remote key of small order (all-zero result) is an authentication failure."""
    try:
        shared: bytes = nacl.bindings.crypto_scalarmult(private, public)
    except nacl.exceptions.CryptoError:
        raise AuthenticationFailed(
            "remote X25519 public key is invalid (a low-order point)"
        ) from None
    return shared


class CipherState:
    """A Noise ``CipherState``: a ChaCha20-Poly1305 key and a 64-bit counter nonce.

    Without a key (early in the handshake) data passes through unencrypted, as
    the Noise spec prescribes.  The AEAD object is made once per key.
    """

    __slots__ = ("_aead", "nonce")

    def __init__(self, key: bytes | None = None, nonce: int = 0) -> None:
        if key is not None and len(key) != 32:
            raise InvalidConfiguration(f"ChaCha20-Poly1305 key must be 32 bytes, got {len(key)}")
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        #: The next nonce to use (number of messages processed so far).
        self.nonce = nonce

    @property
    def has_key(self) -> bool:
        """Whether a key is set."""
        return self._aead is not None

    def _take_nonce(self) -> bytes:
        n = self.nonce
        if n >= MAX_NONCE:
            raise ProtocolError(
                "Noise nonce exhausted (2^64 - 1 messages); the connection must be re-established"
            )
        self.nonce = n + 1
        return _pack_nonce(n)

    def encrypt_with_ad(self, ad: bytes | None, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Encrypt ``plaintext`` bound to ``ad`` (pass-through without a key)."""
        if self._aead is None:
            return bytes(plaintext)
        return self._aead.encrypt(self._take_nonce(), plaintext, ad)

    def encrypt_into(self, plaintext: memoryview, out: memoryview) -> None:
        """Encrypt ``plaintext`` (no associated data) into ``out`` of ``len + 16`` bytes."""
        if self._aead is None:
            raise ProtocolError("cipher state has no key yet")
        self._aead.encrypt_into(self._take_nonce(), plaintext, None, out)

    def decrypt_with_ad(
        self, ad: bytes | None, ciphertext: bytes | bytearray | memoryview
    ) -> bytes:
        """Decrypt and authenticate; raise :class:`AuthenticationFailed` on a bad tag."""
        if self._aead is None:
            return bytes(ciphertext)
        nonce = self._take_nonce()
        try:
            return self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag:
            raise AuthenticationFailed(
                f"Noise message {self.nonce - 1} failed authentication "
                "(tampered or corrupted frame)"
            ) from None


class SymmetricState:
    """The Noise ``SymmetricState``: chaining key, handshake hash and a cipher state."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASH_SIZE:
            h = protocol_name.ljust(HASH_SIZE, b"\x00")
        else:
            h = hashlib.sha256(protocol_name).digest()
        #: The handshake hash.
        self.h = h
        #: The chaining key.
        self.ck = h
        #: The cipher state used for handshake payloads.
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        """Mix a DH output into the chaining key and rekey the cipher."""
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes | bytearray | memoryview) -> None:
        """``h = SHA-256(h || data)``."""
        self.h = hashlib.sha256(self.h + bytes(data)).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Encrypt with ``h`` as associated data, then mix the ciphertext into ``h``."""
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Decrypt with ``h`` as associated data, then mix the ciphertext into ``h``."""
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The two transport cipher states (initiator→responder, responder→initiator)."""
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


class HandshakeState:
    """The Noise ``XX`` handshake, sans-IO.

    ::

        -> e
        <- e, ee, s, es
        -> s, se

    The initiator calls ``write_message``, ``read_message``, ``write_message``;
    the responder ``read_message``, ``write_message``, ``read_message``.
    ``static``/``ephemeral`` are X25519 private keys for test vectors; missing
    ones are drawn from ``entropy`` (default :func:`os.urandom`).
    ``static_public`` may be given with ``static`` to skip recomputing it.
    After any exception the state refuses further messages.
    """

    def __init__(
        self,
        initiator: bool,
        *,
        prologue: bytes = b"",
        static: bytes | None = None,
        static_public: bytes | None = None,
        ephemeral: bytes | None = None,
        entropy: Entropy | None = None,
    ) -> None:
        rand = entropy or os.urandom
        #: Whether we are the initiator.
        self.initiator = initiator
        self._ss = SymmetricState()
        self._ss.mix_hash(prologue)
        self._s = static if static is not None else rand(DH_SIZE)
        #: Our static X25519 public key.
        self.static_public = (
            static_public
            if static is not None and static_public is not None
            else x25519_public_key(self._s)
        )
        self._ephemeral = ephemeral
        self._rand = rand
        self._e: bytes | None = None
        #: The remote ephemeral public key (once received).
        self.remote_ephemeral: bytes | None = None
        #: The remote static public key (once received and decrypted).
        self.remote_static: bytes | None = None
        self._step = 0
        self._failed: str | None = None

    @property
    def messages_done(self) -> int:
        """How many of the three handshake messages were written or read."""
        return self._step

    @property
    def finished(self) -> bool:
        """Whether all three messages have been processed."""
        return self._step >= 3

    @property
    def handshake_hash(self) -> bytes:
        """The handshake hash ``h`` (a channel binding once finished)."""
        return self._ss.h

    def _check_turn(self, writing: bool) -> int:
        if self._failed is not None:
            raise ProtocolError(f"Noise handshake already failed: {self._failed}")
        step = self._step
        if step >= 3:
            raise ProtocolError("Noise handshake already finished")
        initiator_turn = step % 2 == 0
        if (initiator_turn == self.initiator) != writing:
            verb = "write" if writing else "read"
            raise ProtocolError(f"Noise handshake: not our turn to {verb} message {step + 1}")
        return step

    def _new_ephemeral(self) -> bytes:
        e = self._ephemeral if self._ephemeral is not None else self._rand(DH_SIZE)
        self._ephemeral = None
        self._e = e
        public = x25519_public_key(e)
        self._ss.mix_hash(public)
        return public

    def write_message(self, payload: bytes) -> bytes:
        """Produce our next handshake message carrying ``payload``."""
        step = self._check_turn(writing=True)
        try:
            return self._write(step, payload)
        except Exception as exc:
            self._failed = str(exc)
            raise

    def _write(self, step: int, payload: bytes) -> bytes:
        ss = self._ss
        if step == 0:  # -> e
            out = self._new_ephemeral()
        elif step == 1:  # <- e, ee, s, es
            re = self.remote_ephemeral
            assert re is not None
            out = self._new_ephemeral()
            assert self._e is not None
            ss.mix_key(_dh(self._e, re))
            out += ss.encrypt_and_hash(self.static_public)
            ss.mix_key(_dh(self._s, re))
        else:  # -> s, se
            re = self.remote_ephemeral
            assert re is not None
            out = ss.encrypt_and_hash(self.static_public)
            ss.mix_key(_dh(self._s, re))
        out += ss.encrypt_and_hash(payload)
        self._step = step + 1
        return out

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message; return its payload."""
        step = self._check_turn(writing=False)
        try:
            return self._read(step, message)
        except Exception as exc:
            self._failed = str(exc)
            raise

    def _read(self, step: int, message: bytes) -> bytes:
        ss = self._ss
        minimum = (_MSG1_MIN, _MSG2_MIN, _MSG3_MIN)[step]
        if len(message) < minimum:
            raise ProtocolError(
                f"Noise handshake message {step + 1} has {len(message)} bytes, "
                f"at least {minimum} are needed"
            )
        if step == 0:  # -> e (we are the responder)
            self.remote_ephemeral = message[:DH_SIZE]
            ss.mix_hash(self.remote_ephemeral)
            pos = DH_SIZE
        elif step == 1:  # <- e, ee, s, es (we are the initiator)
            e = self._e
            assert e is not None
            re = message[:DH_SIZE]
            self.remote_ephemeral = re
            ss.mix_hash(re)
            ss.mix_key(_dh(e, re))
            pos = DH_SIZE + DH_SIZE + TAG_SIZE
            rs = ss.decrypt_and_hash(message[DH_SIZE:pos])
            self.remote_static = rs
            ss.mix_key(_dh(e, rs))
        else:  # -> s, se (we are the responder)
            e = self._e
            assert e is not None
            pos = DH_SIZE + TAG_SIZE
            rs = ss.decrypt_and_hash(message[:pos])
            self.remote_static = rs
            ss.mix_key(_dh(e, rs))
        payload = ss.decrypt_and_hash(message[pos:])
        self._step = step + 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` transport cipher states for our role."""
        if self._failed is not None:
            raise ProtocolError(f"Noise handshake failed: {self._failed}")
        if not self.finished:
            raise ProtocolError(f"Noise handshake not finished ({self._step} of 3 messages)")
        c1, c2 = self._ss.split()
        return (c1, c2) if self.initiator else (c2, c1)


# --- the libp2p handshake payload ------------------------------------------------------


def _decode_extensions(data: bytes) -> tuple[str, ...]:
    muxers: list[str] = []
    for field, value in pb_fields(data, max_size=MAX_FRAME):
        if field != 2:
            continue  # webtransport_certhashes (1) and future extensions: ignored
        if not isinstance(value, bytes):
            raise SerializationError("NoiseExtensions.stream_muxers (field 2) must be a string")
        if len(muxers) >= MAX_STREAM_MUXERS:
            raise SerializationError(
                f"NoiseExtensions lists more than {MAX_STREAM_MUXERS} stream muxers"
            )
        if len(value) > MAX_MUXER_NAME:
            raise SerializationError(
                f"stream muxer id of {len(value)} bytes in NoiseExtensions exceeds {MAX_MUXER_NAME}"
            )
        try:
            muxers.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise SerializationError("stream muxer id in NoiseExtensions is not UTF-8") from None
    return tuple(muxers)


@attrs.frozen
class HandshakePayload:
    """The libp2p ``NoiseHandshakePayload`` protobuf.

    ``identity_key`` is the ``PublicKey`` protobuf of the sender's identity,
    ``identity_sig`` its signature of ``"noise-libp2p-static-key:" + static key``.
    ``stream_muxers`` is the optional early-muxer-negotiation hint
    (``NoiseExtensions.stream_muxers``); other extensions are ignored.
    """

    #: The sender's ``PublicKey`` protobuf (field 1).
    identity_key: bytes
    #: Signature of ``SIGNATURE_PREFIX + static key`` by that key (field 2).
    identity_sig: bytes
    #: ``extensions.stream_muxers`` (field 4, sub-field 2).
    stream_muxers: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """The protobuf encoding (fields in number order, extensions only when present)."""
        out = pb_bytes(1, self.identity_key) + pb_bytes(2, self.identity_sig)
        if self.stream_muxers:
            ext = b"".join(pb_bytes(2, m.encode("utf-8")) for m in self.stream_muxers)
            out += pb_bytes(4, ext)
        return out

    @classmethod
    def decode(cls, data: bytes) -> HandshakePayload:
        """Parse the protobuf; raise :class:`SerializationError` when malformed.

        Missing fields decode as empty (proto3); :meth:`verify` rejects them.
        """
        key = b""
        sig = b""
        muxers: tuple[str, ...] = ()
        for field, value in pb_fields(data, max_size=MAX_FRAME):
            if field in (1, 2, 4) and not isinstance(value, bytes):
                raise SerializationError(
                    f"NoiseHandshakePayload field {field} must be length-delimited"
                )
            if field == 1:
                assert isinstance(value, bytes)
                key = value
            elif field == 2:
                assert isinstance(value, bytes)
                sig = value
            elif field == 4:
                assert isinstance(value, bytes)
                muxers = _decode_extensions(value)
        return cls(key, sig, muxers)

    def verify(self, remote_static: bytes) -> PublicKey:
        """Check the signature over ``remote_static``; return the sender's identity key.

        Works for every libp2p key type (Ed25519, RSA, secp256k1, ECDSA).
        Raises :class:`AuthenticationFailed` naming what was wrong.
        """
        if not self.identity_key:
            raise AuthenticationFailed("Noise handshake payload lacks the identity key")
        if not self.identity_sig:
            raise AuthenticationFailed("Noise handshake payload lacks the identity signature")
        try:
            key = PublicKey.from_protobuf(self.identity_key)
            valid = key.verify(SIGNATURE_PREFIX + remote_static, self.identity_sig)
        except InvalidPeerId as exc:
            raise AuthenticationFailed(f"bad identity key in Noise payload: {exc}") from None
        if not valid:
            raise AuthenticationFailed(
                "identity signature over the remote Noise static key is invalid"
            )
        return key


def encode_payload(
    identity: KeyPair, static_public: bytes, *, stream_muxers: Iterable[str] = ()
) -> bytes:
    """Our ``NoiseHandshakePayload``: identity key, signature of the static key, extensions."""
    sig = identity.sign(SIGNATURE_PREFIX + static_public)
    return HandshakePayload(identity.public_key.to_protobuf(), sig, tuple(stream_muxers)).encode()


def decode_payload(data: bytes, remote_static: bytes) -> PublicKey:
    """Parse and verify a payload; return the remote identity key.

    Raises :class:`SerializationError` for a malformed protobuf and
    :class:`AuthenticationFailed` for a missing or bad key or signature.
    """
    return HandshakePayload.decode(data).verify(remote_static)


@attrs.frozen(eq=False)
class NoiseCredentials:
    """Our side of a handshake: identity, Noise static key pair and the signed payload.

    Making these once per identity saves a key generation and a signature
    per connection (the spec allows one static key for all sessions; the
    ephemeral keys stay fresh).  Build with :meth:`create`.
    """

    #: Our libp2p identity key pair.
    identity: KeyPair
    #: Our peer id (what the remote will authenticate us as).
    peer_id: PeerId
    #: The X25519 static private key (kept out of ``repr``).
    static_private: bytes = attrs.field(repr=False)
    #: The X25519 static public key sent in the handshake.
    static_public: bytes
    #: The encoded ``NoiseHandshakePayload`` signing ``static_public``.
    payload: bytes = attrs.field(repr=False)

    @classmethod
    def create(
        cls,
        identity: KeyPair,
        *,
        static: bytes | None = None,
        entropy: Entropy | None = None,
        stream_muxers: Iterable[str] = (),
    ) -> NoiseCredentials:
        """Credentials for ``identity``; ``static`` (X25519 private) defaults to fresh entropy.

        ``stream_muxers`` (optional) is advertised in the ``NoiseExtensions``
        of our payload as an early-muxer-negotiation hint.
        """
        muxers = tuple(stream_muxers)
        if len(muxers) > MAX_STREAM_MUXERS:
            raise InvalidConfiguration(
                f"at most {MAX_STREAM_MUXERS} stream muxers can be advertised, got {len(muxers)}"
            )
        for m in muxers:
            if not m or len(m.encode("utf-8")) > MAX_MUXER_NAME:
                raise InvalidConfiguration(f"invalid stream muxer id {m!r} for NoiseExtensions")
        private = static if static is not None else (entropy or os.urandom)(DH_SIZE)
        public = x25519_public_key(private)
        payload = encode_payload(identity, public, stream_muxers=muxers)
        return cls(identity, identity.peer_id, private, public, payload)


@attrs.frozen
class HandshakeComplete:
    """Event: the handshake finished and the remote identity was verified."""

    #: The remote's libp2p identity key (any key type).
    remote_key: PublicKey
    #: The peer id derived from ``remote_key``.
    remote_peer: PeerId
    #: The remote's ``stream_muxers`` extension (empty when not sent).
    remote_stream_muxers: tuple[str, ...]
    #: The Noise handshake hash (a channel binding).
    handshake_hash: bytes


class NoiseHandshake:
    """The libp2p Noise handshake over a byte stream, sans-IO.

    Write :meth:`data_to_send` to the peer (the initiator has message 1 ready
    at once); feed everything received to :meth:`receive_data`, which returns
    ``[HandshakeComplete(...)]`` when the remote is authenticated, else ``[]``.
    Then :meth:`transport` gives the cipher together with any bytes received
    after the last handshake message.

    ``expected_peer`` (initiator side) makes the handshake fail with
    :class:`AuthenticationFailed` when the remote proves another identity.
    A remote presenting our own identity is refused too.
    """

    def __init__(
        self,
        initiator: bool,
        local: KeyPair | NoiseCredentials,
        *,
        expected_peer: PeerId | None = None,
        entropy: Entropy | None = None,
        ephemeral: bytes | None = None,
        prologue: bytes = b"",
    ) -> None:
        creds = (
            local
            if isinstance(local, NoiseCredentials)
            else NoiseCredentials.create(local, entropy=entropy)
        )
        #: Whether we are the initiator.
        self.initiator = initiator
        #: Our credentials (identity, static key, payload).
        self.credentials = creds
        #: The peer the remote must authenticate as (``None``: anyone but ourselves).
        self.expected_peer = expected_peer
        self._hs = HandshakeState(
            initiator,
            prologue=prologue,
            static=creds.static_private,
            static_public=creds.static_public,
            ephemeral=ephemeral,
            entropy=entropy,
        )
        self._in = bytearray()
        self._out = bytearray()
        self._failed: str | None = None
        #: The completion event, once the handshake is complete.
        self.result: HandshakeComplete | None = None
        if initiator:
            self._send(self._hs.write_message(b""))

    @property
    def complete(self) -> bool:
        """Whether the remote is authenticated and our last message is queued."""
        return self.result is not None

    @property
    def remote_key(self) -> PublicKey | None:
        """The authenticated remote identity key (``None`` until complete)."""
        return self.result.remote_key if self.result is not None else None

    @property
    def remote_peer(self) -> PeerId | None:
        """The authenticated remote peer id (``None`` until complete)."""
        return self.result.remote_peer if self.result is not None else None

    @property
    def buffered(self) -> int:
        """Received bytes not yet consumed (an incomplete message, or transport data)."""
        return len(self._in)

    def _send(self, message: bytes) -> None:
        if len(message) > MAX_FRAME:
            raise ProtocolError(
                f"Noise handshake message of {len(message)} bytes exceeds {MAX_FRAME}"
            )
        self._out += len(message).to_bytes(_LENGTH, "big")
        self._out += message

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (``b""`` when none)."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[HandshakeComplete]:
        """Feed bytes from the peer, in any chunking.

        Returns ``[HandshakeComplete]`` on the call that completes the
        handshake, ``[]`` otherwise.  Bytes after the last handshake message
        are kept for :meth:`transport`.
        """
        if self._failed is not None:
            raise ProtocolError(f"Noise handshake already failed: {self._failed}")
        buf = self._in
        buf += data
        if self.result is not None:
            return []
        try:
            while len(buf) >= _LENGTH:
                length = (buf[0] << 8) | buf[1]
                end = _LENGTH + length
                if len(buf) < end:
                    break
                message = bytes(buf[_LENGTH:end])
                del buf[:end]
                event = self._on_message(message)
                if event is not None:
                    self.result = event
                    return [event]
        except Exception as exc:
            self._failed = str(exc)
            self._out.clear()
            raise
        return []

    def _on_message(self, message: bytes) -> HandshakeComplete | None:
        hs = self._hs
        # Message 1 carries no libp2p payload (the spec forbids sending one before
        # secrecy); anything there is unauthenticated, hashed in and otherwise ignored.
        payload = hs.read_message(message)
        if hs.messages_done == 1:  # responder read message 1: answer with message 2
            self._send(hs.write_message(self.credentials.payload))
            return None
        rs = hs.remote_static
        assert rs is not None
        parsed = HandshakePayload.decode(payload)
        key = parsed.verify(rs)
        peer = PeerId.from_public_key(key)
        if self.expected_peer is not None and peer != self.expected_peer:
            raise AuthenticationFailed(
                f"expected peer {self.expected_peer} but the remote authenticated as {peer}"
            )
        if peer == self.credentials.peer_id:
            raise AuthenticationFailed(f"the remote presented our own identity {peer}")
        if hs.messages_done == 2:  # initiator read message 2: finish with message 3
            self._send(hs.write_message(self.credentials.payload))
        return HandshakeComplete(key, peer, parsed.stream_muxers, hs.handshake_hash)

    def transport(self) -> tuple[NoiseTransport, bytes]:
        """The transport cipher and the bytes already received for it (once complete)."""
        if self.result is None:
            raise ProtocolError("Noise handshake not complete")
        send, recv = self._hs.split()
        leftover = bytes(self._in)
        self._in.clear()
        return NoiseTransport(send, recv), leftover


class NoiseTransport:
    """Post-handshake encryption: plaintext to frames, any chunking of frames to plaintext.

    :meth:`encrypt` splits plaintext into frames of at most
    :data:`MAX_PLAINTEXT` bytes, each ``length(2, big-endian) || ciphertext ||
    tag``, all in one buffer.  :meth:`decrypt` decrypts every complete frame
    straight out of the received chunk (no copy); only a frame split across
    chunks is gathered in a small buffer.
    """

    __slots__ = ("_error", "_pending", "recv_cipher", "send_cipher")

    def __init__(self, send: CipherState, recv: CipherState) -> None:
        #: Cipher state of the direction we send.
        self.send_cipher = send
        #: Cipher state of the direction we receive.
        self.recv_cipher = recv
        self._pending = bytearray()
        self._error: str | None = None

    @staticmethod
    def framed_size(n: int) -> int:
        """Bytes on the wire for ``n`` bytes of plaintext."""
        frames = max(1, -(-n // MAX_PLAINTEXT))
        return n + frames * (_LENGTH + TAG_SIZE)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytearray:
        """Encrypt ``data`` into one or more frames (one tag-only frame when empty)."""
        n = len(data)
        out = bytearray(self.framed_size(n))
        cipher = self.send_cipher
        with memoryview(data) as src, memoryview(out) as dst:
            if src.itemsize != 1:
                raise TypeError("Noise plaintext must be a byte buffer")
            pos = 0
            off = 0
            while True:
                chunk = src[off : off + MAX_PLAINTEXT]
                size = len(chunk) + TAG_SIZE
                _pack_length(out, pos, size)
                pos += _LENGTH
                cipher.encrypt_into(chunk, dst[pos : pos + size])
                pos += size
                off += MAX_PLAINTEXT
                if off >= n:
                    break
        return out

    @property
    def buffered(self) -> int:
        """Received bytes of an incomplete frame."""
        return len(self._pending)

    def _fail(self, exc: Exception) -> None:
        self._error = str(exc)
        self._pending = bytearray()

    def decrypt(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Feed received bytes; return the plaintexts of the frames they complete.

        Empty plaintexts are left out.  Raises :class:`AuthenticationFailed` for a
        frame that fails authentication and :class:`ProtocolError` for a length
        shorter than a tag; afterwards every call raises.
        """
        if self._error is not None:
            raise AuthenticationFailed(f"Noise transport already failed: {self._error}")
        out: list[bytes] = []
        try:
            with memoryview(data) as view:
                pos = self._complete_pending(view, out) if self._pending else 0
                if self._pending:
                    return out
                end = len(view)
                recv = self.recv_cipher
                while end - pos >= _LENGTH:
                    length = (view[pos] << 8) | view[pos + 1]
                    if length < TAG_SIZE:
                        raise ProtocolError(
                            f"Noise frame of {length} bytes is shorter than its {TAG_SIZE}-byte tag"
                        )
                    stop = pos + _LENGTH + length
                    if stop > end:
                        break
                    plaintext = recv.decrypt_with_ad(None, view[pos + _LENGTH : stop])
                    if plaintext:
                        out.append(plaintext)
                    pos = stop
                if pos < end:
                    self._pending = bytearray(view[pos:])
        except Exception as exc:
            self._fail(exc)
            raise
        return out

    def _complete_pending(self, view: memoryview, out: list[bytes]) -> int:
        """Continue the frame held from earlier chunks; return how much of ``view`` it used."""
        pend = self._pending
        pos = 0
        if len(pend) < _LENGTH:
            pos = min(_LENGTH - len(pend), len(view))
            pend += view[:pos]
            if len(pend) < _LENGTH:
                return pos
        length = (pend[0] << 8) | pend[1]
        if length < TAG_SIZE:
            raise ProtocolError(
                f"Noise frame of {length} bytes is shorter than its {TAG_SIZE}-byte tag"
            )
        take = min(_LENGTH + length - len(pend), len(view) - pos)
        pend += view[pos : pos + take]
        pos += take
        if len(pend) == _LENGTH + length:
            self._pending = bytearray()
            with memoryview(pend) as frame:
                plaintext = self.recv_cipher.decrypt_with_ad(None, frame[_LENGTH:])
            if plaintext:
                out.append(plaintext)
        return pos
