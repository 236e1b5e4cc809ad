"""The resource manager: what a node may hold, per scope, and who is refused when it is full.

Every connection, stream and receive buffer a node keeps is charged to a chain of
*scopes* before it is kept, and released when it goes away:

- ``system``: everything the node holds;
- ``transient``: connections not yet authenticated (before the handshake tells us
  the peer) and streams not yet negotiated;
- ``service:<name>`` / ``protocol:<id>``: streams of one protocol (and of the service
  that serves it), once negotiated;
- ``peer:<id>``: everything one remote peer holds;
- ``conn:<n>``: one connection (its streams and their buffers);
- ``stream:<n>``: one stream (its receive buffer, and what a protocol holds for it:
  a router request body read into memory, a relay circuit's in-flight chunks, a
  registry stream's frame buffers; ``MuxedStream.resource_scope``).

Each scope has :class:`Limits` on inbound, outbound and total connections and streams
and on memory.  A refusal raises :class:`~switchy.stack.errors.ResourceLimitExceeded`
naming the scope, the resource and the limit.  Besides the scopes: per-IP limits of
inbound and of outbound connections, a per-IP rate of new inbound connections (a token
bucket), and an allowlist (IP networks, peer ids) whose connections are counted but
never refused.

Defaults scale with the machine the way go-libp2p's resource manager does (its model
was learnt from, not copied): :data:`BASE_LIMITS` hold for a node given 128 MiB and
256 file descriptors, :data:`LIMIT_INCREASE` is added per further GiB of the memory
budget (by default an eighth of the RAM); connections are also kept below half the
file-descriptor limit.

Observing: :meth:`ResourceManager.usage` gives the current use per scope,
:attr:`ResourceManager.blocked` counts refusals per ``(scope kind, resource)``, and
:meth:`ResourceManager.add_observer` calls back on every refusal (the metrics exporter
uses these for ``libp2p_rcmgr_*``).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final, Literal

import attrs

from switchy.stack.addresses import normalized_ip
from switchy.stack.errors import InvalidConfiguration, ResourceLimitExceeded

if TYPE_CHECKING:
    from switchy.stack.config import NetworkConfig
    from switchy.stack.identity import PeerId

__all__ = [
    "BASE_LIMITS",
    "LIMIT_INCREASE",
    "RESOURCES",
    "UNLIMITED",
    "ConnectionScope",
    "Direction",
    "LimitConfig",
    "LimitEvent",
    "Limits",
    "ResourceManager",
    "Scope",
    "StreamScope",
    "parse_size",
]

log = logging.getLogger(__name__)

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB
#: A limit that is never reached.
UNLIMITED: Final = 1 << 62
#: The resources every scope limits.
RESOURCES: Final = (
    "conns_inbound",
    "conns_outbound",
    "conns",
    "streams_inbound",
    "streams_outbound",
    "streams",
    "memory",
)
#: Scope kinds whose limits :class:`LimitConfig` holds.
SCOPE_KINDS: Final = ("system", "transient", "service", "protocol", "peer", "connection", "stream")
#: Memory budget and file descriptors the :data:`BASE_LIMITS` are made for.
BASE_MEMORY: Final = 128 * MiB
BASE_FDS: Final = 256
#: Most per-IP rate buckets kept; full (idle) buckets are pruned beyond it.
MAX_IP_BUCKETS: Final = 4096

#: The names go-libp2p's metrics give the resources.
_METRIC_RESOURCE: Final = {
    "conns_inbound": "connections_inbound",
    "conns_outbound": "connections_outbound",
    "conns": "connections",
    "streams_inbound": "streams_inbound",
    "streams_outbound": "streams_outbound",
    "streams": "streams",
    "memory": "memory",
}
#: Scope kinds whose use :meth:`ResourceManager.metrics_usage` reports.
_REPORTED_KINDS: Final = frozenset({"system", "transient", "service", "protocol"})

Direction = Literal["inbound", "outbound"]
#: The count of streams of each direction.
_STREAM_KEY: Final[dict[str, str]] = {"inbound": "streams_inbound", "outbound": "streams_outbound"}
#: Scope kinds created on first use and dropped when they hold nothing.
_DROPPABLE: Final = frozenset({"peer", "protocol", "service"})


@attrs.frozen(kw_only=True)
class Limits:
    """The limits of one scope (counts, and memory in bytes); :data:`UNLIMITED` by default."""

    conns_inbound: int = UNLIMITED
    conns_outbound: int = UNLIMITED
    conns: int = UNLIMITED
    streams_inbound: int = UNLIMITED
    streams_outbound: int = UNLIMITED
    streams: int = UNLIMITED
    memory: int = UNLIMITED

    def get(self, resource: str) -> int:
        """The limit on ``resource`` (one of :data:`RESOURCES`)."""
        value: int = getattr(self, resource)
        return value

    def scaled(self, increase: Limits, steps: int) -> Limits:
        """These limits plus ``steps`` times ``increase`` (unlimited stays unlimited)."""
        values: dict[str, int] = {}
        for r in RESOURCES:
            base = self.get(r)
            grown = min(UNLIMITED, base + steps * increase.get(r))
            values[r] = base if base >= UNLIMITED else grown
        return Limits(**values)


def _lim(ci: int, co: int, c: int, si: int, so: int, s: int, mem: int) -> Limits:
    return Limits(
        conns_inbound=ci,
        conns_outbound=co,
        conns=c,
        streams_inbound=si,
        streams_outbound=so,
        streams=s,
        memory=mem,
    )


_U = UNLIMITED
#: Limits of a node with :data:`BASE_MEMORY` and :data:`BASE_FDS` (go-libp2p's base figures).
BASE_LIMITS: Final[Mapping[str, Limits]] = {
    "system": _lim(64, 128, 128, 1024, 2048, 2048, 128 * MiB),
    "transient": _lim(32, 64, 64, 128, 256, 256, 32 * MiB),
    "service": _lim(_U, _U, _U, 1024, 4096, 4096, 64 * MiB),
    "protocol": _lim(_U, _U, _U, 512, 2048, 2048, 64 * MiB),
    "peer": _lim(8, 8, 8, 256, 512, 512, 64 * MiB),
    "connection": _lim(1, 1, 1, _U, _U, _U, 64 * MiB),
    "stream": _lim(_U, _U, _U, 1, 1, 1, 17 * MiB),
}
#: Added to :data:`BASE_LIMITS` per GiB of memory budget beyond :data:`BASE_MEMORY`.
LIMIT_INCREASE: Final[Mapping[str, Limits]] = {
    "system": _lim(64, 128, 128, 1024, 2048, 2048, 1 * GiB),
    "transient": _lim(16, 32, 32, 128, 256, 256, 128 * MiB),
    "service": _lim(0, 0, 0, 512, 2048, 2048, 128 * MiB),
    "protocol": _lim(0, 0, 0, 256, 512, 512, 128 * MiB),
    "peer": _lim(0, 0, 0, 128, 256, 256, 128 * MiB),
    "connection": _lim(0, 0, 0, 0, 0, 0, 0),
    "stream": _lim(0, 0, 0, 0, 0, 0, 0),
}


def parse_size(text: str) -> int:
    """``"64MiB"``, ``"512k"``, ``"1000"``, ``"unlimited"`` → an int (bytes or count)."""
    t = text.strip().lower().replace(" ", "")
    if t in ("unlimited", "inf", "none"):
        return UNLIMITED
    units = {"gib": GiB, "gb": GiB, "g": GiB, "mib": MiB, "mb": MiB, "m": MiB}
    units |= {"kib": KiB, "kb": KiB, "k": KiB, "b": 1}
    for suffix, mult in units.items():
        if t.endswith(suffix) and t[: -len(suffix)]:
            t, factor = t[: -len(suffix)], mult
            break
    else:
        factor = 1
    try:
        value = int(float(t) * factor)
    except ValueError:
        raise InvalidConfiguration(f"{text!r} is not a size or count") from None
    if value < 0:
        raise InvalidConfiguration(f"{text!r}: a limit must be >= 0")
    return value


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 * GiB


def _fd_limit() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return 1024
    return soft if soft > 0 else 1 << 20


@attrs.frozen(kw_only=True)
class LimitConfig:
    """Every limit of a :class:`ResourceManager`; build one with :meth:`scaled` or
    :meth:`from_network_config` (defaults scaled to this machine)."""

    #: Limits of each scope kind (:data:`SCOPE_KINDS`); ``peer``, ``protocol`` and
    #: ``service`` are the defaults for each peer, protocol and service.
    scopes: Mapping[str, Limits] = attrs.field(factory=lambda: dict(BASE_LIMITS))
    #: Limits of particular protocols / services / peers (keyed by id / name / peer id text).
    protocols: Mapping[str, Limits] = attrs.field(factory=dict)
    services: Mapping[str, Limits] = attrs.field(factory=dict)
    peers: Mapping[str, Limits] = attrs.field(factory=dict)
    #: Most inbound connections open from one IP address (before and after the handshake).
    max_inbound_per_ip: int = 64
    #: Most outbound connections open to one IP address (many peers behind one address
    #: are fine; a dial loop to one host is not).
    max_outbound_per_ip: int = 64
    #: New inbound connections per second one IP may open (sustained), and the burst.
    inbound_rate_per_ip: float = 16.0
    inbound_burst_per_ip: int = 64
    #: Loopback addresses skip the per-IP limits (they count like any other by default).
    exempt_loopback: bool = False
    #: IP networks and peer ids (text) whose connections and streams are never refused.
    allowlist: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        for kind in SCOPE_KINDS:
            if kind not in self.scopes:
                raise InvalidConfiguration(f"limits: no limits for the {kind} scope")
        self.allowed_networks  # noqa: B018 - validates

    @property
    def allowed_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The allowlist's IP networks."""
        return _split_allowlist(self.allowlist)[0]

    @property
    def allowed_peers(self) -> frozenset[str]:
        """The allowlist's peer ids (text)."""
        return _split_allowlist(self.allowlist)[1]

    @classmethod
    def scaled(cls, memory: int | None = None, fds: int | None = None) -> LimitConfig:
        """Defaults for a memory budget (default: an eighth of the RAM, at least 128 MiB)
        and a number of file descriptors (default: half the ``RLIMIT_NOFILE``)."""
        budget = max(BASE_MEMORY, _total_memory() // 8 if memory is None else memory)
        fd_budget = max(BASE_FDS, _fd_limit() // 2 if fds is None else fds)
        steps = (budget - BASE_MEMORY) // GiB
        scopes = {k: BASE_LIMITS[k].scaled(LIMIT_INCREASE[k], steps) for k in SCOPE_KINDS}
        system = scopes["system"]
        scopes["system"] = attrs.evolve(
            system,
            memory=min(system.memory, budget),
            conns=min(system.conns, fd_budget),
            conns_inbound=min(system.conns_inbound, fd_budget),
            conns_outbound=min(system.conns_outbound, fd_budget),
        )
        return cls(scopes=scopes)

    @classmethod
    def from_network_config(cls, config: NetworkConfig) -> LimitConfig:
        """The limits a :class:`~switchy.stack.config.NetworkConfig` describes: scaled
        defaults (``limits_memory``, ``limits_fds``), then the ``limits`` overrides
        (``"system.conns=1000"``, ``"peer.memory=32MiB"``,
        ``"protocol:/ipfs/ping/1.0.0.streams=8"``), the per-IP settings and the allowlist."""
        base = cls.scaled(config.limits_memory or None, config.limits_fds or None)
        return base.with_overrides(config.limits).evolve_ip(
            max_inbound_per_ip=config.max_inbound_per_ip,
            max_outbound_per_ip=config.max_outbound_per_ip,
            inbound_rate_per_ip=config.inbound_rate_per_ip,
            inbound_burst_per_ip=config.inbound_burst_per_ip,
            exempt_loopback=config.limits_exempt_loopback,
            allowlist=tuple(config.limits_allowlist),
        )

    def evolve_ip(self, **changes: object) -> LimitConfig:
        """A copy with the per-IP settings or the allowlist changed."""
        return attrs.evolve(self, **changes)  # type: ignore[arg-type]

    def with_overrides(self, overrides: Iterable[str]) -> LimitConfig:
        """A copy with ``scope.resource=value`` overrides applied.

        ``scope`` is a scope kind (``system``, ``peer``…, the default for each peer or
        protocol) or ``protocol:<id>`` / ``service:<name>`` / ``peer:<id>`` for one;
        ``resource`` one of :data:`RESOURCES`; ``value`` a count, a size (``64MiB``)
        or ``unlimited``.
        """
        scopes = dict(self.scopes)
        named: dict[str, dict[str, Limits]] = {
            "protocol": dict(self.protocols),
            "service": dict(self.services),
            "peer": dict(self.peers),
        }
        for item in overrides:
            key, sep, raw = item.partition("=")
            scope, dot, resource = key.strip().rpartition(".")
            if not sep or not dot or resource not in RESOURCES:
                raise InvalidConfiguration(
                    f"limit {item!r}: expected scope.resource=value with resource one of "
                    f"{', '.join(RESOURCES)}"
                )
            value = parse_size(raw)
            kind, colon, name = scope.partition(":")
            if colon:
                if kind not in named or not name:
                    raise InvalidConfiguration(
                        f"limit {item!r}: named scopes are protocol:<id>, service:<name>, peer:<id>"
                    )
                current = named[kind].get(name, scopes[kind])
                named[kind][name] = attrs.evolve(current, **{resource: value})
            elif scope in SCOPE_KINDS:
                scopes[scope] = attrs.evolve(scopes[scope], **{resource: value})
            else:
                raise InvalidConfiguration(
                    f"limit {item!r}: unknown scope {scope!r} (one of {', '.join(SCOPE_KINDS)})"
                )
        return attrs.evolve(
            self,
            scopes=scopes,
            protocols=named["protocol"],
            services=named["service"],
            peers=named["peer"],
        )


def _split_allowlist(
    items: Iterable[str],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], frozenset[str]]:
    """The IP networks and the peer ids of an allowlist; raises for anything else."""
    from switchy.stack.identity import PeerId

    nets = []
    peers = set()
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
            continue
        except ValueError:
            pass
        try:
            peers.add(str(PeerId.from_string(item)))
        except Exception:
            raise InvalidConfiguration(
                f"allowlist: {item!r} is neither an IP network nor a peer id"
            ) from None
    return tuple(nets), frozenset(peers)


@attrs.frozen
class LimitEvent:
    """A refusal: ``scope`` (its name) could not take ``amount`` more ``resource``."""

    scope: str
    kind: str
    resource: str
    limit: int
    used: int
    amount: int


class Scope:
    """One scope's use of each resource against its :class:`Limits`."""

    __slots__ = ("_used", "kind", "limits", "name")

    def __init__(self, name: str, kind: str, limits: Limits) -> None:
        self.name = name
        self.kind = kind
        self.limits = limits
        self._used = dict.fromkeys(RESOURCES, 0)

    def used(self, resource: str) -> int:
        """How much of ``resource`` is held now."""
        return self._used[resource]

    @property
    def is_empty(self) -> bool:
        """Whether nothing is held."""
        return not any(self._used.values())

    def usage(self) -> dict[str, int]:
        """The non-zero uses, by resource."""
        return {r: v for r, v in self._used.items() if v}

    def __repr__(self) -> str:
        return f"<Scope {self.name} {self.usage()}>"


class _Span:
    """Something charged to a chain of scopes (a connection, a stream); released by
    :meth:`done`."""

    def __init__(self, manager: ResourceManager, own: Scope, allowlisted: bool) -> None:
        self._manager = manager
        self.scope = own
        self.allowlisted = allowlisted
        self._memory = 0
        self._closed = False
        #: ``[scope, *_chain()]``, kept by :meth:`_rechain` (memory is charged on every
        #: received chunk and released on every read: the chain is not rebuilt each time).
        self._path: list[Scope] = [own]

    def _chain(self) -> list[Scope]:
        raise NotImplementedError

    def _rechain(self) -> None:
        """The span moved to other scopes (or was just made): cache its chain again."""
        self._path = [self.scope, *self._chain()]

    @property
    def memory(self) -> int:
        """Bytes this span holds now."""
        return self._memory

    def reserve_memory(self, n: int) -> None:
        """Hold ``n`` more bytes; raise :class:`ResourceLimitExceeded` when a scope is full."""
        if self._closed:
            raise ResourceLimitExceeded(f"{self.scope.name} is done; cannot reserve memory")
        if n <= 0:
            return
        self._manager._charge_memory(self._path, n, self.allowlisted)
        self._memory += n

    def try_reserve_memory(self, n: int) -> bool:
        """:meth:`reserve_memory`, answering ``False`` instead of raising."""
        try:
            self.reserve_memory(n)
        except ResourceLimitExceeded:
            return False
        return True

    def release_memory(self, n: int) -> None:
        """Give back ``n`` bytes (at most what is held; nothing once done)."""
        n = min(n, self._memory)
        if n <= 0 or self._closed:
            return
        self._memory -= n
        self._manager._release_memory(self._path, n)

    @property
    def is_done(self) -> bool:
        """Whether :meth:`done` ran."""
        return self._closed


class ConnectionScope(_Span):
    """One connection: in ``transient`` until :meth:`set_peer`, then in its peer's scope."""

    def __init__(
        self,
        manager: ResourceManager,
        own: Scope,
        direction: Direction,
        ip: str | None,
        allowlisted: bool,
    ) -> None:
        super().__init__(manager, own, allowlisted)
        self.direction: Direction = direction
        self.ip = ip
        self.peer: PeerId | None = None
        self._peer_scope: Scope | None = None
        self.streams: set[StreamScope] = set()
        self._rechain()

    def _keys(self) -> tuple[str, str]:
        return ("conns_" + self.direction, "conns")

    def _chain(self) -> list[Scope]:
        m = self._manager
        middle = self._peer_scope if self._peer_scope is not None else m.transient
        return [middle, m.system]

    def set_peer(self, peer: PeerId) -> None:
        """The handshake authenticated ``peer``: move from ``transient`` to its peer scope.

        Raises :class:`ResourceLimitExceeded` when the peer holds its most connections
        (the connection stays transient; close it)."""
        if self._closed or self._peer_scope is not None:
            return
        m = self._manager
        allow = self.allowlisted or m.is_allowlisted_peer(peer)
        target = m.peer_scope(peer)
        try:
            m._charge([target], self._keys(), 1, allow)
        except ResourceLimitExceeded:
            m._release([target], self._keys(), 0)  # drop the scope again if left empty
            raise
        if self._memory:
            try:
                m._charge([target], ("memory",), self._memory, allow)
            except ResourceLimitExceeded:
                m._release([target], self._keys(), 1)
                raise
        m._release([m.transient], self._keys(), 1)
        if self._memory:
            m._release([m.transient], ("memory",), self._memory)
        self.allowlisted = allow
        self.peer = peer
        self._peer_scope = target
        self._rechain()

    def open_stream(self, direction: Direction) -> StreamScope:
        """Charge a new stream of this connection; raises :class:`ResourceLimitExceeded`."""
        if self._closed:
            raise ResourceLimitExceeded(f"{self.scope.name} is done; cannot open a stream")
        return self._manager._open_stream(self, direction)

    def done(self) -> None:
        """Release the connection, its streams and their memory (idempotent)."""
        if self._closed:
            return
        for st in list(self.streams):
            st.done()
        m = self._manager
        chain = self._chain()
        if self._memory:
            m._release([self.scope, *chain], ("memory",), self._memory)
            self._memory = 0
        m._release(chain, self._keys(), 1)
        self._closed = True
        m._connection_done(self)

    def __repr__(self) -> str:
        return f"<ConnectionScope {self.scope.name} {self.direction} {self.peer or 'transient'}>"


class StreamScope(_Span):
    """One stream: charged to its connection, peer and ``transient`` until
    :meth:`set_protocol` moves it to the protocol's (and service's) scope."""

    def __init__(
        self, manager: ResourceManager, own: Scope, conn: ConnectionScope, direction: Direction
    ) -> None:
        super().__init__(manager, own, conn.allowlisted)
        self.conn = conn
        self.direction: Direction = direction
        self.protocol: str | None = None
        self._key = _STREAM_KEY[direction]
        self._middle: list[Scope] = [manager.transient]
        # The peer (if the connection has one yet) is fixed when the stream opens, so a
        # stream is always released from the scopes it was charged to.
        self._peer: list[Scope] = [conn._peer_scope] if conn._peer_scope is not None else []
        #: The scopes its stream count is charged to: ``_chain()``, kept with ``_path``.
        self._counted: list[Scope] = []
        self._rechain()

    def _keys(self) -> tuple[str, str]:
        return (self._key, "streams")

    def _chain(self) -> list[Scope]:
        return [self.conn.scope, *self._peer, *self._middle, self._manager.system]

    def _rechain(self) -> None:
        self._counted = counted = self._chain()
        self._path = [self.scope, *counted]

    def set_protocol(self, protocol: str, service: str | None = None) -> None:
        """The stream was negotiated for ``protocol`` (served by ``service``): move it
        from ``transient`` to their scopes; raises :class:`ResourceLimitExceeded`."""
        if self._closed or self.protocol is not None:
            return
        m = self._manager
        target = [m.protocol_scope(protocol)]
        if service is not None:
            target.append(m.service_scope(service))
        m._add_stream(target, self._key, self.allowlisted)
        if self._memory:
            try:
                m._charge(target, ("memory",), self._memory, self.allowlisted)
            except ResourceLimitExceeded:
                m._remove_stream(target, self._key)
                raise
        m._remove_stream(self._middle, self._key)
        if self._memory:
            m._release(self._middle, ("memory",), self._memory)
        self._middle = target
        self.protocol = protocol
        self._rechain()

    def done(self) -> None:
        """Release the stream and its memory (idempotent)."""
        if self._closed:
            return
        m = self._manager
        if self._memory:
            m._release(self._path, ("memory",), self._memory)
            self._memory = 0
        m._remove_stream(self._counted, self._key)
        self._closed = True
        self.conn.streams.discard(self)

    def __repr__(self) -> str:
        return f"<StreamScope {self.scope.name} {self.direction} {self.protocol or 'transient'}>"


@attrs.define
class _Bucket:
    tokens: float
    at: float


class ResourceManager:
    """The scopes of one node and the per-IP limits; see the module documentation."""

    def __init__(
        self, config: LimitConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config or LimitConfig.scaled()
        self._clock = clock
        scopes = self.config.scopes
        self.system = Scope("system", "system", scopes["system"])
        self.transient = Scope("transient", "transient", scopes["transient"])
        self._peers: dict[PeerId, Scope] = {}
        self._protocols: dict[str, Scope] = {}
        self._services: dict[str, Scope] = {}
        self._ids = itertools.count(1)
        self._ip_conns: Counter[str] = Counter()
        self._ip_out: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._networks = self.config.allowed_networks
        self._allowed_peers = self.config.allowed_peers
        self._observers: list[Callable[[LimitEvent], object]] = []
        #: Refusals so far, per ``(scope kind, resource)``; per-IP refusals are counted
        #: as ``("ip", "conns_inbound")``, ``("ip", "conns_outbound")`` and ``("ip", "rate")``.
        self.blocked: Counter[tuple[str, str]] = Counter()
        # refusals per (scope name, resource), for the scopes metrics_usage() reports
        self._blocked_by_name: Counter[tuple[str, str]] = Counter()
        self._conn_scopes: set[ConnectionScope] = set()

    # --- observing ------------------------------------------------------------------------

    def add_observer(self, callback: Callable[[LimitEvent], object]) -> None:
        """Call ``callback(event)`` on every refusal (it must not raise or block)."""
        self._observers.append(callback)

    def usage(self) -> dict[str, dict[str, int]]:
        """Current use of every scope that holds something: ``{"system": {"conns": 3, …},
        "peer:12D3…": {…}, "protocol:/ipfs/ping/1.0.0": {…}}`` (zero entries left out)."""
        out: dict[str, dict[str, int]] = {"system": self.system.usage()}
        if not self.transient.is_empty:
            out["transient"] = self.transient.usage()
        for group in (self._services, self._protocols):
            for s in group.values():
                out[s.name] = s.usage()
        for s in self._peers.values():
            out[s.name] = s.usage()
        return out

    def metrics_usage(self) -> dict[str, dict[str, tuple[int, int | None, int]]]:
        """Use, limit (``None`` when unlimited) and refusals so far of the system,
        transient, service and protocol scopes, by resource: the shape
        :func:`switchy.stack.metrics.rcmgr_collector` exports as ``libp2p_rcmgr_*``.

        Resources are named as go-libp2p's metrics name them (``connections_inbound``,
        ``streams_outbound``, ``memory``, ...).  Peer, connection and stream scopes are
        left out (one series per peer would grow without bound); their refusals are in
        :attr:`blocked`.
        """
        scopes = [self.system, self.transient, *self._services.values()]
        scopes.extend(self._protocols.values())
        out: dict[str, dict[str, tuple[int, int | None, int]]] = {}
        for scope in scopes:
            row: dict[str, tuple[int, int | None, int]] = {}
            for resource in RESOURCES:
                limit = scope.limits.get(resource)
                row[_METRIC_RESOURCE[resource]] = (
                    scope.used(resource),
                    None if limit >= UNLIMITED else limit,
                    self._blocked_by_name[(scope.name, resource)],
                )
            out[scope.name] = row
        return out

    @property
    def connections(self) -> list[ConnectionScope]:
        """The connection scopes open now."""
        return list(self._conn_scopes)

    # --- scopes ---------------------------------------------------------------------------

    def peer_scope(self, peer: PeerId) -> Scope:
        """The scope of ``peer`` (created on first use, dropped when empty)."""
        s = self._peers.get(peer)
        if s is None:
            limits = self.config.peers.get(str(peer), self.config.scopes["peer"])
            s = self._peers[peer] = Scope(f"peer:{peer}", "peer", limits)
        return s

    def protocol_scope(self, protocol: str) -> Scope:
        """The scope of ``protocol`` (created on first use, dropped when empty)."""
        s = self._protocols.get(protocol)
        if s is None:
            limits = self.config.protocols.get(protocol, self.config.scopes["protocol"])
            s = self._protocols[protocol] = Scope(f"protocol:{protocol}", "protocol", limits)
        return s

    def service_scope(self, service: str) -> Scope:
        """The scope of ``service`` (created on first use, dropped when empty)."""
        s = self._services.get(service)
        if s is None:
            limits = self.config.services.get(service, self.config.scopes["service"])
            s = self._services[service] = Scope(f"service:{service}", "service", limits)
        return s

    def is_allowlisted_ip(self, ip: str | None) -> bool:
        """Whether ``ip`` is in an allowlisted network."""
        if ip is None or not self._networks:
            return False
        addr = normalized_ip(ip)
        return addr is not None and any(addr in n for n in self._networks)

    def is_allowlisted_peer(self, peer: PeerId) -> bool:
        """Whether ``peer`` is allowlisted."""
        return bool(self._allowed_peers) and str(peer) in self._allowed_peers

    # --- connections ----------------------------------------------------------------------

    def open_connection(
        self, direction: Direction, ip: str | None = None, *, peer: PeerId | None = None
    ) -> ConnectionScope:
        """Charge a new connection (``ip``: the remote's address, for the per-IP limits;
        ``peer``: when already known, e.g. a QUIC connection).  Raises
        :class:`ResourceLimitExceeded`."""
        allow = self.is_allowlisted_ip(ip) or (peer is not None and self.is_allowlisted_peer(peer))
        keys = ("conns_" + direction, "conns")
        if ip is not None and not allow:
            if direction == "inbound":
                self._check_ip(ip)
            else:
                self._check_ip_outbound(ip)
        self._charge([self.transient, self.system], keys, 1, allow)
        own = Scope(f"conn:{next(self._ids)}", "connection", self.config.scopes["connection"])
        scope = ConnectionScope(self, own, direction, ip, allow)
        if ip is not None:
            (self._ip_conns if direction == "inbound" else self._ip_out)[ip] += 1
        self._conn_scopes.add(scope)
        if peer is not None:
            try:
                scope.set_peer(peer)
            except ResourceLimitExceeded:
                scope.done()
                raise
        return scope

    def _exempt(self, ip: str) -> bool:
        """Whether per-IP limits leave ``ip`` alone (loopback, when so configured)."""
        if not self.config.exempt_loopback:
            return False
        a = normalized_ip(ip)
        return a is not None and a.is_loopback

    def _check_ip(self, ip: str) -> None:
        cfg = self.config
        if self._exempt(ip):
            return
        held = self._ip_conns[ip]
        if held >= cfg.max_inbound_per_ip:
            self._refused("ip", f"ip:{ip}", "conns_inbound", cfg.max_inbound_per_ip, held, 1)
        if cfg.inbound_rate_per_ip > 0:
            now = self._clock()
            bucket = self._buckets.get(ip)
            if bucket is None:
                if len(self._buckets) >= MAX_IP_BUCKETS:
                    self._prune_buckets(now)
                bucket = self._buckets[ip] = _Bucket(float(cfg.inbound_burst_per_ip), now)
            else:
                bucket.tokens = min(
                    float(cfg.inbound_burst_per_ip),
                    bucket.tokens + (now - bucket.at) * cfg.inbound_rate_per_ip,
                )
                bucket.at = now
            if bucket.tokens < 1.0:
                self._refused(
                    "ip",
                    f"ip:{ip}",
                    "rate",
                    cfg.inbound_burst_per_ip,
                    cfg.inbound_burst_per_ip,
                    1,
                    detail=f" ({cfg.inbound_rate_per_ip:g}/s, burst {cfg.inbound_burst_per_ip})",
                )
            bucket.tokens -= 1.0

    def _check_ip_outbound(self, ip: str) -> None:
        cfg = self.config
        if self._exempt(ip):
            return
        held = self._ip_out[ip]
        if held >= cfg.max_outbound_per_ip:
            self._refused(
                "ip",
                f"ip:{ip}",
                "conns_outbound",
                cfg.max_outbound_per_ip,
                held,
                1,
                detail=" (max_outbound_per_ip)",
            )

    def _prune_buckets(self, now: float) -> None:
        cfg = self.config
        full = float(cfg.inbound_burst_per_ip)
        for ip, b in list(self._buckets.items()):
            if b.tokens + (now - b.at) * cfg.inbound_rate_per_ip >= full:
                del self._buckets[ip]
        while len(self._buckets) >= MAX_IP_BUCKETS:  # all busy: forget the oldest
            del self._buckets[next(iter(self._buckets))]

    def _connection_done(self, scope: ConnectionScope) -> None:
        self._conn_scopes.discard(scope)
        if scope.ip is not None:
            counts = self._ip_conns if scope.direction == "inbound" else self._ip_out
            left = counts[scope.ip] - 1
            if left > 0:
                counts[scope.ip] = left
            else:
                del counts[scope.ip]

    def _open_stream(self, conn: ConnectionScope, direction: Direction) -> StreamScope:
        own = Scope(f"stream:{next(self._ids)}", "stream", self.config.scopes["stream"])
        st = StreamScope(self, own, conn, direction)
        self._add_stream(st._counted, st._key, st.allowlisted)
        conn.streams.add(st)
        return st

    # --- accounting -----------------------------------------------------------------------

    def _charge(self, chain: list[Scope], keys: tuple[str, ...], n: int, allow: bool) -> None:
        if not allow:
            for s in chain:
                limits = s.limits
                for key in keys:
                    used = s._used[key]
                    limit: int = getattr(limits, key)  # Limits.get, inline: every stream
                    if used + n > limit:
                        self._refused(s.kind, s.name, key, limit, used, n)
        for s in chain:
            for key in keys:
                s._used[key] += n

    def _add_stream(self, chain: list[Scope], key: str, allow: bool) -> None:
        """:meth:`_charge` of one stream (``key``: its direction's count, and ``streams``)."""
        if not allow:
            for s in chain:
                used = s._used
                limits = s.limits
                limit: int = getattr(limits, key)
                if used[key] >= limit:
                    self._refused(s.kind, s.name, key, limit, used[key], 1)
                if used["streams"] >= limits.streams:
                    self._refused(s.kind, s.name, "streams", limits.streams, used["streams"], 1)
        for s in chain:
            used = s._used
            used[key] += 1
            used["streams"] += 1

    def _remove_stream(self, chain: list[Scope], key: str) -> None:
        """:meth:`_release` of one stream (what :meth:`_add_stream` charged)."""
        for s in chain:
            used = s._used
            if used[key] > 0:
                used[key] -= 1
            left = used["streams"] - 1
            if left > 0:
                used["streams"] = left
            else:
                used["streams"] = 0
                if s.kind in _DROPPABLE and s.is_empty:
                    self._drop(s)

    def _charge_memory(self, chain: list[Scope], n: int, allow: bool) -> None:
        """:meth:`_charge` of memory alone (the hot path: every received chunk)."""
        if not allow:
            for s in chain:
                used = s._used["memory"]
                if used + n > s.limits.memory:
                    self._refused(s.kind, s.name, "memory", s.limits.memory, used, n)
        for s in chain:
            s._used["memory"] += n

    def _release_memory(self, chain: list[Scope], n: int) -> None:
        """:meth:`_release` of memory alone (the hot path: every chunk read)."""
        for s in chain:
            used = s._used
            left = used["memory"] - n
            if left > 0:
                used["memory"] = left
            else:
                used["memory"] = 0
                if s.kind in _DROPPABLE and s.is_empty:
                    self._drop(s)

    def _release(self, chain: list[Scope], keys: tuple[str, ...], n: int) -> None:
        for s in chain:
            used = s._used
            for key in keys:
                used[key] = max(0, used[key] - n)
            if s.kind in _DROPPABLE and s.is_empty:
                self._drop(s)

    def _drop(self, s: Scope) -> None:
        group: dict[object, Scope]
        if s.kind == "peer":
            group = self._peers  # type: ignore[assignment]
        elif s.kind == "protocol":
            group = self._protocols  # type: ignore[assignment]
        else:
            group = self._services  # type: ignore[assignment]
        for key, value in list(group.items()):
            if value is s:
                # a span still pointing at it re-creates nothing: it holds a reference
                del group[key]
                return

    def _refused(
        self,
        kind: str,
        name: str,
        resource: str,
        limit: int,
        used: int,
        amount: int,
        *,
        detail: str = "",
    ) -> None:
        self.blocked[(kind, resource)] += 1
        if kind in _REPORTED_KINDS:
            self._blocked_by_name[(name, resource)] += 1
        event = LimitEvent(name, kind, resource, limit, used, amount)
        for cb in self._observers:
            try:
                cb(event)
            except Exception:
                log.exception("resource manager observer failed")
        raise ResourceLimitExceeded(
            f"resource limit exceeded: scope {name}, {resource} limit {limit}{detail} "
            f"(in use {used}, asked {amount})",
            scope=name,
            resource=resource,
            limit=limit,
        )

    def __repr__(self) -> str:
        return f"<ResourceManager {self.system.usage()}>"
