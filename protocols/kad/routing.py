"""Sans-IO Kademlia routing table: k-buckets by XOR distance of SHA-256 keys.

Every peer id (and every record key) lives in the keyspace as the SHA-256 of
its bytes (:func:`kad_key`); the distance of two keys is their XOR.  Bucket
``i`` holds peers whose key shares exactly ``255 - i`` leading bits with ours,
that is whose distance has bit length ``i + 1``.  Each bucket holds at most
:data:`K` peers and at most :data:`MAX_PER_GROUP` peers of one IPv4 /24 (IPv6
/48) network, so one operator with one subnet cannot fill a bucket.

A full bucket does not evict a peer it has: the newcomer waits in the bucket's
replacement cache and :meth:`RoutingTable.add` names the least recently seen
peer, which the caller pings.  A peer that does not answer is removed with
:meth:`RoutingTable.remove` and the freshest replacement that fits takes its
place.  The table does no I/O and reads no clock: times are arguments.

A failed query alone does not drop a peer (:meth:`RoutingTable.failed`): a peer that
failed on a connection still open is unresponsive and goes; one we could not reach
(the dial failed or timed out, or the connection was lost meanwhile) goes only when
a replacement waits for its bucket or after :data:`MAX_DIAL_FAILURES` such failures
in a row (an answer clears the count); a failure of our own limits says nothing
about the peer.  A table entry needs no open
connection: the connection manager may close it, a query dials again.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.identity import PeerId

__all__ = [
    "KEY_BITS",
    "KEY_CACHE_SIZE",
    "MAX_DIAL_FAILURES",
    "MAX_PER_GROUP",
    "AddOutcome",
    "AddResult",
    "Entry",
    "Failure",
    "K",
    "RoutingTable",
    "bucket_index",
    "kad_key",
    "network_group",
]

#: Bucket size and replication factor (the spec's k).
K: Final = 20
#: Bits of a key (SHA-256).
KEY_BITS: Final = 256
#: At most this many peers of one network group (IPv4 /24, IPv6 /48) per bucket.
MAX_PER_GROUP: Final = 2
#: Failed dials in a row after which a peer leaves the table even with no replacement.
MAX_DIAL_FAILURES: Final = 3


#: Keyspace positions remembered by :func:`kad_key` (the most recently used).
KEY_CACHE_SIZE: Final = 1 << 16


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def kad_key(data: bytes) -> int:
    """The keyspace position of a peer id's bytes or a record key: SHA-256 as an integer
    (the last :data:`KEY_CACHE_SIZE` are remembered: lookups and tables ask for the same
    peers' positions again and again)."""
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def bucket_index(local: int, key: int) -> int:
    """The bucket of ``key`` seen from ``local``: bit length of the distance minus one
    (``-1`` for ``local`` itself)."""
    return (local ^ key).bit_length() - 1


def network_group(addrs: Iterable[Multiaddr]) -> str | None:
    """The network group of a peer's addresses for the per-bucket limit: the /24 of its
    first globally routable IPv4 address or the /48 of its first such IPv6 address.

    Loopback, private (a LAN's peers share one /24), link-local and other special
    addresses, and addresses without IP (simulator, relays) have no group.
    """
    for addr in addrs:
        for proto, value in _ip_parts(addr):
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                continue
            if not ip.is_global:
                continue
            prefix = 24 if proto == "ip4" else 48
            return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    return None


def _ip_parts(addr: Multiaddr) -> list[tuple[str, str]]:
    parts = str(addr).split("/")
    out = []
    for i in range(1, len(parts) - 1):
        if parts[i] in ("ip4", "ip6"):
            out.append((parts[i], parts[i + 1]))
            break
    return out


@attrs.define
class Entry:
    """A peer in the table."""

    peer_id: PeerId
    key: int
    addrs: tuple[Multiaddr, ...]
    group: str | None
    last_seen: float
    #: Failed dials since it last answered (see :meth:`RoutingTable.failed`).
    dial_failures: int = 0


class Failure(enum.Enum):
    """Why a query to a peer failed, for :meth:`RoutingTable.failed`."""

    #: It failed on a connection still open (no answer, reset, broken protocol).
    UNRESPONSIVE = "unresponsive"
    #: There is no connection: the dial failed or timed out, or the connection was
    #: lost meanwhile (closed by either side: trimmed, or the peer went away).
    UNREACHABLE = "unreachable"
    #: A limit refused it: ours (dials, connections, memory), or the peer refused the
    #: stream (it is alive, only busy).  Nothing is learned about the peer.
    LIMITED = "limited"


class AddOutcome(enum.Enum):
    """What :meth:`RoutingTable.add` did."""

    ADDED = "added"
    UPDATED = "updated"
    #: The bucket is full: the peer waits as a replacement; ping ``AddResult.ping``.
    PENDING = "pending"
    #: Not taken: ourselves, or the network group's quota of the bucket is used.
    REJECTED = "rejected"


@attrs.frozen
class AddResult:
    """Outcome of :meth:`RoutingTable.add`."""

    outcome: AddOutcome
    #: For ``PENDING``: the least recently seen peer of the bucket, to be pinged.
    ping: PeerId | None = None
    reason: str = ""


class RoutingTable:
    """k-buckets around ``local`` (see the module docstring)."""

    def __init__(
        self,
        local: PeerId,
        *,
        k: int = K,
        max_per_group: int = MAX_PER_GROUP,
        group_of: Callable[[Iterable[Multiaddr]], str | None] = network_group,
    ) -> None:
        self.local = local
        self.local_key = kad_key(local.multihash)
        self.k = k
        self.max_per_group = max_per_group
        self._group_of = group_of
        self._buckets: dict[int, dict[PeerId, Entry]] = {}
        self._replacements: dict[int, dict[PeerId, Entry]] = {}
        #: When each bucket last had a lookup into it (refresh bookkeeping).
        self._touched: dict[int, float] = {}

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, PeerId):
            return False
        bucket = self._buckets.get(self.index_of(peer))
        return bucket is not None and peer in bucket

    def index_of(self, peer: PeerId) -> int:
        """The bucket index of ``peer``."""
        return bucket_index(self.local_key, kad_key(peer.multihash))

    def get(self, peer: PeerId) -> Entry | None:
        """The entry of ``peer``, if it is in the table."""
        return self._buckets.get(self.index_of(peer), {}).get(peer)

    def peers(self) -> list[PeerId]:
        """Every peer in the table."""
        return [p for b in self._buckets.values() for p in b]

    def bucket(self, index: int) -> list[Entry]:
        """The entries of bucket ``index``, least recently seen first."""
        return sorted(self._buckets.get(index, {}).values(), key=lambda e: e.last_seen)

    def replacements(self, index: int) -> list[PeerId]:
        """The replacement cache of bucket ``index``, freshest first."""
        entries = self._replacements.get(index, {}).values()
        return [e.peer_id for e in sorted(entries, key=lambda e: -e.last_seen)]

    def _group_full(self, bucket: dict[PeerId, Entry], group: str | None, peer: PeerId) -> bool:
        if group is None:
            return False
        same = sum(1 for e in bucket.values() if e.group == group and e.peer_id != peer)
        return same >= self.max_per_group

    def add(self, peer: PeerId, addrs: Sequence[Multiaddr], now: float) -> AddResult:
        """Note that ``peer`` (a DHT server) answered us or asked us, at ``now``."""
        if peer == self.local:
            return AddResult(AddOutcome.REJECTED, reason="our own id")
        index = self.index_of(peer)
        bucket = self._buckets.setdefault(index, {})
        entry = bucket.get(peer)
        addrs_t = tuple(addrs)
        if entry is not None:
            entry.last_seen = now
            entry.dial_failures = 0
            if addrs_t:
                entry.addrs = addrs_t
                entry.group = self._group_of(addrs_t)
            return AddResult(AddOutcome.UPDATED)
        group = self._group_of(addrs_t)
        if self._group_full(bucket, group, peer):
            return AddResult(AddOutcome.REJECTED, reason=f"{self.max_per_group} peers of {group}")
        new = Entry(peer, kad_key(peer.multihash), addrs_t, group, now)
        if len(bucket) < self.k:
            bucket[peer] = new
            self._replacements.get(index, {}).pop(peer, None)
            return AddResult(AddOutcome.ADDED)
        cache = self._replacements.setdefault(index, {})
        cache[peer] = new
        if len(cache) > self.k:
            oldest = min(cache.values(), key=lambda e: e.last_seen)
            del cache[oldest.peer_id]
        stale = min(bucket.values(), key=lambda e: e.last_seen)
        return AddResult(AddOutcome.PENDING, ping=stale.peer_id)

    def seen(self, peer: PeerId, now: float) -> None:
        """``peer`` answered (a ping): it stays, as the most recently seen."""
        entry = self.get(peer)
        if entry is not None:
            entry.last_seen = now
            entry.dial_failures = 0

    def failed(self, peer: PeerId, why: Failure) -> bool:
        """A query to ``peer`` failed for ``why``; returns whether ``peer`` left the table
        (see the module docstring: an unresponsive peer goes, an unreachable one when a
        replacement waits or after :data:`MAX_DIAL_FAILURES` in a row, a limit keeps it)."""
        entry = self.get(peer)
        if entry is None or why is Failure.LIMITED:
            return False
        if why is Failure.UNREACHABLE:
            entry.dial_failures += 1
            waiting = bool(self._replacements.get(self.index_of(peer)))
            if not waiting and entry.dial_failures < MAX_DIAL_FAILURES:
                return False
        self.remove(peer)
        return True

    def remove(self, peer: PeerId) -> PeerId | None:
        """Drop ``peer`` (unresponsive, or no longer a server); returns the replacement
        that took its place, if any."""
        index = self.index_of(peer)
        self._replacements.get(index, {}).pop(peer, None)
        bucket = self._buckets.get(index)
        if bucket is None or bucket.pop(peer, None) is None:
            return None
        cache = self._replacements.get(index, {})
        for candidate in sorted(cache.values(), key=lambda e: -e.last_seen):
            if not self._group_full(bucket, candidate.group, candidate.peer_id):
                del cache[candidate.peer_id]
                bucket[candidate.peer_id] = candidate
                return candidate.peer_id
        return None

    def closest(self, key: int, count: int | None = None) -> list[Entry]:
        """The ``count`` (default k) entries closest to ``key``, closest first.

        Walks the buckets in order of distance instead of sorting every entry: seen from
        ``key``, the entries of bucket ``j`` (the one ``key`` falls in) are closer than
        those of all buckets below ``j`` together, which are closer than those of bucket
        ``j + 1``, then ``j + 2``, and so on; only the groups that reach ``count`` are
        sorted.
        """
        want = self.k if count is None else count
        if want <= 0:
            return []
        j = bucket_index(self.local_key, key)
        out: list[Entry] = []
        buckets = self._buckets

        def take(group: list[Entry]) -> bool:
            need = want - len(out)
            if len(group) > need:
                out.extend(heapq.nsmallest(need, group, key=lambda e: e.key ^ key))
            else:
                group.sort(key=lambda e: e.key ^ key)
                out.extend(group)
            return len(out) >= want

        if j >= 0:
            own = buckets.get(j)
            if own and take(list(own.values())):
                return out
            below = [e for i, b in buckets.items() if i < j for e in b.values()]
            if below and take(below):
                return out
        for i in sorted(i for i in buckets if i > j):
            if buckets[i] and take(list(buckets[i].values())):
                return out
        return out

    def touch_bucket(self, index: int, now: float) -> None:
        """A lookup went into bucket ``index`` at ``now``."""
        self._touched[index] = now

    def touch_key(self, key: int, now: float) -> None:
        """A lookup for ``key`` ran at ``now``: touches the bucket ``key`` falls in."""
        index = bucket_index(self.local_key, key)
        if index >= 0:
            self._touched[index] = now

    def stale_buckets(self, now: float, interval: float, max_depth: int = 15) -> list[int]:
        """Buckets to refresh: not touched for ``interval``, from the farthest (255) down to
        the bucket sharing ``max_depth`` bits with us, no deeper than one past the deepest
        non-empty bucket (deeper ones are empty in any network of realistic size)."""
        deepest = min((i for i, b in self._buckets.items() if b), default=KEY_BITS - 1)
        low = max(KEY_BITS - 1 - max_depth, deepest - 1, 0)
        return [
            i
            for i in range(KEY_BITS - 1, low - 1, -1)
            if now - self._touched.get(i, float("-inf")) >= interval
        ]

    def random_key_in_bucket(self, index: int, rand: Callable[[int], bytes]) -> bytes:
        """Key bytes whose :func:`kad_key` falls in bucket ``index`` (a FIND_NODE target for a
        refresh); found by trying ``rand(32)`` values, about ``2 ** (256 - index)`` tries,
        so only for the shallow buckets :meth:`stale_buckets` names."""
        if index < KEY_BITS - 1 - 20:
            raise ValueError(f"bucket {index} is too deep to find a key for by trial")
        while True:
            candidate = rand(32)
            if bucket_index(self.local_key, kad_key(candidate)) == index:
                return candidate
