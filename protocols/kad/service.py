"""``KadDHT``: the Kademlia DHT as a node service (asyncio adapter of the sans-IO parts).

A DHT *server* registers :data:`~switchy.protocols.kad.pb.PROTOCOL` and answers
requests; a *client* only asks.  Since the protocol list travels by identify,
a client never enters other peers' routing tables: a peer is added to our table
only when it answered one of our queries, or when identify says it serves the
protocol.  ``mode="auto"`` (the default) follows the node's reachability
(``node.addresses.reachability``, which AutoNAT reports): a server while it is
``public``, a client while it is ``private``, and while it is ``unknown`` a server
iff the node listens on a public address; it switches when the reachability
changes (the protocol is registered or withdrawn, and identify tells the peers).

Query timeouts adapt to the round trips seen (:class:`RttEstimator`): a query
times out after three RTOs (at least 2 s, at most ``query_timeout``), and a
lookup stops waiting on a query after one RTO (at least 0.5 s) and asks the next
peer instead, so dead peers among the closest cost a lookup little.

Requests are one message per stream: we open a stream, send the request and
read one answer (ADD_PROVIDER has none).  As a server we answer every request
of a stream until the peer ends it, at most :data:`MAX_REQUESTS_PER_STREAM`.
PUT_VALUE and ADD_PROVIDER of one peer are rate limited
(:data:`PUT_RATE` per second, bursts of :data:`PUT_BURST`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Final, Literal

from multiaddr import Multiaddr

from switchy.protocols.autonat.addrs import is_public_addr
from switchy.protocols.identify import IdentifyService
from switchy.protocols.kad.lookup import Lookup, RttEstimator
from switchy.protocols.kad.pb import (
    MAX_MESSAGE_SIZE,
    MAX_PEERS_PER_MESSAGE,
    PROTOCOL,
    KadMessage,
    KadPeer,
    MessageType,
    Record,
    decode_message,
    encode_message,
    peers_of,
)
from switchy.protocols.kad.records import (
    MAX_PROVIDER_KEY_SIZE,
    PROVIDER_REPUBLISH,
    PROVIDER_TTL,
    RECORD_REPUBLISH,
    RECORD_TTL,
    InvalidRecord,
    ProviderStore,
    RecordStore,
    Validator,
    default_validators,
    pk_key,
    validate_record,
)
from switchy.protocols.kad.routing import AddOutcome, Failure, K, RoutingTable, kad_key
from switchy.stack.addrbook import Reachability
from switchy.stack.addresses import parse_multiaddr, split_peer
from switchy.stack.errors import (
    ConnectionClosed,
    InvalidConfiguration,
    MessageTooLarge,
    P2PError,
    PeerNotFound,
    ProtocolError,
    RequestRefused,
    ResourceLimitExceeded,
    StreamRefused,
)
from switchy.stack.identity import PeerId
from switchy.stack.node import ConnectionEvent, Node, PeerRouter, ProtocolService
from switchy.stack.stream import MuxedStream
from switchy.stack.tasks import cancel_and_wait

__all__ = [
    "DIAL_STALL_FACTOR",
    "MAX_REQUESTS_PER_STREAM",
    "PUT_BURST",
    "PUT_RATE",
    "QUERY_TIMEOUT",
    "REFRESH_INTERVAL",
    "KadDHT",
]

log = logging.getLogger(__name__)

#: Longest wait for one peer's answer, seconds.
QUERY_TIMEOUT: Final = 10.0
#: How often the routing table is refreshed (go-libp2p: 10 minutes).
REFRESH_INTERVAL: Final = 600.0
#: Requests served on one inbound stream before it is closed.
MAX_REQUESTS_PER_STREAM: Final = 64
#: Longest an inbound stream may wait between requests, seconds.
IDLE_TIMEOUT: Final = 60.0
#: Sustained PUT_VALUE/ADD_PROVIDER requests per second from one peer, and burst size.
PUT_RATE: Final = 1.0
PUT_BURST: Final = 20
#: Peers whose put budget is tracked (least recently seen forgotten first).
_MAX_TRACKED: Final = 1024
#: Providers named in one GET_PROVIDERS answer.
_MAX_PROVIDERS_ANSWERED: Final = MAX_PEERS_PER_MESSAGE - K
#: A query that must dial first stalls after this many times the lookup's stall time
#: (a dial costs several round trips: connect, security and muxer negotiation).
DIAL_STALL_FACTOR: Final = 3
#: Distinct values a GET_VALUE lookup collects before it stops.
GET_QUORUM: Final = 4

Mode = Literal["auto", "server", "client"]
_Addrs = tuple[Multiaddr, ...]


class KadDHT(ProtocolService, PeerRouter):
    """The Kademlia DHT service (see the module docstring).

    ``bootstrap`` names peers (multiaddrs with ``/p2p/<id>``) to join through;
    ``validators`` maps record namespaces to :class:`Validator` objects
    (default: ``/pk/`` and signed name claims).
    """

    service_name = "kad"
    service_protocols = (PROTOCOL,)

    def __init__(
        self,
        *,
        mode: Mode = "auto",
        bootstrap: Iterable[str | Multiaddr] = (),
        validators: dict[str, Validator] | None = None,
        query_timeout: float = QUERY_TIMEOUT,
        refresh_interval: float = REFRESH_INTERVAL,
        lookup_timeout: float = 60.0,
        record_ttl: float = RECORD_TTL,
        provider_ttl: float = PROVIDER_TTL,
        record_republish: float = RECORD_REPUBLISH,
        provider_republish: float = PROVIDER_REPUBLISH,
    ) -> None:
        if mode not in ("auto", "server", "client"):
            raise InvalidConfiguration(f"DHT mode must be auto, server or client, not {mode!r}")
        self.mode: Mode = mode
        self.bootstrap_peers: list[tuple[PeerId, Multiaddr]] = []
        for item in bootstrap:
            addr, peer = split_peer(parse_multiaddr(item))
            if peer is None:
                raise InvalidConfiguration(f"bootstrap address {item} lacks /p2p/<peer id>")
            self.bootstrap_peers.append((peer, addr))
        self.validators = validators if validators is not None else default_validators()
        self.records = RecordStore(self.validators, ttl=record_ttl)
        self.providers = ProviderStore(ttl=provider_ttl)
        self.record_republish = record_republish
        self.provider_republish = provider_republish
        self.query_timeout = query_timeout
        #: Durations of answered queries: the lookups' stall time and the query timeout
        #: adapt to them (at most ``query_timeout``).
        self.rtt = RttEstimator()
        self.refresh_interval = refresh_interval
        self.lookup_timeout = lookup_timeout
        self.node: Node | None = None
        self.table: RoutingTable | None = None
        self._server = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._budgets: OrderedDict[PeerId, tuple[float, float]] = OrderedDict()
        #: Records we put and keys we provide, with when we last announced them.
        self._own_records: dict[bytes, tuple[bytes, float]] = {}
        self._provided: dict[bytes, float] = {}
        self._pinging: set[PeerId] = set()
        #: Counters: requests served by type name, refused requests, lookups run, queries
        #: that had to dial (``queries_dialing``), failed queries and removals by
        #: :class:`Failure` (``failed_<why>``, ``removed_<why>``).
        self.counters: dict[str, int] = {}

    # --- lifecycle ---------------------------------------------------------------------

    def attach(self, node: Node) -> None:
        """See :class:`ProtocolService`."""
        self.node = node
        self.table = RoutingTable(node.peer_id)
        node.add_peer_router(self)
        if self.mode == "server":
            self._become_server()
        node.on_connection_event(self._on_connection)

    def _become_server(self) -> None:
        if not self._server:
            self._server = True
            self._n.handle(PROTOCOL, self._handle)

    def _become_client(self) -> None:
        if self._server:
            self._server = False
            self._n.unhandle(PROTOCOL)

    def _apply_reachability(self, state: Reachability) -> None:
        """``auto`` mode: a server when AutoNAT says we are reachable (``public``), a
        client when it says ``private``; while ``unknown``, a server iff a listen
        address is public."""
        if state is Reachability.PUBLIC:
            self._become_server()
        elif state is Reachability.PRIVATE:
            self._become_client()
        elif any(is_public_addr(a) for a in self._n.listen_addrs):
            self._become_server()
        else:
            self._become_client()
        log.debug("DHT auto mode: reachability %s, server %s", state.value, self._server)

    def _on_reachability(self, _old: Reachability, new: Reachability) -> None:
        self._apply_reachability(new)

    @property
    def is_server(self) -> bool:
        """Whether we answer DHT requests."""
        return self._server

    async def start(self) -> None:
        """Decide the mode (``auto``), then bootstrap and refresh in the background."""
        if self.mode == "auto":
            self._apply_reachability(self._n.addresses.reachability)
            self._n.addresses.on_reachability_changed(self._on_reachability)
        self._spawn(self._maintain(), "kad-maintain")

    async def stop(self) -> None:
        """Cancel the background work."""
        await cancel_and_wait(*self._tasks)

    @property
    def _n(self) -> Node:
        if self.node is None:
            raise InvalidConfiguration("the DHT service is not attached to a node")
        return self.node

    @property
    def _t(self) -> RoutingTable:
        assert self.table is not None
        return self.table

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.debug("DHT task %s failed: %s", task.get_name(), exc)

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # --- routing table upkeep ----------------------------------------------------------

    def _addrs_of(self, peer: PeerId) -> _Addrs:
        return tuple(a for a in self._n.peerstore.addrs(peer) if not _is_relay(a))

    def _learned(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        """``peer`` is a DHT server: add it to the table (pinging the stale one if full)."""
        addrs = tuple(addrs) or self._addrs_of(peer)
        result = self._t.add(peer, addrs, self._now())
        stale = result.ping
        if (
            result.outcome is AddOutcome.PENDING
            and stale is not None
            and stale not in self._pinging
            and len(self._pinging) < 16
        ):
            self._pinging.add(stale)
            self._spawn(self._check_alive(stale), "kad-ping")

    async def _check_alive(self, peer: PeerId) -> None:
        try:
            await self._ask(
                peer, (), KadMessage(MessageType.FIND_NODE, key=self._n.peer_id.multihash)
            )
        except _QueryFailed as exc:
            self._failed(peer, exc.why)
        else:
            self._t.seen(peer, self._now())
        finally:
            self._pinging.discard(peer)

    def _on_connection(self, event: ConnectionEvent) -> None:
        if event.kind == "connected":
            self._spawn(self._classify(event.peer), "kad-classify")

    async def _classify(self, peer: PeerId) -> None:
        identify = next((s for s in self._n.services if isinstance(s, IdentifyService)), None)
        if identify is None:
            return
        with contextlib.suppress(TimeoutError):
            await identify.wait_identified(peer, timeout=self.query_timeout)
        if PROTOCOL in self._n.peerstore.protocols(peer):
            self._learned(peer)

    async def _maintain(self) -> None:
        await self.bootstrap()
        period = min(self.refresh_interval, self.record_republish, self.provider_republish)
        while True:
            await asyncio.sleep(period)
            now = self._now()
            self.records.expire(now)
            self.providers.expire(now)
            await self.refresh()
            await self.republish()

    async def bootstrap(self) -> int:
        """Connect to the bootstrap peers, look ourselves up and refresh the table; returns
        the table's size."""
        for peer, addr in self.bootstrap_peers:
            self._n.peerstore.add_addrs(peer, [addr])
            try:
                await self._rpc(peer, (addr,), KadMessage(MessageType.FIND_NODE, key=b"\0"))
            except (P2PError, OSError, TimeoutError) as exc:
                log.info("DHT bootstrap peer %s: %s", peer, exc)
                continue
            self._learned(peer, (addr,))
        if len(self._t):
            await self.get_closest_peers(self._n.peer_id.multihash)
            await self.refresh()
        return len(self._t)

    async def refresh(self) -> int:
        """Look up a random key in every bucket not looked into for the refresh interval;
        returns how many lookups ran."""
        now = self._now()
        stale = self._t.stale_buckets(now, self.refresh_interval)
        ran = 0
        for index in stale:
            if not len(self._t):
                break
            key = self._t.random_key_in_bucket(index, self._n.entropy or os.urandom)
            self._t.touch_bucket(index, now)
            await self.get_closest_peers(key)
            ran += 1
        return ran

    async def republish(self) -> int:
        """Put again the records we put and announce again the keys we provide, where
        their republish interval has passed; returns how many were republished."""
        now = self._now()
        count = 0
        for key, (value, last) in list(self._own_records.items()):
            if now - last >= self.record_republish:
                with contextlib.suppress(P2PError):
                    await self.put_value(key, value)
                    count += 1
        for key, last in list(self._provided.items()):
            if now - last >= self.provider_republish:
                with contextlib.suppress(P2PError):
                    await self.provide(key)
                    count += 1
        return count

    # --- requests ----------------------------------------------------------------------

    def _failed(self, peer: PeerId, why: Failure) -> None:
        """A query to ``peer`` failed for ``why``: the table decides whether it stays."""
        self._count(f"failed_{why.value}")
        if self._t.failed(peer, why):
            self._count(f"removed_{why.value}")

    async def _rpc(self, peer: PeerId, addrs: Sequence[Multiaddr], msg: KadMessage) -> KadMessage:
        try:
            return await self._ask(peer, addrs, msg)
        except _QueryFailed as exc:
            raise exc.error from None

    async def _ask(self, peer: PeerId, addrs: Sequence[Multiaddr], msg: KadMessage) -> KadMessage:
        """Send ``msg`` to ``peer`` and read its answer; a failure raises :class:`_QueryFailed`
        saying why (for the routing table) with the error itself."""
        node = self._n
        if addrs:
            node.peerstore.add_addrs(peer, list(addrs))
        elif not node.peerstore.addrs(peer) and not node.connections(peer):
            error = PeerNotFound(f"no addresses of {peer} to ask it")  # never route recursively
            raise _QueryFailed(Failure.UNREACHABLE, error)
        data = encode_message(msg)
        started = self._now()
        connected = bool(node.connections(peer))
        try:
            async with asyncio.timeout(self.rtt.timeout(self.query_timeout)):
                stream = await node.open_stream(peer, PROTOCOL)
                connected = True
                try:
                    await stream.send_message(data, max_size=MAX_MESSAGE_SIZE)
                    if msg.type == MessageType.ADD_PROVIDER:
                        await stream.finish(timeout=1.0)
                        return msg
                    answer = await stream.recv_message(max_size=MAX_MESSAGE_SIZE)
                except BaseException:
                    await stream.reset()
                    raise
                await stream.close()
            reply = decode_message(answer)
            if reply.type != msg.type:
                raise ProtocolError(f"{peer} answered a {msg.type} request with type {reply.type}")
        except (P2PError, OSError, TimeoutError) as exc:
            # a connection lost meanwhile (trimmed by either side, or the peer gone) is
            # no proof: a dial tells next time
            still = connected and bool(node.connections(peer))
            raise _QueryFailed(_failure_of(exc, connected=still), exc) from exc
        self.rtt.observe(self._now() - started)
        return reply

    async def _lookup(
        self,
        key: bytes,
        kind: MessageType,
        *,
        beta: int | None = None,
        on_answer: Callable[[PeerId, KadMessage], bool] | None = None,
    ) -> Lookup:
        """Run a lookup for ``key`` sending ``kind`` requests; ``on_answer`` sees every answer
        and ends the lookup early by returning ``True``."""
        target = kad_key(key)
        now = self._now()
        seeds = [(e.peer_id, e.addrs) for e in self._t.closest(target, K)]
        kw: dict[str, Any] = {} if beta is None else {"beta": beta}
        lookup = Lookup(
            target,
            seeds,
            now=now,
            local=self._n.peer_id,
            timeout=self.lookup_timeout,
            stall=self.rtt.stall(self.query_timeout),
            **kw,
        )
        self._count("lookups")
        tasks: dict[asyncio.Task[KadMessage], PeerId] = {}
        request = KadMessage(kind, key=key)
        try:
            while True:
                for peer, addrs in lookup.next_queries(self._now()):
                    if not self._n.connections(peer):
                        self._count("queries_dialing")
                        if lookup.stall is not None:
                            lookup.allow_more(peer, (DIAL_STALL_FACTOR - 1) * lookup.stall)
                    task = asyncio.ensure_future(self._ask(peer, addrs, request))
                    tasks[task] = peer
                if not tasks or (lookup.finished(self._now()) and not lookup.in_flight()):
                    break  # done, or only stalled queries are left
                wake = lookup.next_wakeup()
                until = lookup.deadline if wake is None else min(wake, lookup.deadline)
                done, _ = await asyncio.wait(
                    tasks,
                    timeout=max(until - self._now(), 0.0),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    if self._now() >= lookup.deadline:
                        break
                    continue  # a query stalled: ask the next peers
                stop = False
                for task in done:
                    peer = tasks.pop(task)
                    exc = task.exception()
                    if exc is not None:
                        lookup.on_failure(peer, self._now())
                        if isinstance(exc, _QueryFailed):
                            self._failed(peer, exc.why)
                        continue
                    reply = task.result()
                    self._learned(peer, lookup.addrs_of(peer))
                    closer = [(p.peer_id, p.addrs) for p in reply.closer_peers]
                    lookup.on_response(peer, closer, self._now())
                    if on_answer is not None and on_answer(peer, reply):
                        stop = True
                if stop:
                    break
        finally:
            await cancel_and_wait(*tasks)
        self._t.touch_key(target, self._now())
        return lookup

    async def get_closest_peers(self, key: bytes) -> list[PeerId]:
        """The k DHT servers closest to ``key`` that answered a lookup, closest first."""
        lookup = await self._lookup(key, MessageType.FIND_NODE, beta=K)
        return [p for p, _ in lookup.result()]

    async def find_peer(self, peer: PeerId) -> list[Multiaddr]:
        """Addresses of ``peer`` found through the DHT (the union of what every answering
        peer said, so one peer cannot hide the real ones).

        Raises :class:`PeerNotFound` when no peer knows it.
        """
        found: dict[Multiaddr, None] = {}
        entry = self._t.get(peer)
        if entry is not None:
            found.update(dict.fromkeys(entry.addrs))

        def seen(_by: PeerId, reply: KadMessage) -> bool:
            for p in reply.closer_peers:
                if p.peer_id == peer:
                    found.update(dict.fromkeys(p.addrs))
            return len(found) > 0

        if not found:
            await self._lookup(peer.multihash, MessageType.FIND_NODE, on_answer=seen)
        if not found:
            raise PeerNotFound(f"the DHT knows no addresses of {peer}")
        addrs = list(found)[:32]
        self._n.peerstore.add_addrs(peer, addrs)
        return addrs

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Store ``value`` under ``key`` at the k closest servers (and here); returns how
        many servers took it.  Raises :class:`InvalidRecord` for an invalid record."""
        validate_record(self.validators, key, value)
        self._own_records[key] = (value, self._now())
        if self._server:
            with contextlib.suppress(InvalidRecord):
                self.records.put(key, value, self._now())
        closest = await self._lookup(key, MessageType.FIND_NODE, beta=K)
        msg = KadMessage(MessageType.PUT_VALUE, key=key, record=Record(key, value))
        results = await asyncio.gather(
            *(self._rpc(p, a, msg) for p, a in closest.result()), return_exceptions=True
        )
        return sum(1 for r in results if isinstance(r, KadMessage))

    async def get_value(self, key: bytes, *, quorum: int = GET_QUORUM) -> bytes:
        """The best valid value of ``key`` among what the closest servers hold (and we).

        Raises :class:`PeerNotFound` when nobody holds a valid value.
        """
        validator = self.validators.get(_ns(key))
        if validator is None:
            raise InvalidRecord(f"no validator for the record key {key[:40]!r}")
        values: list[bytes] = []
        holders: list[PeerId] = []
        local = self.records.get(key, self._now())
        if local is not None:
            values.append(local)
            holders.append(self._n.peer_id)

        def collect(peer: PeerId, reply: KadMessage) -> bool:
            rec = reply.record
            if rec is None or rec.key not in (b"", key):
                return False
            try:
                validator.validate(key, rec.value)
            except InvalidRecord as exc:
                log.debug("invalid record from %s: %s", peer, exc)
                return False
            values.append(rec.value)
            holders.append(peer)
            return len(values) >= quorum

        await self._lookup(key, MessageType.GET_VALUE, on_answer=collect)
        if not values:
            raise PeerNotFound(f"no valid value for {key[:60]!r} in the DHT")
        best = values[validator.select(key, values)]
        stale = [p for p, v in zip(holders, values, strict=True) if v != best]
        fix = KadMessage(MessageType.PUT_VALUE, key=key, record=Record(key, best))
        for peer in stale:
            if peer != self._n.peer_id:
                self._spawn(self._rpc(peer, (), fix), "kad-correct")
        return best

    async def provide(self, key: bytes) -> int:
        """Announce that we provide ``key`` to the k closest servers; returns how many were
        told."""
        _check_provider_key(key)
        self._provided[key] = self._now()
        me = self._n.peer_id
        ours = tuple(a for a in self._n.listen_addrs if not _is_relay(a))
        if self._server:
            self.providers.add(key, me, ours, self._now())
        closest = await self._lookup(key, MessageType.FIND_NODE, beta=K)
        msg = KadMessage(MessageType.ADD_PROVIDER, key=key, provider_peers=peers_of([(me, ours)]))
        results = await asyncio.gather(
            *(self._rpc(p, a, msg) for p, a in closest.result()), return_exceptions=True
        )
        return sum(1 for r in results if isinstance(r, KadMessage))

    async def find_providers(self, key: bytes, count: int = K) -> list[tuple[PeerId, _Addrs]]:
        """Up to ``count`` providers of ``key``."""
        _check_provider_key(key)
        found: dict[PeerId, _Addrs] = dict(self.providers.get(key, self._now()))

        def collect(_by: PeerId, reply: KadMessage) -> bool:
            for p in reply.provider_peers:
                if p.peer_id not in found or not found[p.peer_id]:
                    found[p.peer_id] = p.addrs
            return len(found) >= count

        if len(found) < count:
            await self._lookup(key, MessageType.GET_PROVIDERS, on_answer=collect)
        for peer, addrs in found.items():
            if addrs:
                self._n.peerstore.add_addrs(peer, list(addrs))
        return list(found.items())[:count]

    # --- serving -----------------------------------------------------------------------

    async def _handle(self, stream: MuxedStream) -> None:
        peer = stream.remote_peer
        for _ in range(MAX_REQUESTS_PER_STREAM):
            try:
                async with asyncio.timeout(IDLE_TIMEOUT):
                    data = await stream.recv_message(max_size=MAX_MESSAGE_SIZE)
            except ConnectionClosed:
                return  # the peer ended the stream (between requests, or inside one)
            except TimeoutError:
                await stream.reset()  # idle too long
                return
            request = decode_message(data)
            reply = self._answer(peer, request)
            if reply is not None:
                await stream.send_message(encode_message(reply), max_size=MAX_MESSAGE_SIZE)
            if PROTOCOL in self._n.peerstore.protocols(peer):
                self._learned(peer)

    def _closer(self, key: bytes, requester: PeerId) -> tuple[KadPeer, ...]:
        target = kad_key(key)
        entries = [e for e in self._t.closest(target, K + 1) if e.peer_id != requester][:K]
        peers = [(e.peer_id, e.addrs or self._addrs_of(e.peer_id)) for e in entries]
        if key == self._n.peer_id.multihash:
            ours = tuple(a for a in self._n.listen_addrs if not _is_relay(a))
            peers = [(self._n.peer_id, ours), *peers][:K]
        return peers_of(peers)

    def _spend(self, peer: PeerId) -> None:
        now = self._now()
        tokens, last = self._budgets.pop(peer, (float(PUT_BURST), now))
        tokens = min(float(PUT_BURST), tokens + (now - last) * PUT_RATE)
        if tokens < 1.0:
            self._budgets[peer] = (tokens, now)
            self._count("refused")
            raise RequestRefused(f"{peer} sends puts faster than {PUT_RATE}/s")
        self._budgets[peer] = (tokens - 1.0, now)
        while len(self._budgets) > _MAX_TRACKED:
            self._budgets.popitem(last=False)

    def _answer(self, peer: PeerId, msg: KadMessage) -> KadMessage | None:
        kind = msg.type
        if kind not in MessageType.__members__.values():
            raise ProtocolError(f"{peer} sent a kad message of unknown type {kind}")
        self._count(MessageType(kind).name)
        now = self._now()
        if kind == MessageType.FIND_NODE:
            return KadMessage(kind, key=msg.key, closer_peers=self._closer(msg.key, peer))
        if kind == MessageType.PING:
            return KadMessage(kind)
        if kind == MessageType.GET_VALUE:
            value = self.records.get(msg.key, now)
            if value is None and msg.key == pk_key(self._n.peer_id):
                value = self._n.key.public_key.to_protobuf()
            record = None if value is None else Record(msg.key, value)
            return KadMessage(
                kind, key=msg.key, record=record, closer_peers=self._closer(msg.key, peer)
            )
        if kind == MessageType.PUT_VALUE:
            self._spend(peer)
            rec = msg.record
            if rec is None or rec.key != msg.key:
                raise ProtocolError(f"PUT_VALUE from {peer} without a record of its key")
            try:
                self.records.put(rec.key, rec.value, now)
            except InvalidRecord as exc:
                self._count("refused")
                raise RequestRefused(f"PUT_VALUE from {peer} refused: {exc}") from None
            return KadMessage(kind, key=msg.key, record=Record(rec.key, rec.value))
        if kind == MessageType.ADD_PROVIDER:
            self._spend(peer)
            _check_provider_key(msg.key)
            for p in msg.provider_peers:
                if p.peer_id == peer:  # only the sender may announce itself
                    addrs = p.addrs or self._addrs_of(peer)
                    self.providers.add(msg.key, peer, addrs, now)
            return None
        # GET_PROVIDERS
        _check_provider_key(msg.key)
        providers = [
            (p, a or self._addrs_of(p))
            for p, a in self.providers.get(msg.key, now)[:_MAX_PROVIDERS_ANSWERED]
        ]
        return KadMessage(
            kind,
            key=msg.key,
            provider_peers=peers_of(providers),
            closer_peers=self._closer(msg.key, peer),
        )


class _QueryFailed(P2PError):
    """A query failed: ``error`` is what failed, ``why`` what it says about the peer."""

    def __init__(self, why: Failure, error: BaseException) -> None:
        super().__init__(f"query failed ({why.value}): {error}")
        self.why = why
        self.error = error


def _failure_of(error: BaseException, *, connected: bool) -> Failure:
    """What a failed query says about the peer: a limit (ours, or the peer refusing a
    stream) nothing; otherwise unresponsive if it failed on a connection that is still
    open, unreachable if there is none (no dial succeeded, or the connection was lost)."""
    if isinstance(error, StreamRefused) or (
        isinstance(error, ResourceLimitExceeded) and not isinstance(error, MessageTooLarge)
    ):
        return Failure.LIMITED
    return Failure.UNRESPONSIVE if connected else Failure.UNREACHABLE


def _check_provider_key(key: bytes) -> None:
    if not key or len(key) > MAX_PROVIDER_KEY_SIZE:
        raise InvalidRecord(f"provider key of {len(key)} bytes (1 to {MAX_PROVIDER_KEY_SIZE})")


def _ns(key: bytes) -> str:
    parts = key.split(b"/", 2)
    return parts[1].decode(errors="replace") if len(parts) == 3 and parts[0] == b"" else ""


def _is_relay(addr: Multiaddr) -> bool:
    return "/p2p-circuit" in str(addr)
