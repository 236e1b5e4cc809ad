"""The thin glue between :class:`~switchy.transports.sim.nat.NatTable` and the network graph.

A :class:`NatBox` is a host of the network (the router) plus a NAT table and
the set of hosts on its LAN.  :class:`NatLayer` (one per network, made by the
first :meth:`~switchy.transports.sim.network.Network.add_nat`) knows which
box a packet meets next on its way and walks packets through boxes.

How a packet travels (``hop`` is where it is now, ``dst`` the host it is
addressed to):

1. if ``hop`` sits on the LAN of a box ``G`` and ``dst`` is neither behind
   ``G`` nor ``G`` itself, the packet goes to ``G`` first, which translates it
   outbound (a packet to ``G``'s own public address is the hairpin case);
2. else, if ``dst`` is behind boxes that ``hop`` is not behind, it goes to the
   outermost of them, which handles it inbound (for a translating NAT a
   packet addressed straight to a host behind it is dropped: that address is
   private; a firewall filters it);
3. else, if ``dst`` is a box, the box handles it inbound (its public address);
4. else it goes straight to ``dst``.

After a box forwards, the box is the new ``hop`` and the translated packet
goes on by the same rules, so boxes nest (``cgnat``: a home NAT on the LAN
of a carrier NAT).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Final

import attrs

from switchy.stack.errors import InvalidConfiguration
from switchy.transports.sim.nat import (
    NatConfig,
    NatCounters,
    NatMapping,
    NatPacket,
    NatTable,
    Verdict,
)

if TYPE_CHECKING:
    from switchy.transports.sim.network import Host, Network, _Route

__all__ = ["MAX_NAT_HOPS", "NAT_LOOP", "NatBox", "NatLayer", "Walk"]

#: Most boxes one packet may cross (guards against a misbuilt nesting).
MAX_NAT_HOPS: Final = 16
#: Drop reason for a packet that crossed more than :data:`MAX_NAT_HOPS` boxes.
NAT_LOOP: Final = "nat_loop"


class NatBox:
    """A NAT or firewall on the network graph.  Create with
    :meth:`~switchy.transports.sim.network.Network.add_nat`."""

    def __init__(
        self,
        network: Network,
        host: Host,
        config: NatConfig,
        preset: str | None,
        lan: list[Host],
        wan: Host,
        rng: random.Random,
    ) -> None:
        self.network = network
        #: The router host; its address is the box's public address.
        self.host = host
        #: The box's name (its host's name).
        self.name = host.name
        #: The behaviour of the box.
        self.config = config
        #: The preset it was made from, if any.
        self.preset = preset
        #: Hosts on the box's LAN side (in order of creation).
        self.lan: list[Host] = list(lan)
        #: The host on the box's WAN side.
        self.wan = wan
        #: The pure state machine.
        self.table = NatTable(host.name, config, rng)
        #: Set by the ``cgnat`` preset: the carrier box this home box sits behind.
        self.upstream: NatBox | None = None
        host.on_crash(self._crashed)

    @property
    def counters(self) -> NatCounters:
        """The table's :class:`~switchy.transports.sim.nat.NatCounters`."""
        return self.table.counters

    def process(self, packet: NatPacket, *, outbound: bool) -> Verdict:
        """Hand ``packet`` to the table now; record what it reports in the trace."""
        net = self.network
        now = net.now
        table = self.table
        verdict = table.outbound(packet, now) if outbound else table.inbound(packet, now)
        for event in verdict.events:
            net._record("nat_" + event.kind, self.name, "", 0, event.to_extra())
        return verdict

    def expire(self) -> int:
        """Retire the mappings that expired by now (recorded in the trace); return how many."""
        events = self.table.expire(self.network.now)
        for event in events:
            self.network._record("nat_expire", self.name, "", 0, event.to_extra())
        return len(events)

    def mappings(self, proto: str | None = None) -> list[NatMapping]:
        """The live mappings (``proto``: only ``udp`` or ``tcp`` ones)."""
        self.expire()
        if proto not in (None, "udp", "tcp"):
            raise InvalidConfiguration(f"proto must be udp, tcp or None, got {proto!r}")
        return self.table.mappings(proto)  # type: ignore[arg-type]

    def _crashed(self, _host: Host) -> None:
        lost = self.table.clear()
        self.network._record("nat_clear", self.name, "", 0, {"mappings": lost})

    def __repr__(self) -> str:
        kind = self.preset or ("nat" if self.config.translate else "firewall")
        return f"<NatBox {self.name} {kind} lan={[h.name for h in self.lan]} wan={self.wan.name}>"


@attrs.frozen
class Walk:
    """A packet walked through every box on its way at one instant.

    On success ``final`` is the host it reaches, ``packet`` what that host sees
    and ``route`` the links of all legs; otherwise ``reason`` says why not,
    and ``box`` is the box that rejected it (with ``packet`` as the box saw it)
    when the answer is a reset.
    """

    route: _Route | None
    final: Host | None
    packet: NatPacket
    reason: str | None = None
    box: NatBox | None = None
    crossed: int = 0


class NatLayer:
    """Every box of one network and the rules of which box a packet meets next."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.boxes: dict[str, NatBox] = {}
        #: Host name → the box whose LAN it is on.
        self.gateway: dict[str, NatBox] = {}

    def add(self, box: NatBox) -> None:
        """Register ``box`` and its LAN."""
        for member in box.lan:
            other = self.gateway.get(member.name)
            if other is not None:
                raise InvalidConfiguration(
                    f"host {member.name!r} is already on the LAN of NAT {other.name!r}"
                )
        self.boxes[box.name] = box
        for member in box.lan:
            self.gateway[member.name] = box
        # No box may end up behind itself.
        for name in self.boxes:
            self.ancestors(name)

    def add_member(self, box: NatBox, host: Host) -> None:
        """Put ``host`` on the LAN of the registered ``box`` too."""
        other = self.gateway.get(host.name)
        if other is not None:
            raise InvalidConfiguration(
                f"host {host.name!r} is already on the LAN of NAT {other.name!r}"
            )
        self.gateway[host.name] = box
        self.ancestors(host.name)

    def ancestors(self, name: str) -> list[NatBox]:
        """The boxes ``name`` is behind, innermost first."""
        chain: list[NatBox] = []
        box = self.gateway.get(name)
        while box is not None:
            if box in chain or len(chain) > MAX_NAT_HOPS:
                raise InvalidConfiguration(f"NAT boxes are nested in a loop around {name!r}")
            chain.append(box)
            box = self.gateway.get(box.name)
        return chain

    def next_target(self, hop: Host, dst: str) -> tuple[str, NatBox | None, bool]:
        """Where a packet at ``hop`` addressed to host ``dst`` goes next.

        Returns ``(host name, box or None, outbound)``: the box to process it
        there (None: it is delivered) and in which direction.
        """
        gateway = self.gateway.get(hop.name)
        behind = self.ancestors(dst)
        if gateway is not None and gateway not in behind:
            return gateway.name, gateway, True
        mine = self.ancestors(hop.name)
        chain: list[NatBox] = []
        for box in behind:
            if box.name == hop.name or box in mine:
                break
            chain.append(box)
        if chain:
            return chain[-1].name, chain[-1], False
        own = self.boxes.get(dst)
        if own is not None and dst != hop.name:
            return dst, own, False
        return dst, None, False

    def crosses(self, src: Host, dst: Host) -> bool:
        """Whether a packet from ``src`` to ``dst`` meets a box."""
        return self.next_target(src, dst.name)[1] is not None

    def walk_now(self, origin: Host, packet: NatPacket) -> Walk:
        """Take ``packet`` from ``origin`` through every box at the current instant.

        Each leg must be open (no partition, link or host down, held link);
        the route of all legs is returned for the transit time.
        """
        from switchy.transports.sim.network import HELD, PARTITIONED, _Route

        net = self.network
        hop = origin
        links: list[Any] = []
        hosts: list[str] = [origin.name]
        crossed = 0
        for _ in range(MAX_NAT_HOPS + 1):
            name, box, outbound = self.next_target(hop, packet.dst[0])
            target = net.host(name)
            route = net._route(hop, target)
            reason = net._blocked(hop, target, route)
            if reason is not None:
                held = route if reason == HELD else None
                return Walk(held, None, packet, reason, crossed=crossed)
            assert route is not None
            links.extend(route.links)
            hosts.extend(route.hosts[1:])
            if box is None:
                if net._partitions and net._partitioned(origin.name, target.name):
                    return Walk(None, None, packet, PARTITIONED, crossed=crossed)
                return Walk(_Route(tuple(links), tuple(hosts)), target, packet, crossed=crossed)
            verdict = box.process(packet, outbound=outbound)
            crossed += 1
            if verdict.action != "forward":
                return Walk(
                    None,
                    None,
                    packet,
                    verdict.reason,
                    box if verdict.action == "reject" else None,
                    crossed,
                )
            assert verdict.packet is not None
            packet = verdict.packet
            hop = target
        return Walk(None, None, packet, NAT_LOOP, crossed=crossed)
