"""DHT records: /pk/ and name-claim validation, selection, stores with expiry and limits."""

from __future__ import annotations

import pytest
from multiaddr import Multiaddr

from switchy.protocols.discovery.claims import seal_name_claim
from switchy.protocols.kad.records import (
    MAX_PROVIDER_KEY_SIZE,
    InvalidRecord,
    NameClaimValidator,
    ProviderStore,
    RecordStore,
    default_validators,
    name_key,
    pk_key,
    validate_record,
)
from switchy.stack.errors import ResourceLimitExceeded
from switchy.stack.identity import KeyPair
from tests.kad_helpers import peer

A = KeyPair.from_seed(b"a" * 32)
B = KeyPair.from_seed(b"b" * 32)
ADDRS = (Multiaddr("/ip4/1.2.3.4/tcp/1"),)


def test_pk_validator() -> None:
    """/pk/<id> holds exactly that peer's key."""
    v = default_validators()
    validate_record(v, pk_key(A.peer_id), A.public_key.to_protobuf())
    with pytest.raises(InvalidRecord, match="another peer's key"):
        validate_record(v, pk_key(A.peer_id), B.public_key.to_protobuf())
    with pytest.raises(InvalidRecord, match="does not parse"):
        validate_record(v, b"/pk/xyz", A.public_key.to_protobuf())
    with pytest.raises(InvalidRecord, match="no validator"):
        validate_record(v, b"/ipns/xyz", b"")
    with pytest.raises(InvalidRecord, match="namespace"):
        validate_record(v, b"plain", b"")


def test_name_claims_owner_wins_by_sequence() -> None:
    """A claim validates only for its own name; the holder's later claim replaces it;
    another peer's claim does not; selection prefers the majority holder."""
    key = name_key("alice")
    a1 = seal_name_claim(A, "alice", ADDRS, 1)
    a2 = seal_name_claim(A, "alice", ADDRS, 2)
    b9 = seal_name_claim(B, "alice", ADDRS, 9)
    store = RecordStore(default_validators())
    assert store.put(key, a1, 0.0)
    assert store.put(key, a2, 1.0)
    with pytest.raises(InvalidRecord, match="kept"):
        store.put(key, a1, 2.0)
    with pytest.raises(InvalidRecord, match="kept"):
        store.put(key, b9, 2.0)
    assert store.get(key, 2.0) == a2
    with pytest.raises(InvalidRecord):
        store.put(name_key("bob"), a1, 0.0)
    v = NameClaimValidator()
    assert v.select(key, [a1, a2]) == 1
    assert v.select(key, [b9, a1, a2]) == 2
    assert v.select(key, [b9, a1]) == 0


def test_record_store_expiry_and_limit() -> None:
    """Records expire after the TTL; a full store refuses new keys but takes updates."""
    store = RecordStore(default_validators(), ttl=10.0, max_records=1)
    store.put(pk_key(A.peer_id), A.public_key.to_protobuf(), 0.0)
    with pytest.raises(ResourceLimitExceeded):
        store.put(pk_key(B.peer_id), B.public_key.to_protobuf(), 5.0)
    assert store.get(pk_key(A.peer_id), 9.9) is not None
    store.put(pk_key(B.peer_id), B.public_key.to_protobuf(), 10.0)
    assert store.get(pk_key(A.peer_id), 10.0) is None
    assert len(store) == 1


def test_provider_store() -> None:
    """Providers expire, are bounded per key and in keys; keys are 1 to 80 bytes."""
    store = ProviderStore(ttl=10.0, max_keys=2, max_per_key=3)
    for i in range(5):
        store.add(b"k", peer(i), ADDRS, float(i))
    assert [p for p, _ in store.get(b"k", 5.0)] == [peer(4), peer(3), peer(2)]
    assert store.get(b"k", 13.5) == [(peer(4), ADDRS)]
    store.add(b"k2", peer(1), (), 0.0)
    with pytest.raises(ResourceLimitExceeded):
        store.add(b"k3", peer(1), (), 1.0)
    store.add(b"k3", peer(1), (), 20.0)  # the expired keys made room
    for bad in (b"", b"x" * (MAX_PROVIDER_KEY_SIZE + 1)):
        with pytest.raises(InvalidRecord):
            store.add(bad, peer(1), (), 0.0)
    store.add(b"x" * MAX_PROVIDER_KEY_SIZE, peer(1), (), 20.0)
