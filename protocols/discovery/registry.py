"""The name registry: first come, first served names with a TTL.

:class:`NameRegistry` is the pure state (the clock is passed in);
:class:`RegistryService` serves it on ``/switchy/discovery/1.0.0`` with the
node's loop clock, so expiry follows virtual time under the simulator.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import logging
import math
from typing import TYPE_CHECKING, Final

import attrs

from switchy.protocols.discovery.claims import open_name_claim
from switchy.protocols.discovery.codec import (
    DISCOVERY_PROTOCOL,
    MAX_FRAME_SIZE,
    MAX_TTL,
    Lookup,
    Refresh,
    Register,
    Request,
    Response,
    ServerCore,
    Status,
    Unregister,
)
from switchy.protocols.discovery.metrics import record_request
from switchy.stack.addresses import ip_address_of
from switchy.stack.errors import (
    AuthenticationFailed,
    InvalidConfiguration,
    P2PError,
    ProtocolError,
    ResourceLimitExceeded,
)
from switchy.stack.node import ConnectionEvent, Node, ProtocolService

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from switchy.stack.identity import PeerId
    from switchy.stack.stream import MuxedStream

__all__ = [
    "DEFAULT_MAX_NAMES_PER_IP",
    "DEFAULT_MAX_NAMES_PER_PEER",
    "DEFAULT_MAX_NAMES_PER_PREFIX",
    "DEFAULT_MAX_REGISTRATIONS",
    "DEFAULT_MAX_TTL",
    "PRESSURE_GRACE",
    "STREAM_BUFFERS",
    "NameRegistry",
    "RegistryLimits",
    "RegistryService",
    "source_keys",
]

log = logging.getLogger(__name__)

#: Names one peer may hold at once.
DEFAULT_MAX_NAMES_PER_PEER: Final = 8
#: Names the registry holds at once (bounds its memory: each is at most a few KiB).
DEFAULT_MAX_REGISTRATIONS: Final = 10_000
#: Names held at once by peers connecting from one IP address (fresh identities are free:
#: 1,251 of them from one host filled a 10,000-name registry in 17 s).
DEFAULT_MAX_NAMES_PER_IP: Final = 32
#: Names held at once by peers connecting from one network (IPv4 /24, IPv6 /48).
DEFAULT_MAX_NAMES_PER_PREFIX: Final = 128
#: Under pressure (the registry three quarters full) the names of a peer that
#: disconnected expire this many seconds later at most, not at their TTL.
PRESSURE_GRACE: Final = 300.0
#: Longest TTL granted, in seconds (longer requests are shortened).
DEFAULT_MAX_TTL: Final = 2 * 3600
#: Memory a served registry stream holds at most: one read and one incomplete frame,
#: charged to the stream's resource scope.
STREAM_BUFFERS: Final = 2 * MAX_FRAME_SIZE


def _positive_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise InvalidConfiguration(f"{attribute.name} must be an integer >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class RegistryLimits:
    """Limits of a registry."""

    max_names_per_peer: int = attrs.field(
        default=DEFAULT_MAX_NAMES_PER_PEER, validator=_positive_int
    )
    max_registrations: int = attrs.field(default=DEFAULT_MAX_REGISTRATIONS, validator=_positive_int)
    max_ttl: int = attrs.field(default=DEFAULT_MAX_TTL, validator=_positive_int)
    max_names_per_ip: int = attrs.field(default=DEFAULT_MAX_NAMES_PER_IP, validator=_positive_int)
    max_names_per_prefix: int = attrs.field(
        default=DEFAULT_MAX_NAMES_PER_PREFIX, validator=_positive_int
    )

    def __attrs_post_init__(self) -> None:
        if self.max_ttl > MAX_TTL:
            raise InvalidConfiguration(f"max_ttl must be <= {MAX_TTL}, got {self.max_ttl}")


def source_keys(addr: Multiaddr) -> tuple[str, str]:
    """``(address, network)`` a connection comes from, for the per-IP and per-prefix
    limits: ``ip4/1.2.3.4`` and ``ip4/1.2.3.0/24`` (IPv6: the /48), else the first
    component of ``addr`` for both (a simulated host, a DNS name)."""
    items = list(addr.items())
    if not items:
        return str(addr), str(addr)
    proto, value = items[0]
    key = f"{proto.name}/{value}"
    ip = ip_address_of(addr)
    if ip is not None:
        net = ipaddress.ip_network((ip, 24 if ip.version == 4 else 48), strict=False)
        return key, f"{proto.name}/{net}"
    if proto.name == "memory":  # simulated hosts: one port range per host
        from switchy.transports.sim.network import sim_host_number

        number = sim_host_number(value)
        if number is not None:
            host = f"memory/{number}"
            return host, host
    return key, key


@attrs.define
class _Entry:
    owner: PeerId
    claim: bytes
    seq: int
    expires: float
    #: The per-IP / per-network counters this name counts in.
    sources: tuple[str, ...] = ()


class NameRegistry:
    """Registrations by name, first come first served, expiring at their TTL.

    While a registration lives only its owner (the peer that registered it,
    authenticated by the connection) can update, refresh or remove it.
    """

    def __init__(self, limits: RegistryLimits | None = None) -> None:
        self.limits = limits or RegistryLimits()
        self._entries: dict[str, _Entry] = {}
        self._per_peer: dict[PeerId, int] = {}
        self._per_source: dict[str, int] = {}  # names per IP and per network
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names_of(self, peer: PeerId) -> int:
        """How many names ``peer`` holds (expired ones included until purged)."""
        return self._per_peer.get(peer, 0)

    def purge(self, now: float) -> int:
        """Remove every registration expired at ``now``; return how many."""
        removed = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, name = heapq.heappop(heap)
            entry = self._entries.get(name)
            if entry is not None and entry.expires <= now:
                self._remove(name, entry)
                removed += 1
        if len(heap) > 2 * len(self._entries) + 64:  # refreshes leave stale heap items
            self._expiry = [(e.expires, n) for n, e in self._entries.items()]
            heapq.heapify(self._expiry)
        return removed

    def _remove(self, name: str, entry: _Entry) -> None:
        del self._entries[name]
        left = self._per_peer[entry.owner] - 1
        if left:
            self._per_peer[entry.owner] = left
        else:
            del self._per_peer[entry.owner]
        for key in entry.sources:
            n = self._per_source[key] - 1
            if n:
                self._per_source[key] = n
            else:
                del self._per_source[key]

    @property
    def under_pressure(self) -> bool:
        """Whether the registry is at least three quarters full."""
        return 4 * len(self._entries) >= 3 * self.limits.max_registrations

    def peer_gone(self, peer: PeerId, now: float) -> int:
        """``peer`` disconnected: under pressure its names expire within PRESSURE_GRACE
        seconds instead of at their TTL (it may reconnect and refresh them).  Returns how
        many names were shortened."""
        if not self.under_pressure or peer not in self._per_peer:
            return 0
        shortened = 0
        for name, entry in self._entries.items():
            if entry.owner == peer and entry.expires > now + PRESSURE_GRACE:
                self._set_expiry(name, entry, now + PRESSURE_GRACE)
                shortened += 1
        return shortened

    def _set_expiry(self, name: str, entry: _Entry, expires: float) -> None:
        entry.expires = expires
        heapq.heappush(self._expiry, (expires, name))

    def handle(
        self,
        peer: PeerId,
        request: Request,
        now: float,
        sources: tuple[str, str] | None = None,
    ) -> Response:
        """Apply ``request`` from the authenticated ``peer`` at time ``now``; the response.

        ``sources`` (:func:`source_keys` of the connection) subjects new names to the
        per-IP and per-network limits."""
        self.purge(now)
        if isinstance(request, Register):
            return self._register(peer, request, now, sources)
        entry = self._entries.get(request.name)
        if entry is None:
            return Response(Status.NOT_FOUND, f"{request.name!r} is not registered")
        if isinstance(request, Lookup):
            remaining = min(MAX_TTL, max(1, math.ceil(entry.expires - now)))
            return Response(Status.OK, ttl=remaining, claim=entry.claim)
        if entry.owner != peer:
            return Response(Status.NOT_OWNER, f"{request.name!r} is held by another peer")
        if isinstance(request, Refresh):
            ttl = min(request.ttl, self.limits.max_ttl)
            self._set_expiry(request.name, entry, now + ttl)
            return Response(Status.OK, ttl=ttl)
        assert isinstance(request, Unregister)
        self._remove(request.name, entry)
        return Response(Status.OK)

    def _register(
        self, peer: PeerId, request: Register, now: float, sources: tuple[str, str] | None
    ) -> Response:
        name = request.name
        try:
            claim = open_name_claim(request.claim, name)
        except (ProtocolError, AuthenticationFailed) as exc:
            return Response(Status.BAD_RECORD, f"claim rejected: {exc}")
        if claim.peer_id != peer:
            return Response(
                Status.BAD_RECORD,
                f"the claim is signed by {claim.peer_id}, not by the registering peer {peer}",
            )
        entry = self._entries.get(name)
        if entry is not None and entry.owner != peer:
            return Response(
                Status.NAME_TAKEN,
                f"{name!r} is held by another peer for {math.ceil(entry.expires - now)} more s",
            )
        if entry is not None and claim.seq < entry.seq:
            return Response(
                Status.BAD_RECORD, f"stale claim: seq {claim.seq} is older than {entry.seq}"
            )
        if entry is None:
            if self.names_of(peer) >= self.limits.max_names_per_peer:
                return Response(
                    Status.LIMIT_EXCEEDED,
                    f"a peer may hold at most {self.limits.max_names_per_peer} names",
                )
            if len(self._entries) >= self.limits.max_registrations:
                return Response(
                    Status.LIMIT_EXCEEDED,
                    f"the registry is full ({self.limits.max_registrations} names)",
                )
            if sources is not None:
                ip, net = sources
                limits = self.limits
                if self._per_source.get(ip, 0) >= limits.max_names_per_ip:
                    return Response(
                        Status.LIMIT_EXCEEDED,
                        f"peers at {ip} may hold at most {limits.max_names_per_ip} names",
                    )
                if net != ip and self._per_source.get(net, 0) >= limits.max_names_per_prefix:
                    return Response(
                        Status.LIMIT_EXCEEDED,
                        f"peers in {net} may hold at most {limits.max_names_per_prefix} names",
                    )
            keys: tuple[str, ...] = () if sources is None else tuple(dict.fromkeys(sources))
            for key in keys:
                self._per_source[key] = self._per_source.get(key, 0) + 1
            entry = _Entry(peer, request.claim, claim.seq, now, keys)
            self._entries[name] = entry
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        entry.claim = request.claim
        entry.seq = claim.seq
        ttl = min(request.ttl, self.limits.max_ttl)
        self._set_expiry(name, entry, now + ttl)
        return Response(Status.OK, ttl=ttl)


class RegistryService(ProtocolService):
    """Serves a :class:`NameRegistry` on ``/switchy/discovery/1.0.0``.

    A malformed or oversized message gets a final ``BAD_REQUEST`` and the
    stream is closed; a stream idle for the node's ``request_timeout`` is
    closed.  Other streams and peers are unaffected.
    """

    service_name = "discovery"
    service_protocols = (DISCOVERY_PROTOCOL,)

    def __init__(self, limits: RegistryLimits | None = None) -> None:
        self.registry = NameRegistry(limits)
        self.node: Node | None = None

    def attach(self, node: Node) -> None:
        """Serve the registry protocol on ``node``."""
        self.node = node
        node.handle(DISCOVERY_PROTOCOL, self.handle_stream)
        node.on_connection_event(self._on_event)

    def _on_event(self, event: ConnectionEvent) -> None:
        """A peer's last connection closed: its names age out faster under pressure."""
        node = self.node
        if event.kind == "disconnected" and node is not None and not node.connections(event.peer):
            self.registry.peer_gone(event.peer, asyncio.get_running_loop().time())

    async def handle_stream(self, stream: MuxedStream) -> None:
        """Answer the requests of one stream until the client closes it.

        The stream's buffers (a read and an incomplete frame, :data:`STREAM_BUFFERS`
        bytes) are charged to its resource scope while it is served; a stream they do not
        fit is reset."""
        scope = stream.resource_scope
        if scope is not None:
            try:
                scope.reserve_memory(STREAM_BUFFERS)
            except ResourceLimitExceeded as exc:
                log.debug("discovery stream from %s refused: %s", stream.remote_peer, exc)
                await stream.reset()
                return
        try:
            await self._serve(stream)
        finally:
            if scope is not None:
                scope.release_memory(STREAM_BUFFERS)

    async def _serve(self, stream: MuxedStream) -> None:
        idle = self.node.config.request_timeout if self.node else 30.0
        clock = asyncio.get_running_loop().time
        core = ServerCore()
        peer = stream.remote_peer
        while True:
            try:
                async with asyncio.timeout(idle):
                    data = await stream.read(MAX_FRAME_SIZE)
            except TimeoutError:
                log.debug("discovery stream from %s idle for %ss, closing", peer, idle)
                return
            if not data:
                return
            try:
                requests = core.receive_data(data)
            except ProtocolError as exc:
                log.debug("bad discovery request from %s: %s", peer, exc)
                core.fail(str(exc))
                await stream.write(core.data_to_send())
                return
            sources = source_keys(stream.muxed_conn.remote_addr)
            for request in requests:
                response = self.registry.handle(peer, request, clock(), sources)
                if self.node is not None:
                    kind, status = type(request).__name__.lower(), response.status.name.lower()
                    record_request(self.node.metrics, "server", kind, status)
                core.send_response(response)
            out = core.data_to_send()
            if out:
                try:
                    await stream.write(out)
                except P2PError:
                    return
