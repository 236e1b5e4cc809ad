"""Sans-IO DHT records: validators by namespace, the record store and the provider store.

A record key is ``/<namespace>/<rest>``; the namespace's :class:`Validator`
decides whether a value is valid for the key and which of several valid values
is best.  Keys of no known namespace are refused (as go-libp2p does).

Namespaces:

* ``/pk/<peer id multihash>`` (:class:`PublicKeyValidator`): the protobuf
  public key whose peer id is the key.  Any two valid values are equal.
* ``/switchy-name/<name>`` (:class:`NameClaimValidator`): the signed name claim
  of :mod:`switchy.protocols.discovery.claims` for ``name``.  A name resolves
  only to the peer that signed the claim.  The store takes a claim for a name
  it holds only from the same peer with a higher sequence number (a later claim
  by the owner wins); another peer's claim of a held name is rejected until the
  held one expires.

Times are arguments; nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.discovery.claims import open_name_claim
from switchy.protocols.discovery.codec import validate_name
from switchy.stack.errors import (
    AuthenticationFailed,
    InvalidPeerId,
    ProtocolError,
    ResourceLimitExceeded,
    SerializationError,
)
from switchy.stack.identity import PeerId, PublicKey

__all__ = [
    "MAX_PROVIDERS_PER_KEY",
    "MAX_PROVIDER_KEYS",
    "MAX_PROVIDER_KEY_SIZE",
    "MAX_RECORDS",
    "NAME_NAMESPACE",
    "PROVIDER_REPUBLISH",
    "PROVIDER_TTL",
    "RECORD_REPUBLISH",
    "RECORD_TTL",
    "InvalidRecord",
    "NameClaimValidator",
    "ProviderStore",
    "PublicKeyValidator",
    "RecordStore",
    "Validator",
    "default_validators",
    "name_key",
    "pk_key",
    "validate_record",
]

#: How long a stored record lives without being put again (go-libp2p: 36 hours).
RECORD_TTL: Final = 36 * 3600.0
#: How often a record's originator puts it again.
RECORD_REPUBLISH: Final = 12 * 3600.0
#: How long a provider record lives (the spec: 48 hours).
PROVIDER_TTL: Final = 48 * 3600.0
#: How often a provider announces itself again (the spec: 22 hours).
PROVIDER_REPUBLISH: Final = 22 * 3600.0
#: Most records one node stores for others.
MAX_RECORDS: Final = 10_000
#: Most provider keys one node stores, and most providers per key.
MAX_PROVIDER_KEYS: Final = 10_000
MAX_PROVIDERS_PER_KEY: Final = 64
#: Provider keys are opaque bytes of at most 80 bytes (a CID's multihash and more).
MAX_PROVIDER_KEY_SIZE: Final = 80
#: Namespace of signed name claims.
NAME_NAMESPACE: Final = "switchy-name"


class InvalidRecord(ProtocolError):
    """A record failed its namespace's validation."""


class Validator(abc.ABC):
    """Validation and selection of the values of one namespace."""

    @abc.abstractmethod
    def validate(self, key: bytes, value: bytes) -> None:
        """Raise :class:`InvalidRecord` unless ``value`` is valid for ``key``."""

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """The index of the best of several valid ``values`` (default: the first)."""
        return 0

    def accepts_update(self, key: bytes, held: bytes, new: bytes) -> bool:
        """Whether a store holding ``held`` takes ``new`` (both valid).  Default: when
        ``new`` is the better of the two."""
        return self.select(key, [held, new]) == 1


def pk_key(peer: PeerId) -> bytes:
    """The ``/pk/`` key of ``peer``'s public key."""
    return b"/pk/" + peer.multihash


def name_key(name: str) -> bytes:
    """The key of the name claims of ``name``."""
    return f"/{NAME_NAMESPACE}/{validate_name(name)}".encode()


class PublicKeyValidator(Validator):
    """``/pk/<multihash>``: the value is the public key of that peer id."""

    def validate(self, key: bytes, value: bytes) -> None:
        """See :class:`Validator`."""
        try:
            expected = PeerId(key[len(b"/pk/") :])
            public = PublicKey.from_protobuf(value)
        except (InvalidPeerId, SerializationError, ValueError) as exc:
            raise InvalidRecord(f"/pk/ record does not parse: {exc}") from None
        if not expected.matches(public):
            raise InvalidRecord(f"/pk/ record for {expected} holds another peer's key")


class NameClaimValidator(Validator):
    """``/switchy-name/<name>``: a claim of ``name`` signed by its holder."""

    def _claim(self, key: bytes, value: bytes) -> tuple[PeerId, int]:
        try:
            name = key.decode()[len(NAME_NAMESPACE) + 2 :]
            claim = open_name_claim(value, expected_name=name)
        except (UnicodeDecodeError, AuthenticationFailed, SerializationError) as exc:
            raise InvalidRecord(f"name claim record is not valid: {exc}") from None
        except ResourceLimitExceeded as exc:
            raise InvalidRecord(f"name claim record is too large: {exc}") from None
        return claim.peer_id, claim.seq

    def validate(self, key: bytes, value: bytes) -> None:
        """See :class:`Validator`."""
        self._claim(key, value)

    def select(self, key: bytes, values: Sequence[bytes]) -> int:
        """Of claims by one peer the highest sequence number; of claims by several peers,
        the peer whose claims are most numerous among ``values`` (the answers of several
        DHT peers), then its highest sequence number; ties keep the earliest."""
        claims = [self._claim(key, v) for v in values]
        counts: dict[PeerId, int] = {}
        for peer, _ in claims:
            counts[peer] = counts.get(peer, 0) + 1
        best = 0
        for i, (peer, seq) in enumerate(claims):
            bp, bs = claims[best]
            if counts[peer] > counts[bp] or (peer == bp and seq > bs):
                best = i
        return best

    def accepts_update(self, key: bytes, held: bytes, new: bytes) -> bool:
        """Only the holder's own later claim replaces a held claim."""
        held_peer, held_seq = self._claim(key, held)
        new_peer, new_seq = self._claim(key, new)
        return new_peer == held_peer and new_seq > held_seq


def default_validators() -> dict[str, Validator]:
    """The validators of a DHT by default: ``pk`` and :data:`NAME_NAMESPACE`."""
    return {"pk": PublicKeyValidator(), NAME_NAMESPACE: NameClaimValidator()}


def _namespace(key: bytes) -> str:
    parts = key.split(b"/", 2)
    if len(parts) < 3 or parts[0] != b"" or not parts[1]:
        raise InvalidRecord(f"record key {key[:40]!r} has no /namespace/")
    try:
        return parts[1].decode()
    except UnicodeDecodeError:
        raise InvalidRecord("record namespace is not UTF-8") from None


def validate_record(validators: dict[str, Validator], key: bytes, value: bytes) -> Validator:
    """Validate ``value`` for ``key``; returns the namespace's validator.

    Raises :class:`InvalidRecord` for an unknown namespace or an invalid value.
    """
    ns = _namespace(key)
    validator = validators.get(ns)
    if validator is None:
        raise InvalidRecord(f"no validator for the record namespace {ns!r}")
    validator.validate(key, value)
    return validator


@attrs.define
class _Stored:
    value: bytes
    expires: float


class RecordStore:
    """The records a node holds: validated, bounded, expiring."""

    def __init__(
        self,
        validators: dict[str, Validator],
        *,
        ttl: float = RECORD_TTL,
        max_records: int = MAX_RECORDS,
    ) -> None:
        self.validators = validators
        self.ttl = ttl
        self.max_records = max_records
        self._records: dict[bytes, _Stored] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: bytes, now: float) -> bytes | None:
        """The live value of ``key``, if any."""
        stored = self._records.get(key)
        if stored is None:
            return None
        if stored.expires <= now:
            del self._records[key]
            return None
        return stored.value

    def put(self, key: bytes, value: bytes, now: float) -> bool:
        """Store ``value`` for ``key``; returns whether it replaced or added a value (an
        equal value only refreshes its expiry and returns ``True``).

        Raises :class:`InvalidRecord` for an invalid value or one the held value
        keeps out, and :class:`ResourceLimitExceeded` when the store is full.
        """
        validator = validate_record(self.validators, key, value)
        held = self.get(key, now)
        if held is not None and held != value and not validator.accepts_update(key, held, value):
            raise InvalidRecord(f"the record held for {key[:60]!r} is kept (newer or another's)")
        if held is None and len(self._records) >= self.max_records:
            self.expire(now)
            if len(self._records) >= self.max_records:
                raise ResourceLimitExceeded(f"record store full ({self.max_records} records)")
        self._records[key] = _Stored(value, now + self.ttl)
        return True

    def expire(self, now: float) -> int:
        """Drop expired records; returns how many."""
        dead = [k for k, s in self._records.items() if s.expires <= now]
        for k in dead:
            del self._records[k]
        return len(dead)


@attrs.define
class _Provider:
    addrs: tuple[Multiaddr, ...]
    expires: float


class ProviderStore:
    """Who provides which key: bounded, expiring."""

    def __init__(
        self,
        *,
        ttl: float = PROVIDER_TTL,
        max_keys: int = MAX_PROVIDER_KEYS,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.max_per_key = max_per_key
        self._keys: dict[bytes, dict[PeerId, _Provider]] = {}

    def add(self, key: bytes, peer: PeerId, addrs: Sequence[Multiaddr], now: float) -> None:
        """Note that ``peer`` provides ``key``.

        Raises :class:`InvalidRecord` for a key longer than
        :data:`MAX_PROVIDER_KEY_SIZE` and :class:`ResourceLimitExceeded` when full.
        """
        if not key or len(key) > MAX_PROVIDER_KEY_SIZE:
            raise InvalidRecord(f"provider key of {len(key)} bytes (1 to {MAX_PROVIDER_KEY_SIZE})")
        providers = self._keys.get(key)
        if providers is None:
            if len(self._keys) >= self.max_keys:
                self.expire(now)
                if len(self._keys) >= self.max_keys:
                    raise ResourceLimitExceeded(f"provider store full ({self.max_keys} keys)")
            providers = self._keys[key] = {}
        if peer not in providers and len(providers) >= self.max_per_key:
            oldest = min(providers, key=lambda p: providers[p].expires)
            del providers[oldest]
        providers[peer] = _Provider(tuple(addrs), now + self.ttl)

    def get(self, key: bytes, now: float) -> list[tuple[PeerId, tuple[Multiaddr, ...]]]:
        """The live providers of ``key``, most recently announced first."""
        providers = self._keys.get(key, {})
        live = [(p, v) for p, v in providers.items() if v.expires > now]
        live.sort(key=lambda i: -i[1].expires)
        return [(p, v.addrs) for p, v in live]

    def expire(self, now: float) -> int:
        """Drop expired provider records; returns how many."""
        count = 0
        for key in list(self._keys):
            providers = self._keys[key]
            for p in [p for p, v in providers.items() if v.expires <= now]:
                del providers[p]
                count += 1
            if not providers:
                del self._keys[key]
        return count
