"""NAT and firewall boxes as a pure state machine (RFC 4787 for UDP, RFC 5382 for TCP).

:class:`NatTable` is sans-IO: it is fed "this packet goes out / comes in at
virtual time ``t``" and answers with a :class:`Verdict` (forward the
translated packet, drop it, or reject it with a TCP reset).  It knows nothing
about links, hosts or the event loop; the simulator's glue
(:mod:`switchy.transports.sim.natbox`) feeds it and records what it says.

Vocabulary (RFC 4787 section 4):

* an **endpoint** is ``(host_name, port)``;
* a **mapping** binds an internal endpoint to an external endpoint (the NAT's
  public host and a port it assigned); what a mapping is keyed on is the
  *mapping behaviour*: the internal endpoint alone (endpoint-independent),
  plus the remote host (address-dependent), plus the remote port too
  (address-and-port-dependent, "symmetric");
* each mapping holds **permissions**: the remote endpoints the internal
  endpoint sent to through it, each with its own expiry; the mapping lives
  while one of its permissions does.  The *filtering behaviour* decides which
  inbound packets a live mapping lets in: any (endpoint-independent), from a
  host it sent to (address-dependent), from an endpoint it sent to
  (address-and-port-dependent);
* a box that does not translate (``translate=False``) is a stateful firewall:
  mappings are the identity and only filtering applies; with
  ``filtering="none"`` it lets everything through (the ``open`` preset).

Expiry is evaluated lazily: every call first retires what expired before
its ``now`` (reported as ``expire`` events carrying the exact expiry time), so
a run needs no timers and stays a function of its packets.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any, Final, Literal, get_args

import attrs

from switchy.stack.errors import InvalidConfiguration

__all__ = [
    "NAT_PRESETS",
    "TCP_ESTABLISHED_TIMEOUT",
    "TCP_TRANSITORY_TIMEOUT",
    "UDP_MAPPING_TIMEOUT",
    "Behaviour",
    "Endpoint",
    "Filtering",
    "NatConfig",
    "NatCounters",
    "NatEvent",
    "NatMapping",
    "NatPacket",
    "NatTable",
    "PortAssignment",
    "Verdict",
    "nat_preset",
]

#: Idle lifetime of a UDP mapping (Linux conntrack's ``nf_conntrack_udp_timeout``).
UDP_MAPPING_TIMEOUT: Final = 30.0
#: Idle lifetime of an established TCP mapping (RFC 5382 REQ-5: at least 2 h 4 min).
TCP_ESTABLISHED_TIMEOUT: Final = 2 * 3600.0 + 4 * 60.0
#: Lifetime of a TCP mapping in a transitory state (SYN seen, or FIN/RST seen; RFC 5382: 4 min).
TCP_TRANSITORY_TIMEOUT: Final = 240.0
#: Random port picks tried before a random assignment scans for a free port.
_RANDOM_TRIES: Final = 64

Behaviour = Literal["endpoint_independent", "address_dependent", "address_and_port_dependent"]
Filtering = Literal[
    "endpoint_independent", "address_dependent", "address_and_port_dependent", "none"
]
PortAssignment = Literal["preserving", "sequential", "random"]
SynAnswer = Literal["drop", "rst"]
Proto = Literal["udp", "tcp"]
#: What a packet is: UDP packets are all ``data``; TCP packets are a SYN (also a
#: SYN-ACK), data (any other segment of a flow), a FIN or a RST.
Kind = Literal["syn", "data", "fin", "rst"]
Endpoint = tuple[str, int]

_BEHAVIOURS: Final = get_args(Behaviour)
_FILTERINGS: Final = get_args(Filtering)
_ASSIGNMENTS: Final = get_args(PortAssignment)
_SYN_ANSWERS: Final = get_args(SynAnswer)
_PROTOS: Final = get_args(Proto)
_KINDS: Final = get_args(Kind)

# Drop / reject reasons (the trace's ``extra["reason"]``).
NAT_NO_MAPPING: Final = "nat_no_mapping"
NAT_FILTERED: Final = "nat_filtered"
NAT_UNSOLICITED_SYN: Final = "nat_unsolicited_syn"
NAT_HAIRPIN_OFF: Final = "nat_hairpin_off"
NAT_PRIVATE: Final = "nat_private_address"
NAT_PORTS_EXHAUSTED: Final = "nat_ports_exhausted"


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise InvalidConfiguration(
                f"NAT {attribute.name} must be one of {', '.join(choices)}; got {value!r}"
            )

    return check


def _lifetime(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        raise InvalidConfiguration(f"NAT {attribute.name} must be seconds > 0, got {value!r}")


def _port_range(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in value)
        and 1 <= value[0] <= value[1] <= 65_535
    )
    if not ok:
        raise InvalidConfiguration(
            f"NAT port_range must be (low, high) with 1 <= low <= high <= 65535, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class NatConfig:
    """The behaviour of one NAT or firewall box (see the module docstring and RFC 4787/5382)."""

    #: False: a firewall that keeps addresses as they are (only filtering applies).
    translate: bool = True
    #: What a mapping is keyed on besides the internal endpoint.
    mapping: Behaviour = attrs.field(default="endpoint_independent", validator=_one_of(_BEHAVIOURS))
    #: Which inbound packets a live mapping lets in (``none``: all, only without translation).
    filtering: Filtering = attrs.field(
        default="address_and_port_dependent", validator=_one_of(_FILTERINGS)
    )
    #: How an external port is chosen: the internal port if free, the next free one, or random.
    port_assignment: PortAssignment = attrs.field(
        default="preserving", validator=_one_of(_ASSIGNMENTS)
    )
    #: External ports the box assigns, inclusive.
    port_range: tuple[int, int] = attrs.field(default=(1024, 65_535), validator=_port_range)
    #: Whether a packet from inside to the box's own public address is looped back in.
    hairpinning: bool = True
    #: Idle lifetime of a UDP permission (seconds).
    udp_timeout: float = attrs.field(default=UDP_MAPPING_TIMEOUT, validator=_lifetime)
    #: Idle lifetime of an established TCP permission (seconds).
    tcp_established_timeout: float = attrs.field(
        default=TCP_ESTABLISHED_TIMEOUT, validator=_lifetime
    )
    #: Lifetime of a TCP permission before establishment and after FIN/RST (seconds).
    tcp_transitory_timeout: float = attrs.field(default=TCP_TRANSITORY_TIMEOUT, validator=_lifetime)
    #: Whether inbound packets also refresh the permission they matched (RFC 4787 REQ-6: MAY).
    inbound_refresh: bool = False
    #: What an unsolicited inbound TCP SYN gets: silence, or a reset (Linux's default).
    unsolicited_syn: SynAnswer = attrs.field(default="rst", validator=_one_of(_SYN_ANSWERS))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.translate, bool) or not isinstance(self.hairpinning, bool):
            raise InvalidConfiguration("NAT translate and hairpinning must be booleans")
        if not isinstance(self.inbound_refresh, bool):
            raise InvalidConfiguration("NAT inbound_refresh must be a boolean")
        if self.translate and self.filtering == "none":
            raise InvalidConfiguration(
                "NAT filtering='none' needs translate=False (a translating NAT can only let "
                "inbound packets reach mapped ports: use filtering='endpoint_independent')"
            )
        if not self.translate and self.mapping != "endpoint_independent":
            raise InvalidConfiguration(
                "a firewall (translate=False) keeps addresses as they are, so its mapping "
                f"must be endpoint_independent, got {self.mapping!r}"
            )

    def lifetime(self, proto: Proto, established: bool) -> float:
        """How long a permission of ``proto`` lives without traffic."""
        if proto == "udp":
            return self.udp_timeout
        return self.tcp_established_timeout if established else self.tcp_transitory_timeout


_HOME: Final = NatConfig()

#: The presets by plain name.  ``cgnat`` is the carrier layer of the two-layer
#: ``cgnat`` set-up (the home layer under it is ``port_restricted``).
NAT_PRESETS: Final[dict[str, NatConfig]] = {
    "full_cone": attrs.evolve(_HOME, filtering="endpoint_independent"),
    "address_restricted": attrs.evolve(_HOME, filtering="address_dependent"),
    "port_restricted": _HOME,
    "symmetric": attrs.evolve(
        _HOME, mapping="address_and_port_dependent", port_assignment="random"
    ),
    "cgnat": attrs.evolve(_HOME, port_assignment="sequential", port_range=(1024, 65_535)),
    "firewall": NatConfig(translate=False),
    "open": NatConfig(translate=False, filtering="none"),
}


def nat_preset(name: str) -> NatConfig:
    """The :class:`NatConfig` of preset ``name``; :class:`InvalidConfiguration` if unknown."""
    try:
        return NAT_PRESETS[name]
    except (KeyError, TypeError):
        raise InvalidConfiguration(
            f"unknown NAT preset {name!r}; choose one of: {', '.join(NAT_PRESETS)}"
        ) from None


@attrs.frozen
class NatPacket:
    """A packet as a box sees it: protocol, source and destination endpoints, TCP kind."""

    proto: Proto
    src: Endpoint
    dst: Endpoint
    kind: Kind = "data"

    def __attrs_post_init__(self) -> None:
        if self.proto not in _PROTOS:
            raise InvalidConfiguration(f"a NAT packet's proto is udp or tcp, got {self.proto!r}")
        if self.kind not in _KINDS or (self.proto == "udp" and self.kind != "data"):
            raise InvalidConfiguration(f"bad kind {self.kind!r} for a {self.proto} packet")


@attrs.frozen
class NatEvent:
    """Something the table did: ``map`` (a new mapping), ``reuse`` (a mapping used toward a
    new remote), ``expire`` (a mapping retired at ``at``)."""

    kind: Literal["map", "reuse", "expire"]
    proto: Proto
    internal: Endpoint
    external: Endpoint
    remote: Endpoint | None
    at: float

    def to_extra(self) -> dict[str, Any]:
        """The event as JSON-ready trace fields."""
        extra: dict[str, Any] = {
            "proto": self.proto,
            "internal": f"{self.internal[0]}:{self.internal[1]}",
            "external": f"{self.external[0]}:{self.external[1]}",
        }
        if self.remote is not None:
            extra["remote"] = f"{self.remote[0]}:{self.remote[1]}"
        if self.kind == "expire":
            extra["expired_at"] = self.at
        return extra


@attrs.frozen
class Verdict:
    """The answer for one packet: ``forward`` ``packet`` (translated), ``drop`` it, or
    ``reject`` it (a TCP reset goes back to its source); ``events`` happened meanwhile."""

    action: Literal["forward", "drop", "reject"]
    packet: NatPacket | None = None
    reason: str = ""
    events: tuple[NatEvent, ...] = ()
    #: True when the packet was looped back in (hairpinning).
    hairpinned: bool = False


@attrs.define(slots=True)
class NatCounters:
    """What one box did so far."""

    mappings_created: int = 0
    mappings_reused: int = 0
    mappings_expired: int = 0
    forwarded_out: int = 0
    forwarded_in: int = 0
    hairpinned: int = 0
    rejected: int = 0
    drops: int = 0
    #: Drops (and rejects) per reason.
    drop_reasons: dict[str, int] = attrs.field(factory=dict)


@attrs.define(slots=True, eq=False)
class _Permission:
    expires_at: float
    established: bool = False


@attrs.define(slots=True, eq=False)
class NatMapping:
    """One binding of an internal endpoint to an external one, with its permissions."""

    proto: Proto
    internal: Endpoint
    external: Endpoint
    key: tuple[Any, ...]
    created_at: float
    permissions: dict[Endpoint, _Permission] = attrs.field(factory=dict)

    @property
    def expires_at(self) -> float:
        """When the mapping dies unless refreshed (its last permission's expiry)."""
        return max((p.expires_at for p in self.permissions.values()), default=-math.inf)

    def alive(self, now: float) -> bool:
        """Whether the mapping still lives at ``now``."""
        return self.expires_at > now

    def allows(self, filtering: Filtering, remote: Endpoint, now: float) -> bool:
        """Whether an inbound packet from ``remote`` passes ``filtering`` at ``now``."""
        if filtering in ("none", "endpoint_independent"):
            return True
        if filtering == "address_dependent":
            return any(
                r[0] == remote[0] and p.expires_at > now for r, p in self.permissions.items()
            )
        perm = self.permissions.get(remote)
        return perm is not None and perm.expires_at > now

    def remotes(self, now: float) -> list[Endpoint]:
        """The remote endpoints with a live permission, sorted."""
        return sorted(r for r, p in self.permissions.items() if p.expires_at > now)


class NatTable:
    """The state of one box: its mappings, keyed per its mapping behaviour (sans-IO).

    ``public_host`` is the name of the box's external address; ``rng`` draws
    random ports (pass the simulation's seeded PRNG).
    """

    def __init__(self, public_host: str, config: NatConfig, rng: random.Random) -> None:
        self.public_host = public_host
        self.config = config
        self._rng = rng
        self.counters = NatCounters()
        self._by_key: dict[tuple[Any, ...], NatMapping] = {}
        self._by_ext: dict[tuple[str, Endpoint], NatMapping] = {}
        self._ports: dict[str, set[int]] = {"udp": set(), "tcp": set()}
        self._cursor: dict[str, int] = {"udp": config.port_range[0], "tcp": config.port_range[0]}
        self._heap: list[tuple[float, int, NatMapping]] = []
        self._seq = itertools.count()

    # --- queries --------------------------------------------------------------------------

    def mappings(self, proto: Proto | None = None) -> list[NatMapping]:
        """The mappings held now (call :meth:`expire` first for an up-to-date list)."""
        found = [m for m in self._by_ext.values() if proto is None or m.proto == proto]
        return sorted(found, key=lambda m: (m.proto, m.external, m.internal))

    def __len__(self) -> int:
        return len(self._by_ext)

    def __iter__(self) -> Iterator[NatMapping]:
        return iter(self.mappings())

    def lookup(self, proto: Proto, external: Endpoint) -> NatMapping | None:
        """The mapping owning ``external`` (live or not yet retired), if any."""
        return self._by_ext.get((proto, external))

    # --- expiry ---------------------------------------------------------------------------

    def expire(self, now: float) -> list[NatEvent]:
        """Retire every mapping that expired at or before ``now``; return ``expire`` events."""
        events: list[NatEvent] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, mapping = heapq.heappop(heap)
            if self._by_ext.get((mapping.proto, mapping.external)) is not mapping:
                continue  # already removed
            expires = mapping.expires_at
            if expires > now:
                heapq.heappush(heap, (expires, next(self._seq), mapping))
                continue
            self._remove(mapping)
            self.counters.mappings_expired += 1
            events.append(
                NatEvent("expire", mapping.proto, mapping.internal, mapping.external, None, expires)
            )
        return events

    def clear(self) -> int:
        """Forget every mapping (the box rebooted); return how many there were."""
        n = len(self._by_ext)
        self._by_key.clear()
        self._by_ext.clear()
        for ports in self._ports.values():
            ports.clear()
        self._heap.clear()
        return n

    def _remove(self, mapping: NatMapping) -> None:
        self._by_ext.pop((mapping.proto, mapping.external), None)
        if self._by_key.get(mapping.key) is mapping:
            del self._by_key[mapping.key]
        if self.config.translate:
            self._ports[mapping.proto].discard(mapping.external[1])

    # --- the two directions ---------------------------------------------------------------

    def outbound(self, packet: NatPacket, now: float) -> Verdict:
        """``packet`` leaves the LAN through the box at ``now``: translate it, or drop it."""
        events = self.expire(now)
        cfg = self.config
        proto = packet.proto
        internal, remote = packet.src, packet.dst
        hairpin = cfg.translate and remote[0] == self.public_host
        if hairpin and not cfg.hairpinning:
            return self._drop(NAT_HAIRPIN_OFF, events)
        key = self._key(proto, internal, remote)
        mapping = self._by_key.get(key)
        perm = mapping.permissions.get(remote) if mapping is not None else None
        if perm is not None and perm.expires_at <= now:
            perm = None
        if proto == "tcp" and packet.kind != "syn" and perm is None:
            # No flow for a non-SYN segment: nothing to translate it with.
            return self._drop(NAT_NO_MAPPING, events)
        if mapping is None:
            port = self._assign_port(proto, internal[1])
            if port is None:
                return self._drop(NAT_PORTS_EXHAUSTED, events)
            external = (self.public_host, port) if cfg.translate else internal
            mapping = NatMapping(proto, internal, external, key, now)
            self._by_key[key] = mapping
            self._by_ext[(proto, external)] = mapping
            if cfg.translate:
                self._ports[proto].add(port)
            self.counters.mappings_created += 1
            events.append(NatEvent("map", proto, internal, external, remote, now))
        elif perm is None:
            self.counters.mappings_reused += 1
            events.append(NatEvent("reuse", proto, internal, mapping.external, remote, now))
        self._refresh(mapping, remote, packet.kind, now, inbound=False)
        out = NatPacket(proto, mapping.external, remote, packet.kind)
        if hairpin:
            looped = self._inbound(out, now, events)
            if looped.action == "forward":
                self.counters.hairpinned += 1
                return attrs.evolve(looped, hairpinned=True)
            return looped
        self.counters.forwarded_out += 1
        return Verdict("forward", out, events=tuple(events))

    def inbound(self, packet: NatPacket, now: float) -> Verdict:
        """``packet`` arrives from outside at ``now``: translate it to the LAN, drop or reject."""
        return self._inbound(packet, now, self.expire(now))

    def _inbound(self, packet: NatPacket, now: float, events: list[NatEvent]) -> Verdict:
        cfg = self.config
        proto = packet.proto
        remote, dst = packet.src, packet.dst
        syn = proto == "tcp" and packet.kind == "syn"
        if not cfg.translate and cfg.filtering == "none":
            self.counters.forwarded_in += 1
            return Verdict("forward", packet, events=tuple(events))
        if cfg.translate and dst[0] != self.public_host:
            return self._drop(NAT_PRIVATE, events)
        mapping = self._by_ext.get((proto, dst))
        if mapping is None or not mapping.allows(cfg.filtering, remote, now):
            if syn:
                reason = NAT_UNSOLICITED_SYN if mapping is None else NAT_FILTERED
                if cfg.unsolicited_syn == "rst":
                    return self._drop(reason, events, reject=True)
                return self._drop(reason, events)
            return self._drop(NAT_NO_MAPPING if mapping is None else NAT_FILTERED, events)
        perm = mapping.permissions.get(remote)
        if perm is not None and perm.expires_at <= now:
            perm = None
        if proto == "tcp" and perm is None and not syn:
            return self._drop(NAT_NO_MAPPING, events)  # a segment of no flow
        if proto == "tcp" or cfg.inbound_refresh:
            self._refresh(mapping, remote, packet.kind, now, inbound=True)
        self.counters.forwarded_in += 1
        inside = NatPacket(proto, remote, mapping.internal, packet.kind)
        return Verdict("forward", inside, events=tuple(events))

    # --- helpers --------------------------------------------------------------------------

    def _key(self, proto: Proto, internal: Endpoint, remote: Endpoint) -> tuple[Any, ...]:
        mapping = self.config.mapping
        if mapping == "endpoint_independent":
            return (proto, internal)
        if mapping == "address_dependent":
            return (proto, internal, remote[0])
        return (proto, internal, remote)

    def _refresh(
        self, mapping: NatMapping, remote: Endpoint, kind: Kind, now: float, *, inbound: bool
    ) -> None:
        """Record a packet to/from ``remote``: create or extend its permission."""
        cfg = self.config
        perm = mapping.permissions.get(remote)
        fresh = perm is None or perm.expires_at <= now
        if fresh:
            perm = mapping.permissions[remote] = _Permission(now)
        assert perm is not None
        if mapping.proto == "udp":
            if not inbound or cfg.inbound_refresh:
                perm.expires_at = max(perm.expires_at, now + cfg.udp_timeout)
        elif kind in ("fin", "rst"):
            perm.established = False
            perm.expires_at = now + cfg.tcp_transitory_timeout
        else:
            # The first inbound packet of a flow we opened (SYN-ACK, crossing SYN): established.
            became = inbound and not fresh and not perm.established
            if became:
                perm.established = True
            if not inbound or cfg.inbound_refresh or fresh or became:
                life = cfg.lifetime("tcp", perm.established)
                perm.expires_at = max(perm.expires_at, now + life)
        heapq.heappush(self._heap, (mapping.expires_at, next(self._seq), mapping))

    def _assign_port(self, proto: Proto, internal_port: int) -> int | None:
        cfg = self.config
        if not cfg.translate:
            return internal_port
        low, high = cfg.port_range
        used = self._ports[proto]
        size = high - low + 1
        if len(used) >= size:
            return None
        kind = cfg.port_assignment
        if kind == "preserving" and low <= internal_port <= high and internal_port not in used:
            return internal_port
        if kind == "random":
            for _ in range(_RANDOM_TRIES):
                port = self._rng.randint(low, high)
                if port not in used:
                    return port
        start = self._cursor[proto]
        for i in range(size):
            port = low + (start - low + i) % size
            if port not in used:
                self._cursor[proto] = low + (port - low + 1) % size
                return port
        return None  # pragma: no cover - guarded by the size check above

    def _drop(self, reason: str, events: list[NatEvent], *, reject: bool = False) -> Verdict:
        c = self.counters
        c.drop_reasons[reason] = c.drop_reasons.get(reason, 0) + 1
        if reject:
            c.rejected += 1
            return Verdict("reject", None, reason, tuple(events))
        c.drops += 1
        return Verdict("drop", None, reason, tuple(events))
