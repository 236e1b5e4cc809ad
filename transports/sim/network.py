"""The simulated network: hosts, links, routes, partitions, crashes, holds.

Model
-----
* A :class:`Host` has a name, a number (its index, from 1) and ports.  It can
  crash (its connections are reset, its listeners and datagram sockets are
  closed, the tasks it spawned are cancelled) and restart (a new incarnation:
  segments of connections from before the crash are answered with a reset).
* A :class:`Link` is directed, from one host to another, with a one-way
  ``latency`` (seconds), ``jitter`` (± seconds, uniform, never below zero),
  ``loss`` rate, ``duplicate`` and ``reorder`` rates (datagrams only),
  ``bandwidth`` (bytes/s; packets queue behind each other and wait their
  transmission time) and an up/down state.  :meth:`Network.add_link` creates
  both directions unless ``directed=True``.
* Packets follow the shortest route by total latency (ties: fewer hops, then
  lower host numbers) over links that are up, through intermediate hosts that
  are up.  :meth:`Network.find_path` shows the route.
* A :class:`Partition` separates two groups of hosts, both ways or one way.
  Packets between the groups are dropped; :meth:`Network.heal` removes it.
* :meth:`Network.hold` parks the traffic entering a link; :meth:`Network.release`
  sends it on.  Held stream traffic waits without timing out.

* :meth:`Network.add_nat` puts hosts behind a NAT or firewall box (RFC 4787 /
  RFC 5382 behaviours, presets by name); packets to and from them are
  translated and filtered on the way (see ``specs/simulator-nat.md``).
  :meth:`Network.connect` with ``local_port`` dials from a given (listening)
  port; two such dials that cross make one connection (simultaneous open).

Conditions are checked when a packet is sent: packets already travelling when
a link goes down or a partition starts still arrive, except at a crashed host.

Randomness (loss, jitter, duplication, reordering) comes from the one
``random.Random`` the network is given, so a run is a function of its seed.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.errors import (
    ConnectionFailed,
    InvalidConfiguration,
    MessageTooLarge,
    NoRoute,
    P2PTimeout,
)
from switchy.transports.sim.config import SimConfig
from switchy.transports.sim.trace import HostCounters, LinkCounters, TraceRecorder

if TYPE_CHECKING:
    from switchy.transports.sim.datagram import SimDatagramTransport
    from switchy.transports.sim.nat import Kind, NatConfig, NatPacket
    from switchy.transports.sim.natbox import NatBox, NatLayer
    from switchy.transports.sim.stream import SimConnection, SimListener

__all__ = [
    "DEFAULT_STREAM_WINDOW",
    "FIRST_EPHEMERAL_PORT",
    "MAX_PORT",
    "SIM_PORT_SPAN",
    "Host",
    "Link",
    "Network",
    "Partition",
    "sim_host_number",
    "sim_multiaddr",
]

log = logging.getLogger(__name__)

#: A host's sim address is ``/memory/<host number * SIM_PORT_SPAN + port>``.
SIM_PORT_SPAN: Final = 100_000
#: Highest port number.
MAX_PORT: Final = 65_535
#: Ports picked for port 0 start here.
FIRST_EPHEMERAL_PORT: Final = 49_152
#: Bytes a stream endpoint may have sent but the peer not yet read before ``write`` waits.
DEFAULT_STREAM_WINDOW: Final = 256 * 1024
#: Largest piece a stream write is cut into (the unit of bandwidth queueing and delivery).
MAX_SEGMENT: Final = 64 * 1024
#: Size charged for connection set-up and tear-down packets (SYN, SYN-ACK, RST).
CONTROL_PACKET_SIZE: Final = 40
#: Smallest retransmission timeout of a stream segment (like Linux' 200 ms).
MIN_RTO: Final = 0.2
#: Retransmission timeout of a connection request (RFC 6298 initial RTO).
SYN_RTO: Final = 1.0
#: Largest retransmission timeout after exponential backoff.
MAX_RTO: Final = 60.0
#: Retransmissions of one segment after which the path counts as blocked.
MAX_RETRANSMITS: Final = 15
#: A datagram is dropped (tail drop) when a link's queue is this many seconds long.
MAX_QUEUE_DELAY: Final = 1.0

# Reasons a packet cannot get through (values of the trace's ``extra["reason"]``).
SRC_DOWN: Final = "src_down"
NO_ROUTE: Final = "no_route"
PARTITIONED: Final = "partitioned"
DST_DOWN: Final = "dst_down"
HELD: Final = "held"
LOSS: Final = "loss"
QUEUE_FULL: Final = "queue_full"
PORT_UNREACHABLE: Final = "port_unreachable"


#: Distinct (host, port) addresses remembered by :func:`sim_multiaddr` (each connection
#: names both of its ends; parsing the text form of a multiaddr is slow).
_ADDRESS_CACHE_SIZE: Final = 16384


def sim_host_number(value: str | int) -> int | None:
    """The number of the simulated host a ``/memory/<value>`` address belongs to (the
    key per-host limits use for simulated peers), or ``None`` when ``value`` is not one."""
    try:
        number = int(value)
    except ValueError:
        return None
    return number // SIM_PORT_SPAN if number >= 0 else None


@functools.lru_cache(maxsize=_ADDRESS_CACHE_SIZE)
def sim_multiaddr(host_number: int, port: int) -> Multiaddr:
    """The sim multiaddr ``/memory/<host_number * 100000 + port>``."""
    if not 0 <= port <= MAX_PORT:
        raise InvalidConfiguration(f"port must be within [0, {MAX_PORT}], got {port}")
    if host_number < 0:
        raise InvalidConfiguration(f"host number must be >= 0, got {host_number}")
    return Multiaddr(f"/memory/{host_number * SIM_PORT_SPAN + port}")


def _check_probability(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise InvalidConfiguration(f"{name} must be within [0, 1], got {value!r}")
    return float(value)


def _check_duration(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise InvalidConfiguration(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _check_bandwidth(value: float | None) -> float | None:
    if value is None:
        return None
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidConfiguration(f"bandwidth must be > 0 bytes/s or None, got {value!r}")
    return float(value)


class Host:
    """A machine of the simulated network.  Create with :meth:`Network.add_host`."""

    def __init__(self, network: Network, name: str, number: int) -> None:
        self.network = network
        #: The host's unique name (used in traces and the datagram API).
        self.name = name
        #: The host's number (from 1), part of its sim multiaddrs.
        self.number = number
        #: False while crashed.
        self.up = True
        #: Incremented by every crash; connections from older incarnations are dead.
        self.incarnation = 0
        #: Traffic counters of this host.
        self.counters = HostCounters()
        self._listeners: dict[int, SimListener] = {}
        self._datagrams: dict[int, SimDatagramTransport] = {}
        self._conns: dict[int, SimConnection] = {}
        self._dials: dict[tuple[int, str, int], _Dial] = {}
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._next_port = FIRST_EPHEMERAL_PORT
        self._on_crash: list[Callable[[Host], object]] = []
        self._on_restart: list[Callable[[Host], object]] = []

    def address(self, port: int) -> Multiaddr:
        """The sim multiaddr of ``port`` on this host."""
        return sim_multiaddr(self.number, port)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this host: a crash of the host cancels it."""
        task = self.network.loop.create_task(coro, name=name or f"{self.name}-task")
        self._tasks[task] = None
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "task %s of host %s failed: %r", task.get_name(), self.name, task.exception()
            )

    def on_crash(self, callback: Callable[[Host], object]) -> None:
        """Call ``callback(host)`` whenever this host crashes."""
        self._on_crash.append(callback)

    def on_restart(self, callback: Callable[[Host], object]) -> None:
        """Call ``callback(host)`` whenever this host restarts (re-create its services there)."""
        self._on_restart.append(callback)

    def allocate_port(self) -> int:
        """A free port number for an outgoing connection or a port-0 listener."""
        for _ in range(MAX_PORT):
            port = self._next_port
            self._next_port = port + 1 if port < MAX_PORT else FIRST_EPHEMERAL_PORT
            if port not in self._listeners and port not in self._datagrams:
                return port
        raise ConnectionFailed(f"host {self.name} has no free port")  # pragma: no cover

    def _find_conn(self, port: int, remote: tuple[str, int]) -> SimConnection | None:
        """The open connection of ``port`` whose remote is ``remote`` (a 4-tuple lookup)."""
        for conn in self._conns.values():
            if (
                conn.local_port == port
                and conn.remote_port == remote[1]
                and conn.remote_host.name == remote[0]
            ):
                return conn
        return None

    @property
    def connections(self) -> list[SimConnection]:
        """Stream connection endpoints currently open on this host."""
        return list(self._conns.values())

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<Host {self.name} #{self.number} {state}>"


class Link:
    """A directed link between two hosts.  Create with :meth:`Network.add_link`.

    Its parameters are properties: assigning one (``link.loss = 0.2``) checks
    the value and takes effect for the next packet, like
    :meth:`Network.update_link`.
    """

    __slots__ = (
        "_bandwidth",
        "_duplicate",
        "_held",
        "_jitter",
        "_latency",
        "_loss",
        "_net",
        "_parked",
        "_reorder",
        "_up",
        "_waiters",
        "busy_until",
        "counters",
        "dst",
        "src",
    )

    def __init__(
        self,
        network: Network,
        src: Host,
        dst: Host,
        *,
        latency: float,
        jitter: float,
        loss: float,
        duplicate: float,
        reorder: float,
        bandwidth: float | None,
        up: bool,
    ) -> None:
        self._net = network
        #: The host packets enter the link at.
        self.src = src
        #: The host packets leave the link at.
        self.dst = dst
        self._latency = _check_duration("latency", latency)
        self._jitter = _check_duration("jitter", jitter)
        self._loss = _check_probability("loss", loss)
        self._duplicate = _check_probability("duplicate", duplicate)
        self._reorder = _check_probability("reorder", reorder)
        self._bandwidth = _check_bandwidth(bandwidth)
        self._up = bool(up)
        self._held = False
        #: Virtual time until which the link is busy transmitting queued packets.
        self.busy_until = 0.0
        #: Traffic counters of this link.
        self.counters = LinkCounters()
        self._parked: deque[tuple[Host, int, Host, int, bytes]] = deque()
        self._waiters: dict[SimConnection, None] = {}

    @property
    def latency(self) -> float:
        """One-way delay in seconds."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._latency = _check_duration("latency", value)
        self._net._changed()

    @property
    def jitter(self) -> float:
        """Each packet's delay varies uniformly within ±jitter seconds (never below zero)."""
        return self._jitter

    @jitter.setter
    def jitter(self, value: float) -> None:
        self._jitter = _check_duration("jitter", value)
        self._net._changed()

    @property
    def loss(self) -> float:
        """Probability that a packet is lost on this link."""
        return self._loss

    @loss.setter
    def loss(self, value: float) -> None:
        self._loss = _check_probability("loss", value)
        self._net._changed()

    @property
    def duplicate(self) -> float:
        """Probability that a datagram is delivered twice."""
        return self._duplicate

    @duplicate.setter
    def duplicate(self, value: float) -> None:
        self._duplicate = _check_probability("duplicate", value)
        self._net._changed()

    @property
    def reorder(self) -> float:
        """Probability that a datagram is delayed enough to arrive after later ones."""
        return self._reorder

    @reorder.setter
    def reorder(self, value: float) -> None:
        self._reorder = _check_probability("reorder", value)
        self._net._changed()

    @property
    def bandwidth(self) -> float | None:
        """Bytes per second, or None for unlimited."""
        return self._bandwidth

    @bandwidth.setter
    def bandwidth(self, value: float | None) -> None:
        self._bandwidth = _check_bandwidth(value)
        self._net._changed()

    @property
    def up(self) -> bool:
        """Whether the link carries traffic."""
        return self._up

    @up.setter
    def up(self, value: bool) -> None:
        self._up = bool(value)
        self._net._changed()

    @property
    def held(self) -> bool:
        """Whether traffic entering the link is parked (see :meth:`Network.hold`)."""
        return self._held

    @property
    def simple(self) -> bool:
        """True when the link neither varies, loses nor limits (the fast path)."""
        return not (
            self._jitter or self._loss or self._bandwidth or self._duplicate or self._reorder
        )

    def __repr__(self) -> str:
        return (
            f"<Link {self.src.name}->{self.dst.name} latency={self._latency}s loss={self._loss} "
            f"{'up' if self._up else 'down'}{' held' if self._held else ''}>"
        )


@attrs.frozen(eq=False)
class Partition:
    """Two groups of hosts that cannot reach each other (``one_way``: only ``a`` → ``b``)."""

    a: frozenset[str]
    b: frozenset[str]
    one_way: bool = False

    def blocks(self, src: str, dst: str) -> bool:
        """Whether a packet from ``src`` to ``dst`` is dropped by this partition."""
        if src in self.a and dst in self.b:
            return True
        return not self.one_way and src in self.b and dst in self.a


class _Route:
    """A cached route: the links from one host to another and their total latency."""

    __slots__ = ("hosts", "latency", "links", "simple")

    def __init__(self, links: tuple[Link, ...], hosts: tuple[str, ...]) -> None:
        self.links = links
        self.hosts = hosts
        self.latency = sum(link._latency for link in links)
        self.simple = all(link.simple for link in links)


class Network:
    """The graph of hosts and links and the services on it (see the module docstring).

    Usually created by :class:`~switchy.transports.sim.Simulation`; needs the
    simulation's loop, PRNG and trace recorder.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        *,
        config: SimConfig | None = None,
        trace: TraceRecorder | None = None,
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.config = config if config is not None else SimConfig()
        self.trace = trace if trace is not None else TraceRecorder()
        self._hosts: dict[str, Host] = {}
        self._by_number: list[Host | None] = [None]
        self._links: dict[tuple[int, int], Link] = {}
        self._out: list[list[Link]] = [[]]
        self._partitions: list[Partition] = []
        self._held = 0
        #: Bumped by every change that can change a route.
        self.version = 0
        self._routes: dict[tuple[int, int], _Route | None] = {}
        self._trees: dict[int, list[Link | None]] = {}
        self._conn_ids = itertools.count(1)
        self._nat: NatLayer | None = None

    # --- time -----------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The current virtual time."""
        return self.loop.time()

    def _record(
        self, kind: str, src: str, dst: str = "", size: int = 0, extra: dict[str, Any] | None = None
    ) -> None:
        self.trace.record(self.loop.time(), kind, src, dst, size, extra)

    # --- hosts ----------------------------------------------------------------------------

    def add_host(self, name: str) -> Host:
        """Add a host called ``name`` (unique, non-empty)."""
        if not isinstance(name, str) or not name:
            raise InvalidConfiguration(f"a host name must be a non-empty string, got {name!r}")
        if name in self._hosts:
            raise InvalidConfiguration(f"host {name!r} already exists")
        host = Host(self, name, len(self._by_number))
        self._hosts[name] = host
        self._by_number.append(host)
        self._out.append([])
        return host

    def add_hosts(self, names: Iterable[str]) -> list[Host]:
        """Add several hosts; return them in order."""
        return [self.add_host(n) for n in names]

    def host(self, host: str | Host) -> Host:
        """The host called ``host``; :class:`InvalidConfiguration` if there is none."""
        if isinstance(host, Host):
            if host.network is not self:
                raise InvalidConfiguration(f"host {host.name!r} belongs to another network")
            return host
        found = self._hosts.get(host)
        if found is None:
            raise InvalidConfiguration(f"unknown host {host!r} ({len(self._hosts)} hosts exist)")
        return found

    def host_by_number(self, number: int) -> Host | None:
        """The host with this number, or None."""
        if 0 < number < len(self._by_number):
            return self._by_number[number]
        return None

    @property
    def hosts(self) -> list[Host]:
        """All hosts, in creation order."""
        return list(self._hosts.values())

    # --- links ----------------------------------------------------------------------------

    def add_link(
        self,
        a: str | Host,
        b: str | Host,
        *,
        latency: float | None = None,
        jitter: float = 0.0,
        loss: float | None = None,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        bandwidth: float | None = None,
        directed: bool = False,
        up: bool = True,
    ) -> Link:
        """Link ``a`` to ``b`` (and ``b`` to ``a`` unless ``directed``); return the a→b link.

        ``latency`` and ``loss`` default to the config's ``default_latency_ms``
        and ``default_packet_loss``.  Adding an existing link replaces its
        parameters.
        """
        src, dst = self.host(a), self.host(b)
        if src is dst:
            raise InvalidConfiguration(f"a link from host {src.name!r} to itself is not allowed")
        params: dict[str, Any] = {
            "latency": _check_duration(
                "latency", self.config.default_latency if latency is None else latency
            ),
            "jitter": _check_duration("jitter", jitter),
            "loss": _check_probability(
                "loss", self.config.default_packet_loss if loss is None else loss
            ),
            "duplicate": _check_probability("duplicate", duplicate),
            "reorder": _check_probability("reorder", reorder),
            "bandwidth": _check_bandwidth(bandwidth),
            "up": bool(up),
        }
        pairs = [(src, dst)] if directed else [(src, dst), (dst, src)]
        first: Link | None = None
        for s, d in pairs:
            existing = self._links.get((s.number, d.number))
            if existing is not None:
                for k, v in params.items():
                    setattr(existing, k, v)
                link = existing
            else:
                link = Link(self, s, d, **params)
                self._links[(s.number, d.number)] = link
                self._out[s.number].append(link)
            first = first or link
        self._changed()
        self._record(
            "link",
            src.name,
            dst.name,
            0,
            {k: v for k, v in params.items() if v is not None} | {"directed": directed},
        )
        assert first is not None
        return first

    def link(self, a: str | Host, b: str | Host) -> Link:
        """The link from ``a`` to ``b``; :class:`InvalidConfiguration` if there is none."""
        src, dst = self.host(a), self.host(b)
        link = self._links.get((src.number, dst.number))
        if link is None:
            raise InvalidConfiguration(f"there is no link from {src.name!r} to {dst.name!r}")
        return link

    def has_link(self, a: str | Host, b: str | Host) -> bool:
        """Whether a link from ``a`` to ``b`` exists."""
        return (self.host(a).number, self.host(b).number) in self._links

    @property
    def links(self) -> list[Link]:
        """All directed links, in creation order."""
        return list(self._links.values())

    def _pair_links(self, a: str | Host, b: str | Host, both: bool) -> list[Link]:
        links = [self.link(a, b)]
        if both:
            links.append(self.link(b, a))
        return links

    def update_link(
        self,
        a: str | Host,
        b: str | Host,
        *,
        both: bool = True,
        latency: float | None = None,
        jitter: float | None = None,
        loss: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
        bandwidth: float | None = None,
        unlimited_bandwidth: bool = False,
    ) -> None:
        """Change some parameters of the a→b link (and b→a when ``both``)."""
        changes: dict[str, Any] = {}
        if latency is not None:
            changes["latency"] = _check_duration("latency", latency)
        if jitter is not None:
            changes["jitter"] = _check_duration("jitter", jitter)
        if loss is not None:
            changes["loss"] = _check_probability("loss", loss)
        if duplicate is not None:
            changes["duplicate"] = _check_probability("duplicate", duplicate)
        if reorder is not None:
            changes["reorder"] = _check_probability("reorder", reorder)
        if bandwidth is not None:
            changes["bandwidth"] = _check_bandwidth(bandwidth)
        if unlimited_bandwidth:
            changes["bandwidth"] = None
        for link in self._pair_links(a, b, both):
            for k, v in changes.items():
                setattr(link, k, v)
        self._changed()
        self._record("link", self.host(a).name, self.host(b).name, 0, changes | {"both": both})

    def set_link_up(self, a: str | Host, b: str | Host, up: bool, *, both: bool = True) -> None:
        """Bring the a→b link (and b→a when ``both``) up or down."""
        for link in self._pair_links(a, b, both):
            link.up = up
        self._changed()
        self._record("link", self.host(a).name, self.host(b).name, 0, {"up": up, "both": both})

    def link_down(self, a: str | Host, b: str | Host, *, both: bool = True) -> None:
        """Take the link between ``a`` and ``b`` down (both ways unless ``both=False``)."""
        self.set_link_up(a, b, False, both=both)

    def link_up(self, a: str | Host, b: str | Host, *, both: bool = True) -> None:
        """Bring the link between ``a`` and ``b`` back up."""
        self.set_link_up(a, b, True, both=both)

    def remove_link(self, a: str | Host, b: str | Host, *, both: bool = True) -> None:
        """Delete the a→b link (and b→a when ``both``)."""
        for link in self._pair_links(a, b, both):
            del self._links[(link.src.number, link.dst.number)]
            self._out[link.src.number].remove(link)
        self._changed()

    # --- routing --------------------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1
        self._routes.clear()
        self._trees.clear()

    def _tree(self, src: Host) -> list[Link | None]:
        """Dijkstra from ``src``: for each host number, the link its shortest route arrives by."""
        tree = self._trees.get(src.number)
        if tree is not None:
            return tree
        n = len(self._by_number)
        inf = math.inf
        dist = [inf] * n
        hops = [0] * n
        prev: list[Link | None] = [None] * n
        done = [False] * n
        dist[src.number] = 0.0
        heap: list[tuple[float, int, int]] = [(0.0, 0, src.number)]
        by_number = self._by_number
        out = self._out
        while heap:
            d, h, u = heapq.heappop(heap)
            if done[u]:
                continue
            done[u] = True
            host = by_number[u]
            if u != src.number and host is not None and not host.up:
                continue  # a crashed host does not forward
            for link in out[u]:
                if not link._up:
                    continue
                v = link.dst.number
                if done[v]:
                    continue
                nd = d + link._latency
                nh = h + 1
                if nd < dist[v] or (nd == dist[v] and nh < hops[v]):
                    dist[v] = nd
                    hops[v] = nh
                    prev[v] = link
                    heapq.heappush(heap, (nd, nh, v))
        self._trees[src.number] = prev
        return prev

    def _only_link(self, host: Host) -> Link | None:
        """The one link out of ``host`` that is up, or None when it has none or several."""
        found: Link | None = None
        for link in self._out[host.number]:
            if link._up:
                if found is not None:
                    return None
                found = link
        return found

    def _route(self, src: Host, dst: Host) -> _Route | None:
        key = (src.number, dst.number)
        try:
            return self._routes[key]
        except KeyError:
            pass
        route: _Route | None
        only = self._only_link(src) if src is not dst else None
        if src is dst:
            route = _Route((), (src.name,))
        elif only is not None and (only.dst is dst or self._only_link(only.dst) is None):
            # A host with one way out (a leaf: every host of a star) reaches everything
            # through that link, and its neighbour's shortest routes never come back
            # through it: the route is the link and the neighbour's route, the one a
            # search from ``src`` would find.  No search (and no tree) per leaf: a search
            # walks the whole network, so one per host made a large mesh quadratic.
            nb = only.dst
            if nb is dst:
                route = _Route((only,), (src.name, dst.name))
            elif not nb.up:
                route = None  # a crashed host does not forward
            else:
                rest = self._route(nb, dst)
                route = (
                    None if rest is None else _Route((only, *rest.links), (src.name, *rest.hosts))
                )
        else:
            prev = self._tree(src)
            if prev[dst.number] is None:
                route = None
            else:
                links: list[Link] = []
                v = dst.number
                while v != src.number:
                    link = prev[v]
                    assert link is not None
                    links.append(link)
                    v = link.src.number
                links.reverse()
                route = _Route(tuple(links), (src.name, *(lk.dst.name for lk in links)))
        self._routes[key] = route
        return route

    def find_path(self, a: str | Host, b: str | Host) -> list[str] | None:
        """Host names along the shortest route from ``a`` to ``b`` (both included), or None."""
        route = self._route(self.host(a), self.host(b))
        return None if route is None else list(route.hosts)

    def path_latency(self, a: str | Host, b: str | Host) -> float:
        """Sum of the link latencies along the route from ``a`` to ``b``; NoRoute if none."""
        src, dst = self.host(a), self.host(b)
        route = self._route(src, dst)
        if route is None:
            raise NoRoute(f"no route from {src.name} to {dst.name}")
        return route.latency

    # --- partitions -----------------------------------------------------------------------

    def partition(
        self,
        group_a: Iterable[str | Host],
        group_b: Iterable[str | Host] | None = None,
        *,
        one_way: bool = False,
    ) -> Partition:
        """Cut ``group_a`` from ``group_b`` (default: every other host).

        With ``one_way=True`` only packets from ``group_a`` to ``group_b`` are
        dropped.  Returns the partition, for :meth:`heal`.
        """
        a = frozenset(self.host(h).name for h in group_a)
        if group_b is None:
            b = frozenset(name for name in self._hosts if name not in a)
        else:
            b = frozenset(self.host(h).name for h in group_b)
        if not a or not b:
            raise InvalidConfiguration("a partition needs two non-empty groups of hosts")
        if a & b:
            overlap = ", ".join(sorted(a & b))
            raise InvalidConfiguration(f"hosts {overlap} are on both sides of the partition")
        part = Partition(a, b, one_way)
        self._partitions.append(part)
        self._record("partition", "", "", 0, {"a": sorted(a), "b": sorted(b), "one_way": one_way})
        return part

    def heal(self, partition: Partition | None = None) -> None:
        """Remove ``partition``, or every partition when None."""
        if partition is None:
            self._partitions.clear()
        else:
            try:
                self._partitions.remove(partition)
            except ValueError:
                raise InvalidConfiguration("this partition is not active") from None
        self._record("heal", "", "", 0, None)

    @property
    def partitions(self) -> list[Partition]:
        """Active partitions."""
        return list(self._partitions)

    def _partitioned(self, src: str, dst: str) -> bool:
        return any(p.blocks(src, dst) for p in self._partitions)

    # --- hold / release -------------------------------------------------------------------

    def hold(self, a: str | Host, b: str | Host, *, both: bool = False) -> None:
        """Park traffic entering the a→b link (and b→a when ``both``) until :meth:`release`."""
        for link in self._pair_links(a, b, both):
            if not link._held:
                link._held = True
                self._held += 1
        self._record("hold", self.host(a).name, self.host(b).name, 0, {"both": both})

    def release(self, a: str | Host, b: str | Host, *, both: bool = False) -> None:
        """Let the traffic parked on the a→b link (and b→a when ``both``) go on."""
        for link in self._pair_links(a, b, both):
            if not link._held:
                continue
            link._held = False
            self._held -= 1
            self._record("release", link.src.name, link.dst.name, len(link._parked))
            parked = list(link._parked)
            link._parked.clear()
            for src, sport, dst, dport, data in parked:
                self._send_datagram(src, sport, dst, dport, data)
            waiters = list(link._waiters)
            link._waiters.clear()
            for conn in waiters:
                conn._retry()

    def _held_link(self, route: _Route) -> Link | None:
        for link in route.links:
            if link._held:
                return link
        return None

    # --- crash / restart ------------------------------------------------------------------

    def crash(self, host: str | Host) -> None:
        """Crash ``host``: reset its connections, close its sockets, cancel its tasks."""
        h = self.host(host)
        if not h.up:
            return
        h.up = False
        h.incarnation += 1
        self._changed()
        self._record("crash", h.name)
        for conn in list(h._conns.values()):
            conn._host_crashed()
        h._conns.clear()
        for listener in list(h._listeners.values()):
            listener._closed = True
        h._listeners.clear()
        for sock in list(h._datagrams.values()):
            sock._host_crashed()
        h._datagrams.clear()
        for task in list(h._tasks):
            task.cancel()
        for cb in list(h._on_crash):
            self._call_back(cb, h, "crash")

    def restart(self, host: str | Host) -> Host:
        """Bring a crashed ``host`` back (a new incarnation, no listeners, no connections)."""
        h = self.host(host)
        if h.up:
            raise InvalidConfiguration(f"host {h.name!r} is not crashed")
        h.up = True
        self._changed()
        self._record("restart", h.name, "", 0, {"incarnation": h.incarnation})
        for cb in list(h._on_restart):
            self._call_back(cb, h, "restart")
        return h

    def _call_back(self, cb: Callable[[Host], object], host: Host, what: str) -> None:
        try:
            result = cb(host)
        except Exception:
            log.exception("%s callback of host %s failed", what, host.name)
            return
        if isinstance(result, Awaitable):
            host.spawn(_awaitable_to_coro(result), name=f"{host.name}-{what}")

    # --- packet transit -------------------------------------------------------------------

    def _blocked(self, src: Host, dst: Host, route: _Route | None) -> str | None:
        """Why a packet from ``src`` to ``dst`` cannot be sent now, or None."""
        if not src.up:
            return SRC_DOWN
        if route is None:
            return NO_ROUTE
        if self._partitions and self._partitioned(src.name, dst.name):
            return PARTITIONED
        if not dst.up:
            return DST_DOWN
        if self._held and self._held_link(route) is not None:
            return HELD
        return None

    def _transit_reliable(self, route: _Route, size: int, rto: float) -> float | None:
        """Arrival time of a reliably sent packet (losses become retransmission delays).

        None when it was lost more than :data:`MAX_RETRANSMITS` times.
        """
        t = self.loop.time()
        if route.simple:
            for link in route.links:
                c = link.counters
                c.packets += 1
                c.bytes += size
            return t + route.latency
        rng = self.rng
        for link in route.links:
            c = link.counters
            c.packets += 1
            c.bytes += size
            bw = link._bandwidth
            if bw:
                start = link.busy_until if link.busy_until > t else t
                t = start + size / bw
                link.busy_until = t
            lat = link._latency
            if link._jitter:
                lat += rng.uniform(-link._jitter, link._jitter)
                if lat < 0.0:
                    lat = 0.0
            t += lat
            loss = link._loss
            if loss:
                tries = 0
                while rng.random() < loss:
                    c.drops += 1
                    tries += 1
                    if tries > MAX_RETRANSMITS:
                        return None
                    self.trace.record(
                        self.loop.time(),
                        "retransmit",
                        link.src.name,
                        link.dst.name,
                        size,
                        {"delay": rto},
                    )
                    t += rto
                    rto = min(rto * 2.0, MAX_RTO)
        return t

    def _transit_datagram(self, route: _Route, size: int) -> tuple[float, ...] | str:
        """Arrival times of a datagram's copies (none, one, or two when duplicated) or why not."""
        t = self.loop.time()
        if route.simple:
            for link in route.links:
                c = link.counters
                c.packets += 1
                c.bytes += size
            return (t + route.latency,)
        rng = self.rng
        copies = 1
        extra = 0.0
        for link in route.links:
            c = link.counters
            c.packets += copies
            c.bytes += size * copies
            if link._loss and rng.random() < link._loss:
                c.drops += 1
                return LOSS
            bw = link._bandwidth
            if bw:
                start = link.busy_until if link.busy_until > t else t
                if start - t > MAX_QUEUE_DELAY:
                    c.drops += 1
                    return QUEUE_FULL
                t = start + size * copies / bw
                link.busy_until = t
            lat = link._latency
            if link._jitter:
                lat += rng.uniform(-link._jitter, link._jitter)
                if lat < 0.0:
                    lat = 0.0
            t += lat
            if link._reorder and rng.random() < link._reorder:
                extra += rng.uniform(0.0, link._latency + link._jitter) + 0.001
            if link._duplicate and copies == 1 and rng.random() < link._duplicate:
                copies = 2
        if copies == 1:
            return (t + extra,)
        second = t + (rng.uniform(0.0, route.latency) if route.latency else 0.0)
        return (t + extra, second)

    # --- NAT and firewall boxes ---------------------------------------------------------

    def add_nat(
        self,
        name: str,
        *,
        lan: Iterable[str | Host],
        wan: str | Host,
        preset: str | None = None,
        config: NatConfig | None = None,
        lan_latency: float = 0.001,
        wan_latency: float = 0.005,
        loss: float = 0.0,
        carrier: str | None = None,
    ) -> NatBox:
        """Put the hosts ``lan`` behind a NAT or firewall box ``name`` whose WAN side is ``wan``.

        One call builds it all: hosts that do not exist yet are added, and
        missing links are made (LAN hosts to the box with ``lan_latency``, the
        box to ``wan`` with ``wan_latency``, both with ``loss``).  The box's
        behaviour is ``preset`` (a name of
        :data:`~switchy.transports.sim.nat.NAT_PRESETS`; default
        ``port_restricted``) or an explicit ``config``, not both.  Preset
        ``cgnat`` makes two layers: ``name`` is a ``port_restricted`` home
        NAT on the LAN of a carrier NAT ``carrier`` (default
        ``<name>-cgn``; give several homes the same carrier to share one),
        which sits on ``wan``.  Returns the (home) box.
        """
        from switchy.transports.sim.nat import NAT_PRESETS, NatConfig, nat_preset
        from switchy.transports.sim.natbox import NatBox, NatLayer

        if preset is not None and config is not None:
            raise InvalidConfiguration("add_nat takes a preset or a config, not both")
        if config is not None and not isinstance(config, NatConfig):
            raise InvalidConfiguration(f"config must be a NatConfig, got {type(config).__name__}")
        if config is None:
            cfg = nat_preset("port_restricted" if preset is None else preset)
        else:
            cfg = config
        if not isinstance(name, str) or not name:
            raise InvalidConfiguration(f"a NAT name must be a non-empty string, got {name!r}")
        members = [m if isinstance(m, Host) else self._ensure_host(m) for m in lan]
        if not members:
            raise InvalidConfiguration(f"NAT {name!r} needs at least one host on its LAN")
        layer = self._nat
        if layer is None:
            layer = self._nat = NatLayer(self)
        if name in layer.boxes:
            raise InvalidConfiguration(f"host {name!r} is already a NAT box")
        wan_host = wan if isinstance(wan, Host) else self._ensure_host(wan)
        if wan_host.name == name or any(m.name in (name, wan_host.name) for m in members):
            raise InvalidConfiguration(
                f"NAT {name!r}: the box, its WAN host and its LAN hosts must all differ"
            )
        upstream: NatBox | None = None
        if preset == "cgnat":
            cfg = NAT_PRESETS["port_restricted"]
            carrier_name = carrier if carrier is not None else f"{name}-cgn"
            upstream = layer.boxes.get(carrier_name)
            if upstream is None:
                self._ensure_host(name)
                upstream = self.add_nat(
                    carrier_name,
                    lan=[name],
                    wan=wan_host,
                    config=NAT_PRESETS["cgnat"],
                    lan_latency=wan_latency,
                    wan_latency=wan_latency,
                    loss=loss,
                )
                upstream.preset = "cgnat"
            else:
                if upstream.wan is not wan_host:
                    raise InvalidConfiguration(
                        f"carrier NAT {carrier_name!r} sits on {upstream.wan.name!r}, "
                        f"not on {wan_host.name!r}"
                    )
                box_host = self._ensure_host(name)
                upstream.lan.append(box_host)
                layer.add_member(upstream, box_host)
                self._link_if_missing(box_host, upstream.host, wan_latency, loss)
            wan_host = upstream.host
        elif carrier is not None:
            raise InvalidConfiguration("carrier is only for preset='cgnat'")
        box_host = self._ensure_host(name)
        if box_host._listeners or box_host._datagrams or box_host._conns:
            raise InvalidConfiguration(f"host {name!r} has sockets; a NAT box cannot run any")
        rng = random.Random(f"switchy-nat/{name}/{self.rng.getrandbits(64)}")
        box = NatBox(self, box_host, cfg, preset, members, wan_host, rng)
        box.upstream = upstream
        layer.add(box)
        for member in members:
            self._link_if_missing(member, box_host, lan_latency, loss)
        self._link_if_missing(box_host, wan_host, wan_latency, loss)
        self._record(
            "nat",
            name,
            wan_host.name,
            0,
            {
                "preset": preset if preset != "cgnat" else "cgnat-home",
                "lan": [m.name for m in members],
                "translate": cfg.translate,
                "mapping": cfg.mapping,
                "filtering": cfg.filtering,
                "ports": cfg.port_assignment,
                "hairpin": cfg.hairpinning,
            },
        )
        return box

    def nat(self, name: str) -> NatBox:
        """The NAT box called ``name``; :class:`InvalidConfiguration` if there is none."""
        box = self._nat.boxes.get(name) if self._nat is not None else None
        if box is None:
            raise InvalidConfiguration(f"there is no NAT box called {name!r}")
        return box

    @property
    def nats(self) -> list[NatBox]:
        """All NAT boxes, in creation order."""
        return list(self._nat.boxes.values()) if self._nat is not None else []

    def public_address(self, host: str | Host, port: int, *, proto: str = "tcp") -> Multiaddr:
        """The address a host outside sees for ``port`` of ``host``: through every box
        above it, the external endpoint of the live mapping (for endpoint-independent
        mappings); :class:`ConnectionFailed` when a box holds no such mapping."""
        h = self.host(host)
        endpoint = (h.name, port)
        if self._nat is not None:
            for box in self._nat.ancestors(h.name):
                if not box.config.translate:
                    continue
                box.expire()
                found = [
                    m
                    for m in box.table.mappings(proto)  # type: ignore[arg-type]
                    if m.internal == endpoint
                ]
                if len(found) != 1:
                    raise ConnectionFailed(
                        f"NAT {box.name} has {len(found)} {proto} mappings for "
                        f"{endpoint[0]}:{endpoint[1]}, not one"
                    )
                endpoint = found[0].external
        return self.host(endpoint[0]).address(endpoint[1])

    def is_public_address(self, addr: Multiaddr) -> bool:
        """Whether the simulated ``addr`` can be reached from outside every NAT: its host
        exists and no translating box is above it (a box's own address is public
        unless the box sits behind another translating box, as a CGNAT home box does).

        What hole punching treats as "public" in the simulator (the host numbers of
        private LAN hosts look like any others).
        """
        try:
            proto, value = next(iter(addr.items()))
        except Exception:  # the multiaddr package raises several types for bad input
            return False
        if proto.name != "memory" or value is None:
            return False
        host = self.host_by_number(int(value) // SIM_PORT_SPAN)
        if host is None:
            return False
        if self._nat is None:
            return True
        return not any(box.config.translate for box in self._nat.ancestors(host.name))

    def _ensure_host(self, name: str | Host) -> Host:
        if isinstance(name, Host):
            return self.host(name)
        found = self._hosts.get(name) if isinstance(name, str) else None
        return found if found is not None else self.add_host(name)

    def _link_if_missing(self, a: Host, b: Host, latency: float, loss: float) -> None:
        if not self.has_link(a, b):
            self.add_link(a, b, latency=latency, loss=loss)

    def _refuse_on_nat(self, host: Host) -> None:
        if self._nat is not None and host.name in self._nat.boxes:
            raise InvalidConfiguration(
                f"host {host.name!r} is a NAT box; it forwards packets and runs no sockets"
            )

    # --- streams --------------------------------------------------------------------------

    def listen(
        self,
        host: str | Host,
        port: int,
        handler: Callable[[SimConnection], Awaitable[None]],
        *,
        window: int = DEFAULT_STREAM_WINDOW,
    ) -> SimListener:
        """Accept stream connections on ``port`` of ``host`` (0: pick a free port).

        Each accepted connection is passed to ``handler`` in its own task of the host.
        """
        from switchy.transports.sim.stream import SimListener

        h = self.host(host)
        if not h.up:
            raise ConnectionFailed(f"cannot listen on host {h.name}: it is down")
        if not 0 <= port <= MAX_PORT:
            raise InvalidConfiguration(f"port must be within [0, {MAX_PORT}], got {port}")
        if port == 0:
            port = h.allocate_port()
        self._refuse_on_nat(h)
        if port in h._listeners:
            raise ConnectionFailed(f"port {port} of host {h.name} is already in use")
        listener = SimListener(self, h, port, handler, window)
        h._listeners[port] = listener
        return listener

    async def connect(
        self,
        src: str | Host,
        dst: str | Host,
        port: int,
        *,
        timeout: float | None = None,
        window: int = DEFAULT_STREAM_WINDOW,
        local_port: int | None = None,
    ) -> SimConnection:
        """Open a stream connection from ``src`` to ``port`` on ``dst``.

        Takes one round trip (more when the request is lost and resent).
        Raises :class:`NoRoute` at once when no route exists,
        :class:`ConnectionFailed` when nothing listens on the port (after a
        round trip) or a NAT box answers with a reset, and :class:`P2PTimeout`
        when the request does not get through (partition, crashed host, held
        link, a NAT filtering it) within ``timeout`` (default and upper bound:
        the config's connection timeout).

        ``local_port`` dials from that port of ``src`` (which may also be a
        listening port, as with ``SO_REUSEPORT``) instead of a fresh one.
        Two such dials that cross, each addressed to the endpoint the other
        dials from (as NATs translate it), make **one** connection: TCP's
        simultaneous open.  Both calls return their end of it.
        """

        s, d = self.host(src), self.host(dst)
        if not s.up:
            raise ConnectionFailed(f"cannot connect from host {s.name}: it is down")
        if not 0 < port <= MAX_PORT:
            raise InvalidConfiguration(f"port must be within [1, {MAX_PORT}], got {port}")
        if local_port is not None:
            if not (isinstance(local_port, int) and 0 < local_port <= MAX_PORT):
                raise InvalidConfiguration(
                    f"local_port must be within [1, {MAX_PORT}], got {local_port!r}"
                )
            self._refuse_on_nat(s)
            key = (local_port, d.name, port)
            if key in s._dials or s._find_conn(local_port, (d.name, port)) is not None:
                raise ConnectionFailed(
                    f"{s.name}:{local_port} -> {d.name}:{port} is already in use"
                )
        if self._route(s, d) is None:
            raise NoRoute(f"no route from {s.name} to {d.name}")
        limit = self.config.connection_timeout
        if timeout is not None:
            limit = min(limit, _check_duration("timeout", timeout))
        nat = self._nat
        if local_port is None and (nat is None or not nat.crosses(s, d)):
            return await self._connect_direct(s, d, port, limit, window)
        dial = _Dial(self, s, local_port, d, port, window, next(self._conn_ids))
        if local_port is not None:
            s._dials[(local_port, d.name, port)] = dial
        try:
            return await self._connect_loop(dial, limit)
        except BaseException:
            if dial.conn is not None:
                await dial.conn.reset()
            raise
        finally:
            if local_port is not None and s._dials.get((local_port, d.name, port)) is dial:
                del s._dials[(local_port, d.name, port)]

    async def _connect_direct(
        self, s: Host, d: Host, port: int, limit: float, window: int
    ) -> SimConnection:
        """A dial meeting no NAT from an ephemeral port (the port is chosen on acceptance)."""
        loop = self.loop
        start = loop.time()
        deadline = start + limit
        cid = next(self._conn_ids)
        tag = {"conn": cid, "port": port}
        self._record("connect", s.name, d.name, CONTROL_PACKET_SIZE, tag)
        rto = SYN_RTO
        last_reason = ""
        while True:
            sent_at = loop.time()
            route = self._route(s, d)
            reason = self._blocked(s, d, route)
            arrival: float | None = None
            if reason is None:
                assert route is not None
                arrival = self._transit_reliable(route, CONTROL_PACKET_SIZE, SYN_RTO)
                if arrival is None or arrival > deadline:
                    reason = LOSS
                    arrival = None
            elif reason == NO_ROUTE and sent_at == start:
                raise NoRoute(f"no route from {s.name} to {d.name}")
            if arrival is not None:
                await _sleep_until(loop, arrival)
                if not s.up:
                    raise ConnectionFailed(f"host {s.name} crashed while connecting")
                if not d.up:
                    reason = DST_DOWN
                else:
                    answer = await self._answer_syn(s, d, port, cid, deadline, window)
                    if isinstance(answer, str):
                        reason = answer
                    else:
                        client, ready_at = answer
                        try:
                            await _sleep_until(loop, ready_at)
                        except BaseException:
                            await client.reset()
                            raise
                        self._record("established", s.name, d.name, 0, tag)
                        return client
            assert reason is not None
            last_reason = reason
            self._record("drop", s.name, d.name, CONTROL_PACKET_SIZE, tag | {"reason": reason})
            s.counters.drops += 1
            retry_at = sent_at + rto
            if retry_at >= deadline:
                await _sleep_until(loop, deadline)
                self._record("timeout", s.name, d.name, 0, tag)
                raise P2PTimeout(
                    f"connecting from {s.name} to {d.name}:{port} timed out after "
                    f"{deadline - start:g}s of virtual time (last attempt: {last_reason})"
                )
            await _sleep_until(loop, retry_at)
            if not s.up:
                raise ConnectionFailed(f"host {s.name} crashed while connecting")
            rto = min(rto * 2.0, MAX_RTO)

    async def _connect_loop(self, dial: _Dial, limit: float) -> SimConnection:
        """Send SYNs hop by hop through NAT boxes until one is answered (or a crossing
        dial completes this one), with backoff, within ``limit``."""
        loop = self.loop
        s, d, port = dial.host, dial.dst, dial.dport
        start = loop.time()
        deadline = start + limit
        tag = {"conn": dial.cid, "port": port, "sport": dial.port}
        self._record("connect", s.name, d.name, CONTROL_PACKET_SIZE, tag)
        rto = SYN_RTO
        last_reason = ""
        while True:
            sent_at = loop.time()
            result = await self._syn_attempt(dial, deadline)
            if not isinstance(result, str):
                self._record("established", s.name, d.name, 0, tag)
                return result
            last_reason = result
            self._record("drop", s.name, d.name, CONTROL_PACKET_SIZE, tag | {"reason": result})
            s.counters.drops += 1
            retry_at = sent_at + rto
            if await dial.wait(min(retry_at, deadline)):
                assert dial.conn is not None
                self._record("established", s.name, d.name, 0, tag)
                return dial.conn
            if retry_at >= deadline:
                self._record("timeout", s.name, d.name, 0, tag)
                raise P2PTimeout(
                    f"connecting from {s.name} to {d.name}:{port} timed out after "
                    f"{deadline - start:g}s of virtual time (last attempt: {last_reason})"
                )
            if not s.up:
                raise ConnectionFailed(f"host {s.name} crashed while connecting")
            rto = min(rto * 2.0, MAX_RTO)

    async def _syn_attempt(self, dial: _Dial, deadline: float) -> SimConnection | str:
        """One SYN, hop by hop: each box handles it when it arrives there."""
        from switchy.transports.sim.nat import NatPacket
        from switchy.transports.sim.natbox import MAX_NAT_HOPS, NAT_LOOP

        s = dial.host
        if dial.done.done():
            assert dial.conn is not None
            return dial.conn
        sport = dial.port if dial.port is not None else dial.ephemeral()
        packet = NatPacket("tcp", (s.name, sport), (dial.dst.name, dial.dport), "syn")
        hop = s
        for _ in range(MAX_NAT_HOPS + 1):
            target, box, outbound = self._next_target(hop, packet.dst[0])
            route = self._route(hop, target)
            reason = self._blocked(hop, target, route)
            if reason is None and box is None and self._partitioned(s.name, target.name):
                reason = PARTITIONED
            if reason is not None:
                return reason
            assert route is not None
            arrival = self._transit_reliable(route, CONTROL_PACKET_SIZE, SYN_RTO)
            if arrival is None or arrival > deadline:
                return LOSS
            if await dial.wait(arrival):
                assert dial.conn is not None
                return dial.conn
            if not s.up:
                raise ConnectionFailed(f"host {s.name} crashed while connecting")
            if not target.up:
                return DST_DOWN
            if box is None:
                return await self._syn_arrived(dial, target, packet, deadline)
            verdict = box.process(packet, outbound=outbound)
            if verdict.action == "reject":
                await self._nat_reset(dial, box, packet, verdict.reason)
                return verdict.reason
            if verdict.action == "drop":
                return verdict.reason
            assert verdict.packet is not None
            packet = verdict.packet
            hop = target
        return NAT_LOOP

    async def _nat_reset(self, dial: _Dial, box: NatBox, packet: NatPacket, reason: str) -> None:
        """``box`` answers ``packet`` (a SYN) with a reset: it goes back; the dial fails."""
        from switchy.transports.sim.nat import NatPacket

        self._record(
            "nat_rst",
            box.name,
            packet.src[0],
            CONTROL_PACKET_SIZE,
            {"conn": dial.cid, "reason": reason},
        )
        back = self._walk(box.host, NatPacket("tcp", packet.dst, packet.src, "rst"))
        if back.final is not dial.host or back.route is None:
            return  # the reset is lost: to the dialer it looks like a drop
        arrival = self._transit_reliable(back.route, CONTROL_PACKET_SIZE, SYN_RTO)
        if arrival is None:
            return
        await _sleep_until(self.loop, arrival)
        raise ConnectionFailed(
            f"connection from {dial.host.name} to {dial.dst.name}:{dial.dport} reset by "
            f"NAT {box.name} ({reason})"
        )

    async def _syn_arrived(
        self, dial: _Dial, host: Host, packet: NatPacket, deadline: float
    ) -> SimConnection | str:
        """The SYN of ``dial`` reached ``host`` as ``packet``: join a crossing dial, an
        existing connection, or a listener; or get refused."""
        from switchy.transports.sim.nat import NatPacket
        from switchy.transports.sim.stream import SimConnection

        port = packet.dst[1]
        seen = packet.src
        existing = host._find_conn(port, seen)
        crossing = host._dials.get((port, seen[0], seen[1]))
        if existing is not None and (dial.conn is None or dial.conn.peer is not existing):
            return "in_use"  # a SYN for a 4-tuple that belongs to another connection
        if existing is None and crossing is not None and crossing is not dial:
            if crossing.conn is None and dial.conn is None:
                assert dial.port is not None
                dialer = SimConnection(
                    self,
                    dial.cid,
                    dial.host,
                    dial.port,
                    dial.dst,
                    dial.dport,
                    dial.window,
                    crossing.window,
                    peer_at=(host, port),
                    seen_by_peer=(self.host(seen[0]), seen[1]),
                )
                dial.conn = dialer
                crossing.conn = dialer.peer
                dialer._via_nat = dialer.peer._via_nat = self._nat is not None
                self._record(
                    "simultaneous_open",
                    dial.host.name,
                    host.name,
                    CONTROL_PACKET_SIZE,
                    {"conn": dial.cid, "other": crossing.cid},
                )
            elif dial.conn is None or crossing.conn is None or dial.conn.peer is not crossing.conn:
                return "in_use"
        listener = host._listeners.get(port)
        joined = dial.conn is not None
        refused = not joined and (listener is None or listener._closed)
        answer_kind: Kind = "rst" if refused else "syn"
        back = self._walk(host, NatPacket("tcp", packet.dst, packet.src, answer_kind))
        if back.reason is not None or back.final is not dial.host or back.route is None:
            return back.reason or "nat_mismatch"
        answer = self._transit_reliable(back.route, CONTROL_PACKET_SIZE, SYN_RTO)
        if answer is None or answer > deadline:
            return LOSS
        if refused:
            self._record(
                "refuse",
                host.name,
                dial.host.name,
                CONTROL_PACKET_SIZE,
                {"conn": dial.cid, "port": port},
            )
            await _sleep_until(self.loop, answer)
            raise ConnectionFailed(f"connection refused: nothing listens on {host.name}:{port}")
        if not joined:
            assert listener is not None
            sport = dial.port if dial.port is not None else dial.ephemeral()
            client = SimConnection(
                self,
                dial.cid,
                dial.host,
                sport,
                dial.dst,
                dial.dport,
                dial.window,
                listener.window,
                peer_at=(host, port),
                seen_by_peer=(self.host(seen[0]), seen[1]),
            )
            client._via_nat = client.peer._via_nat = self._nat is not None
            client.peer._last_arrival = answer
            dial.conn = client
            self._record(
                "accept",
                host.name,
                dial.host.name,
                CONTROL_PACKET_SIZE,
                {"conn": dial.cid, "port": port},
            )
            listener._accept(client.peer)
        conn = dial.conn
        assert conn is not None
        if not await dial.wait(answer):
            dial.complete()
            other = crossing if crossing is not None and crossing.conn is conn.peer else None
            if other is not None:
                # The dialer's ACK completes the crossing dial when it arrives.
                ack = self._walk(
                    dial.host,
                    NatPacket(
                        "tcp",
                        (dial.host.name, conn.local_port),
                        (conn.remote_host.name, conn.remote_port),
                        "data",
                    ),
                )
                if ack.route is not None and ack.final is other.host:
                    when = self._transit_reliable(ack.route, CONTROL_PACKET_SIZE, SYN_RTO)
                    if when is not None:
                        self.loop.call_at(when, other.complete)
        return conn

    def _next_target(self, hop: Host, dst: str) -> tuple[Host, NatBox | None, bool]:
        """Where a packet at ``hop`` for host ``dst`` goes next (see :mod:`.natbox`)."""
        if self._nat is None:
            return self.host(dst), None, False
        name, box, outbound = self._nat.next_target(hop, dst)
        return self.host(name), box, outbound

    def _walk(self, origin: Host, packet: NatPacket) -> Any:
        """``packet`` from ``origin`` through every box at this instant (a :class:`Walk`)."""
        from switchy.transports.sim.natbox import Walk

        if self._nat is not None:
            return self._nat.walk_now(origin, packet)
        dst = self.host(packet.dst[0])
        route = self._route(origin, dst)
        reason = self._blocked(origin, dst, route)
        if reason is not None:
            return Walk(route if reason == HELD else None, None, packet, reason)
        return Walk(route, dst, packet)

    async def _answer_syn(
        self, s: Host, d: Host, port: int, cid: int, deadline: float, window: int
    ) -> tuple[SimConnection, float] | str:
        """The connection request reached ``d``: refuse, or accept and answer.

        Returns the dialer's endpoint and the time the answer reaches it, or why
        the answer cannot get back (the dialer will retry).
        """
        from switchy.transports.sim.stream import SimConnection

        back = self._route(d, s)
        reason = self._blocked(d, s, back)
        if reason is not None:
            return reason
        assert back is not None
        answer = self._transit_reliable(back, CONTROL_PACKET_SIZE, SYN_RTO)
        if answer is None or answer > deadline:
            return LOSS
        listener = d._listeners.get(port)
        if listener is None or listener._closed:
            self._record("refuse", d.name, s.name, CONTROL_PACKET_SIZE, {"conn": cid, "port": port})
            await _sleep_until(self.loop, answer)
            raise ConnectionFailed(f"connection refused: nothing listens on {d.name}:{port}")
        sport = s.allocate_port()
        client = SimConnection(self, cid, s, sport, d, port, window, listener.window)
        server = client.peer
        assert server is not None
        # Data the server sends right away must not overtake its answer.
        server._last_arrival = answer
        self._record("accept", d.name, s.name, CONTROL_PACKET_SIZE, {"conn": cid, "port": port})
        listener._accept(server)
        return client, answer

    # --- datagrams ------------------------------------------------------------------------

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        host: str | Host,
        port: int = 0,
        *,
        remote_addr: tuple[str, int] | None = None,
    ) -> tuple[SimDatagramTransport, asyncio.DatagramProtocol]:
        """Bind a datagram socket on ``host``; the same shape as ``loop.create_datagram_endpoint``.

        Returns ``(transport, protocol)``; ``transport.sendto(data, (host_name,
        port))`` sends, ``protocol.datagram_received(data, (host_name, port))``
        receives.  Port 0 picks a free port.
        """
        return self.open_datagram(protocol_factory(), host, port, remote_addr=remote_addr)

    def open_datagram(
        self,
        protocol: asyncio.DatagramProtocol,
        host: str | Host,
        port: int = 0,
        *,
        remote_addr: tuple[str, int] | None = None,
    ) -> tuple[SimDatagramTransport, asyncio.DatagramProtocol]:
        """Synchronous form of :meth:`create_datagram_endpoint` taking a protocol instance."""
        from switchy.transports.sim.datagram import SimDatagramTransport

        h = self.host(host)
        if not h.up:
            raise ConnectionFailed(f"cannot bind on host {h.name}: it is down")
        if not 0 <= port <= MAX_PORT:
            raise InvalidConfiguration(f"port must be within [0, {MAX_PORT}], got {port}")
        if port == 0:
            port = h.allocate_port()
        self._refuse_on_nat(h)
        if port in h._datagrams:
            raise ConnectionFailed(f"datagram port {port} of host {h.name} is already in use")
        if remote_addr is not None:
            self._check_addr(remote_addr)
        transport = SimDatagramTransport(self, h, port, protocol, remote_addr)
        h._datagrams[port] = transport
        protocol.connection_made(transport)
        return transport, protocol

    def _check_addr(self, addr: object) -> tuple[Host, int]:
        if not (isinstance(addr, tuple) and len(addr) == 2):
            raise InvalidConfiguration(f"a sim datagram address is (host_name, port), got {addr!r}")
        name, port = addr
        host = self._hosts.get(name) if isinstance(name, str) else None
        if host is None:
            raise NoRoute(f"unknown host {name!r} in datagram address {addr!r}")
        if not (isinstance(port, int) and 0 < port <= MAX_PORT):
            raise InvalidConfiguration(f"bad port in datagram address {addr!r}")
        return host, port

    def _send_datagram(self, src: Host, sport: int, dst: Host, dport: int, data: bytes) -> None:
        size = len(data)
        if size > self.config.max_message_size:
            raise MessageTooLarge(
                f"datagram of {size} bytes exceeds the simulator's max_message_size "
                f"of {self.config.max_message_size}"
            )
        if self._nat is not None:
            target, box, outbound = self._next_target(src, dst.name)
            if box is not None:
                from switchy.transports.sim.nat import NatPacket

                self._record("send", src.name, dst.name, size, {"sport": sport, "dport": dport})
                src.counters.packets_sent += 1
                src.counters.bytes_sent += size
                packet = NatPacket("udp", (src.name, sport), (dst.name, dport))
                self._datagram_leg(src, src, target, box, outbound, packet, data, 0)
                return
        route = self._route(src, dst)
        reason = self._blocked(src, dst, route)
        tag = {"sport": sport, "dport": dport}
        if reason is None:
            assert route is not None
            self._record("send", src.name, dst.name, size, tag)
            src.counters.packets_sent += 1
            src.counters.bytes_sent += size
            result = self._transit_datagram(route, size)
            if isinstance(result, str):
                reason = result
            else:
                incarnation = dst.incarnation
                for i, when in enumerate(result):
                    if i:
                        self._record("duplicate", src.name, dst.name, size, tag)
                    self.loop.call_at(
                        when, self._deliver_datagram, src, sport, dst, dport, data, incarnation
                    )
                return
        elif reason == HELD:
            assert route is not None
            link = self._held_link(route)
            assert link is not None
            link._parked.append((src, sport, dst, dport, data))
            return
        src.counters.drops += 1
        self._record("drop", src.name, dst.name, size, tag | {"reason": reason})

    def _datagram_leg(
        self,
        origin: Host,
        hop: Host,
        target: Host,
        box: NatBox | None,
        outbound: bool,
        packet: NatPacket,
        data: bytes,
        crossed: int,
    ) -> None:
        """Carry a datagram from ``hop`` to ``target`` (a box handles it there, or it is
        delivered).  A leg after a box that meets a held link is dropped, not parked."""
        size = len(data)
        route = self._route(hop, target)
        reason = self._blocked(hop, target, route)
        if reason is None and box is None and self._partitioned(origin.name, target.name):
            reason = PARTITIONED
        if reason is None:
            assert route is not None
            result = self._transit_datagram(route, size)
            if not isinstance(result, str):
                incarnation = target.incarnation
                for i, when in enumerate(result):
                    if i:
                        self._record(
                            "duplicate",
                            hop.name,
                            target.name,
                            size,
                            {"sport": packet.src[1], "dport": packet.dst[1]},
                        )
                    self.loop.call_at(
                        when,
                        self._datagram_arrived,
                        origin,
                        target,
                        box,
                        outbound,
                        packet,
                        data,
                        crossed,
                        incarnation,
                    )
                return
            reason = result
        elif reason == HELD and hop is origin:
            assert route is not None
            link = self._held_link(route)
            assert link is not None
            link._parked.append(
                (origin, packet.src[1], self.host(packet.dst[0]), packet.dst[1], data)
            )
            return
        self._datagram_dropped(origin, packet, size, reason, None)

    def _datagram_dropped(
        self, origin: Host, packet: NatPacket, size: int, reason: str, box: NatBox | None
    ) -> None:
        origin.counters.drops += 1
        extra: dict[str, Any] = {"sport": packet.src[1], "dport": packet.dst[1], "reason": reason}
        if box is not None:
            extra["nat"] = box.name
        self._record("drop", origin.name, packet.dst[0], size, extra)

    def _datagram_arrived(
        self,
        origin: Host,
        target: Host,
        box: NatBox | None,
        outbound: bool,
        packet: NatPacket,
        data: bytes,
        crossed: int,
        incarnation: int,
    ) -> None:
        from switchy.transports.sim.natbox import MAX_NAT_HOPS, NAT_LOOP

        if box is None:
            self._deliver_datagram(
                origin, packet.src[1], target, packet.dst[1], data, incarnation, seen=packet.src
            )
            return
        if not target.up or target.incarnation != incarnation:
            self._datagram_dropped(origin, packet, len(data), DST_DOWN, box)
            return
        verdict = box.process(packet, outbound=outbound)
        if verdict.action != "forward":
            self._datagram_dropped(origin, packet, len(data), verdict.reason, box)
            return
        assert verdict.packet is not None
        if crossed + 1 > MAX_NAT_HOPS:
            self._datagram_dropped(origin, packet, len(data), NAT_LOOP, box)
            return
        nxt, nbox, nout = self._next_target(target, verdict.packet.dst[0])
        self._datagram_leg(origin, target, nxt, nbox, nout, verdict.packet, data, crossed + 1)

    def _deliver_datagram(
        self,
        src: Host,
        sport: int,
        dst: Host,
        dport: int,
        data: bytes,
        incarnation: int,
        seen: tuple[str, int] | None = None,
    ) -> None:
        sock = dst._datagrams.get(dport) if dst.up and dst.incarnation == incarnation else None
        if sock is None or sock._closed:
            src.counters.drops += 1
            reason = PORT_UNREACHABLE if dst.up else DST_DOWN
            self._record(
                "drop",
                src.name,
                dst.name,
                len(data),
                {"sport": sport, "dport": dport, "reason": reason},
            )
            return
        tag: dict[str, Any] = {"sport": sport, "dport": dport}
        if seen is not None and seen != (src.name, sport):
            tag["seen"] = f"{seen[0]}:{seen[1]}"
        self._record("deliver", src.name, dst.name, len(data), tag)
        dst.counters.packets_received += 1
        dst.counters.bytes_received += len(data)
        sock._received(data, seen if seen is not None else (src.name, sport))

    def __repr__(self) -> str:
        return f"<Network {len(self._hosts)} hosts, {len(self._links)} links>"


class _Dial:
    """A stream connection attempt in progress: its ports, and its connection once made."""

    __slots__ = ("cid", "conn", "done", "dport", "dst", "host", "loop", "port", "window")

    def __init__(
        self,
        network: Network,
        host: Host,
        port: int | None,
        dst: Host,
        dport: int,
        window: int,
        cid: int,
    ) -> None:
        self.loop = network.loop
        self.host = host
        self.port = port
        self.dst = dst
        self.dport = dport
        self.window = window
        self.cid = cid
        self.conn: SimConnection | None = None
        #: Set once this end of the connection is established.
        self.done: asyncio.Future[None] = network.loop.create_future()

    def ephemeral(self) -> int:
        """The local port, picking a fresh one the first time it is needed."""
        if self.port is None:
            self.port = self.host.allocate_port()
        return self.port

    def complete(self) -> None:
        """Mark this end established (a no-op when it already is)."""
        if not self.done.done():
            self.done.set_result(None)

    async def wait(self, when: float) -> bool:
        """Sleep until virtual time ``when``; True at once when the dial completes meanwhile."""
        done = self.done
        if not done.done():
            delay = when - self.loop.time()
            if delay > 0:
                await asyncio.wait([done], timeout=delay)
            else:
                await asyncio.sleep(0)
        return done.done()


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    await asyncio.sleep(delay if delay > 0 else 0)


async def _awaitable_to_coro(aw: Awaitable[Any]) -> Any:
    return await aw
