"""Ready-made simulation scenarios: the whole stack (Node, Noise, yamux, ping, echo) on a
virtual network, run by ``switchy sim`` and by the tests.

Each scenario is a function of a :class:`~switchy.transports.sim.Simulation` and a node
count; it builds its network from the simulation's seeded randomness, runs, and
returns figures (all in virtual time, so they are the same for the same seed on
every machine).  :func:`run_scenario` wraps one in a simulation and returns a
:class:`ScenarioResult` with the trace digest, which is the determinism check:
same scenario, seed and node count → the same digest, in any process.

Scenarios:

``mesh``
    N nodes, each attached to one of N/20 routers that form a random tree (link
    latencies 1 to 10 ms to a router, 5 to 50 ms between routers, the configured
    default loss on every link); each node dials up to 3 random peers and pings
    each 3 times.
``partition``
    N nodes split into two groups; every node pings a peer in the other group
    (works), the groups are partitioned (cross-group pings fail with a timeout
    while pings inside a group still work), the partition heals (cross-group
    pings work again, over new connections where the old ones broke).
``lossy``
    N nodes in pairs across a lossy (5 %), jittery, bandwidth-limited link;
    each pair echoes 256 KiB, and every byte must come back intact: loss shows
    up as retransmission delay and bandwidth as queueing, never as lost data.
``nat``
    One client behind each NAT preset (``open``, ``firewall``, ``full_cone``,
    ``address_restricted``, ``port_restricted``, ``symmetric``, ``cgnat``;
    the node count is not used).  Each client sends a UDP packet from port
    5000 to a STUN-like echo on server ``s1`` (which answers with the address
    it observed), then to one on ``s2``: the two observed addresses are the
    same exactly when the mapping is endpoint-independent.  Then three
    inbound probes go to the observed address: from ``s1:3478`` (the endpoint
    contacted), ``s1:3479`` (same host, other port) and ``s3`` (never
    contacted), and an unsolicited TCP SYN from ``s3``; the figures say which
    got through, with each box's mapping count and drops.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any, Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidConfiguration, P2PError
from switchy.transports.sim.config import SimConfig
from switchy.transports.sim.simulation import Seed, Simulation
from switchy.transports.sim.transport import SimTransport, parse_sim_multiaddr

__all__ = [
    "MAX_SCENARIO_NODES",
    "NAT_EXPECTED",
    "NAT_SCENARIO_PRESETS",
    "SCENARIOS",
    "ObservedEcho",
    "ScenarioResult",
    "run_scenario",
]

#: Largest node count :func:`run_scenario` accepts (the 1000-node mesh runs in seconds).
MAX_SCENARIO_NODES: Final = 5000
#: The port every scenario node listens on.
_PORT: Final = 4001
#: How long a scenario waits for one ping before calling it failed (virtual seconds).
_PING_TIMEOUT: Final = 5.0

Figures = dict[str, Any]
#: (figure name, the value it must have): what a scenario checks about its own run.
Expectations = list[tuple[str, Any]]
ScenarioFunction = Callable[[Simulation, int], Coroutine[Any, Any, tuple[Figures, Expectations]]]


@attrs.frozen
class ScenarioResult:
    """What one scenario run produced.

    ``figures`` are scenario-specific counts and virtual-time measurements;
    ``ok`` is False when an expectation of the scenario failed (``problems``
    says which).  Everything but ``wall_s`` is a function of (scenario, seed,
    nodes) alone.
    """

    scenario: str
    seed: Seed
    nodes: int
    virtual_s: float
    events: int
    digest: str
    figures: Figures
    problems: list[str]
    wall_s: float

    @property
    def ok(self) -> bool:
        """True when every expectation of the scenario held."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``ok`` included)."""
        d = attrs.asdict(self)
        d["ok"] = self.ok
        return d


def _make_node(sim: Simulation, host: str, config: NetworkConfig) -> Any:
    from switchy.protocols.echo import EchoService
    from switchy.protocols.ping import PingService
    from switchy.stack.node import Node

    return Node(
        transports=[SimTransport(sim.network, host)],
        services=[PingService(), EchoService()],
        config=config,
        entropy=sim.entropy_source(host),
        listen=[f"/memory/{_PORT}"],
    )


def _random_tree(sim: Simulation, names: list[str], **link: Any) -> None:
    """Hosts ``names`` joined by a random tree (everyone reachable), random latencies."""
    net = sim.network
    rnd = sim.random
    net.add_hosts(names)
    for i in range(1, len(names)):
        net.add_link(names[i], names[rnd.randrange(i)], latency=rnd.uniform(0.005, 0.05), **link)


async def _ping_once(node: Any, addr: Multiaddr) -> float | None:
    """One ping round trip in seconds, or None when it fails or times out."""
    from switchy.protocols.ping import ping

    try:
        async with asyncio.timeout(_PING_TIMEOUT):
            return (await ping(node, addr, count=1))[0]
    except (P2PError, TimeoutError):
        return None


def _ms(values: list[float]) -> float | None:
    return round(statistics.median(values) * 1000, 3) if values else None


async def _start(sim: Simulation, names: list[str], config: NetworkConfig) -> list[Any]:
    nodes = [_make_node(sim, h, config) for h in names]
    for node in nodes:
        await node.start()
    return nodes


async def _close(nodes: list[Any]) -> None:
    for node in nodes:
        await node.close()


async def scenario_mesh(sim: Simulation, n: int) -> tuple[Figures, Expectations]:
    """See the module docstring."""
    from switchy.protocols.ping import ping

    names = [f"n{i}" for i in range(n)]
    loss = sim.config.default_packet_loss
    routers = [f"r{i}" for i in range(max(1, n // 20))]
    _random_tree(sim, routers, loss=loss)
    sim.network.add_hosts(names)
    for name in names:
        router = sim.random.choice(routers)
        sim.network.add_link(name, router, latency=sim.random.uniform(0.001, 0.01), loss=loss)
    nodes = await _start(sim, names, NetworkConfig(keepalive_interval=0))
    addrs = [node.full_addrs[0] for node in nodes]
    rtts: list[float] = []
    failed = 0

    async def run_one(i: int) -> None:
        nonlocal failed
        others = [j for j in range(n) if j != i]
        for j in sim.random.sample(others, min(3, len(others))):
            try:
                async with asyncio.timeout(sim.config.connection_timeout):
                    rtts.extend(await ping(nodes[i], addrs[j], count=3))
            except (P2PError, TimeoutError):
                failed += 1

    await asyncio.gather(*(run_one(i) for i in range(n)))
    conns = sum(len(node.connections()) for node in nodes)
    await _close(nodes)
    figures = {
        "pings_ok": len(rtts),
        "ping_sessions_failed": failed,
        "median_rtt_ms": _ms(rtts),
        "max_rtt_ms": round(max(rtts) * 1000, 3) if rtts else None,
        "connections": conns,
    }
    return figures, [("ping_sessions_failed", 0)]


async def scenario_partition(sim: Simulation, n: int) -> tuple[Figures, Expectations]:
    """See the module docstring."""
    names = [f"n{i}" for i in range(n)]
    _random_tree(sim, names)
    config = NetworkConfig(keepalive_interval=5.0)
    nodes = await _start(sim, names, config)
    addrs = [node.full_addrs[0] for node in nodes]
    half = n // 2
    left, right = list(range(half)), list(range(half, n))

    def partner(i: int) -> int:
        side = right if i < half else left
        return side[i % len(side)]

    def neighbour(i: int) -> int:
        side = left if i < half else right
        return side[(side.index(i) + 1) % len(side)]

    async def round_(pairs: list[tuple[int, int]]) -> list[float | None]:
        return list(await asyncio.gather(*(_ping_once(nodes[a], addrs[b]) for a, b in pairs)))

    across = [(i, partner(i)) for i in range(n)]
    within = [(i, neighbour(i)) for i in range(n) if neighbour(i) != i]
    before = await round_(across)
    partition = sim.network.partition([names[i] for i in left])
    t_split = sim.now
    during_across = await round_(across)
    during_within = await round_(within)
    # Long enough for keep-alives and the connection timeout to notice the split.
    await asyncio.sleep(sim.config.connection_timeout + 10)
    cut_off = sum(1 for i in left if not any(nodes[i].connections(nodes[j].peer_id) for j in right))
    sim.network.heal(partition)
    t_heal = sim.now
    after = await round_(across)
    await _close(nodes)

    def ok(results: list[float | None]) -> int:
        return sum(r is not None for r in results)

    figures = {
        "cross_pings_before": ok(before),
        "cross_pings_during": ok(during_across),
        "within_pings_during": ok(during_within),
        "within_pairs": len(within),
        "left_nodes_cut_off": cut_off,
        "cross_pings_after_heal": ok(after),
        "pairs": len(across),
        "partitioned_at_s": round(t_split, 6),
        "healed_at_s": round(t_heal, 6),
    }
    return figures, [
        ("cross_pings_before", len(across)),
        ("cross_pings_during", 0),
        ("within_pings_during", len(within)),
        ("left_nodes_cut_off", len(left)),
        ("cross_pings_after_heal", len(across)),
    ]


async def scenario_lossy(sim: Simulation, n: int) -> tuple[Figures, Expectations]:
    """See the module docstring."""
    from switchy.protocols.echo import echo

    net = sim.network
    pairs = max(1, n // 2)
    names = [f"a{i}" for i in range(pairs)] + [f"b{i}" for i in range(pairs)]
    net.add_hosts(["core-a", "core-b", *names])
    net.add_link("core-a", "core-b", latency=0.04, jitter=0.01, loss=0.05, bandwidth=2_000_000)
    for i in range(pairs):
        net.add_link(f"a{i}", "core-a", latency=0.002)
        net.add_link(f"b{i}", "core-b", latency=0.002)
    nodes = await _start(sim, names, NetworkConfig(keepalive_interval=0))
    size = 256 * 1024
    intact = 0
    durations: list[float] = []

    async def one(i: int) -> None:
        nonlocal intact
        payload = sim.entropy(size)
        start = sim.now
        try:
            back = await echo(nodes[i], nodes[pairs + i].full_addrs[0], payload)
        except P2PError:
            return
        durations.append(sim.now - start)
        intact += back == payload

    await asyncio.gather(*(one(i) for i in range(pairs)))
    await _close(nodes)
    core = net.link("core-a", "core-b").counters
    moved = 2 * size * intact
    elapsed = max(durations) if durations else 0.0
    figures = {
        "pairs": pairs,
        "echoes_intact": intact,
        "bytes_echoed": moved,
        "core_link_drops": core.drops,
        "core_link_packets": core.packets,
        "slowest_echo_s": round(elapsed, 6),
        "goodput_bytes_per_s": round(moved / elapsed) if elapsed else None,
    }
    return figures, [("echoes_intact", pairs)]


class ObservedEcho(asyncio.DatagramProtocol):
    """A STUN-like UDP service: answers every datagram with the ``host:port`` it came from,
    and keeps what it received (``received``: ``(data, addr)`` pairs)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the socket to answer on."""
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """Record ``data`` and echo the observed address back."""
        self.received.append((data, addr))
        if data.startswith(b"?") and self.transport is not None:
            self.transport.sendto(f"{addr[0]}:{addr[1]}".encode(), addr)


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))


#: The presets the ``nat`` scenario shows, in order.
NAT_SCENARIO_PRESETS: Final = (
    "open",
    "firewall",
    "full_cone",
    "address_restricted",
    "port_restricted",
    "symmetric",
    "cgnat",
)
#: What each preset must let in: (same mapping toward two servers, contacted endpoint
#: passes, same host other port passes, other host passes, unsolicited TCP SYN outcome).
NAT_EXPECTED: Final = {
    "open": (True, True, True, True, "accepted"),
    "firewall": (True, True, False, False, "reset"),
    "full_cone": (True, True, True, True, "accepted"),
    "address_restricted": (True, True, True, False, "reset"),
    "port_restricted": (True, True, False, False, "reset"),
    "symmetric": (False, True, False, False, "reset"),
    "cgnat": (True, True, False, False, "reset"),
}


async def _nat_one(sim: Simulation, preset: str, seen_tcp: list[Multiaddr]) -> Figures:
    from switchy.stack.errors import ConnectionFailed, P2PTimeout

    net = sim.network
    client, box = f"c-{preset}", f"nat-{preset}"
    net.add_nat(box, lan=[client], wan="isp", preset=preset)
    inbox = _Inbox()
    sock, _ = net.open_datagram(inbox, client, 5000)
    accepted: list[str] = []

    async def on_conn(conn: Any) -> None:
        accepted.append(str(conn.remote_addr))
        await conn.close()

    net.listen(client, 5000, on_conn)
    observed: list[str] = []
    for server in ("s1", "s2"):
        before = len(inbox.received)
        sock.sendto(b"?", (server, 3478))
        await asyncio.sleep(0.5)
        observed.extend(d.decode() for d, _ in inbox.received[before:])
    ext_host, _, ext_port = observed[0].partition(":") if observed else ("", "", "0")
    target = (ext_host, int(ext_port))
    passed: dict[str, bool] = {}
    for label, (host, port) in (
        ("contacted", ("s1", 3478)),
        ("same_host_other_port", ("s1", 3479)),
        ("other_host", ("s3", 3478)),
    ):
        before = len(inbox.received)
        probe = sim.network.host(host)._datagrams[port]
        probe.sendto(b"probe-" + label.encode(), target)
        await asyncio.sleep(0.5)
        passed[label] = any(d.startswith(b"probe-") for d, _ in inbox.received[before:])
    # TCP has its own mappings: open one (from the listening port) toward s1 first.
    out = await net.connect(client, "s1", 4001, local_port=5000)
    await asyncio.sleep(0.1)
    seen = parse_sim_multiaddr(seen_tcp[-1])
    assert seen is not None
    seen_host = net.host_by_number(seen[0])
    assert seen_host is not None
    try:
        conn = await net.connect("s3", seen_host, seen[1], timeout=3.0)
        await conn.close()
        tcp = "accepted"
    except ConnectionFailed:
        tcp = "reset"
    except P2PTimeout:
        tcp = "dropped"
    await out.close()
    sock.close()
    boxes = [net.nat(box)] + ([net.nat(f"{box}-cgn")] if preset == "cgnat" else [])
    return {
        "observed": observed,
        "same_mapping": len(observed) == 2 and observed[0] == observed[1],
        "inbound": passed,
        "unsolicited_tcp_syn": tcp,
        "tcp_accepted_from": accepted,
        "mappings": {b.name: len(b.mappings()) for b in boxes},
        "created": {b.name: b.counters.mappings_created for b in boxes},
        "drops": {b.name: dict(sorted(b.counters.drop_reasons.items())) for b in boxes},
    }


async def scenario_nat(sim: Simulation, n: int) -> tuple[Figures, Expectations]:
    """See the module docstring."""
    net = sim.network
    net.add_hosts(["isp", "s1", "s2", "s3"])
    seen_tcp: list[Multiaddr] = []

    async def on_tcp(conn: Any) -> None:
        seen_tcp.append(conn.remote_addr)
        await conn.read()
        await conn.close()

    net.listen("s1", 4001, on_tcp)
    for server in ("s1", "s2", "s3"):
        net.add_link(server, "isp", latency=0.02, loss=0.0)
        for port in (3478, 3479):
            net.open_datagram(ObservedEcho(), server, port)
    figures: Figures = {}
    expectations: Expectations = []
    for preset in NAT_SCENARIO_PRESETS:
        sim.trace.note(sim.now, f"nat preset {preset}")
        one = await _nat_one(sim, preset, seen_tcp)
        figures[preset] = one
        same, contacted, other_port, other_host, tcp = NAT_EXPECTED[preset]
        got = (
            one["same_mapping"],
            one["inbound"]["contacted"],
            one["inbound"]["same_host_other_port"],
            one["inbound"]["other_host"],
            one["unsolicited_tcp_syn"],
        )
        figures[f"{preset}_table"] = list(got)
        expectations.append((f"{preset}_table", [same, contacted, other_port, other_host, tcp]))
    return figures, expectations


async def scenario_punch(sim: Simulation, nodes: int) -> tuple[Figures, list[tuple[str, Any]]]:
    """Hole punching for every ordered pair of NAT presets over TCP and QUIC
    (:mod:`switchy.punch`); ``nodes`` is ignored.  Each pair runs in its own
    network partition of names: ``<a>-<b>-<transport>``."""
    from switchy.punch import PUNCH_PRESETS, PUNCH_TRANSPORTS, expected_direct, punch_pair

    figures: Figures = {}
    expectations: list[tuple[str, Any]] = []
    for kind in PUNCH_TRANSPORTS:
        for a in PUNCH_PRESETS:
            for b in PUNCH_PRESETS:
                key = f"{a}-{b}-{kind}"
                sim.trace.note(sim.now, f"punch {key}")
                one = await punch_pair(sim, a, b, kind, prefix=f"{key}-")
                figures[key] = one
                expectations.append((f"{key}-direct", expected_direct(a, b)))
                figures[f"{key}-direct"] = one["direct"]
    return figures, expectations


#: Scenario name → scenario function.
SCENARIOS: Final[dict[str, ScenarioFunction]] = {
    "mesh": scenario_mesh,
    "partition": scenario_partition,
    "lossy": scenario_lossy,
    "nat": scenario_nat,
    "punch": scenario_punch,
}


def run_scenario(
    name: str,
    *,
    seed: Seed = 1,
    nodes: int = 10,
    config: SimConfig | None = None,
    trace_sink: IO[str] | None = None,
) -> ScenarioResult:
    """Run scenario ``name`` with ``nodes`` nodes from ``seed``; return its result.

    ``trace_sink`` receives the event trace as JSON lines.  Raises
    :class:`InvalidConfiguration` for an unknown scenario or a bad node count.
    """
    func = SCENARIOS.get(name)
    if func is None:
        raise InvalidConfiguration(
            f"unknown scenario {name!r}; choose one of: {', '.join(sorted(SCENARIOS))}"
        )
    if not 2 <= nodes <= MAX_SCENARIO_NODES:
        raise InvalidConfiguration(f"a scenario needs 2 to {MAX_SCENARIO_NODES} nodes, got {nodes}")
    wall = time.perf_counter()
    with Simulation(seed, config=config, trace_sink=trace_sink) as sim:
        figures, expectations = sim.run(func(sim, nodes))
        virtual = sim.now
        digest = sim.trace.digest()
        events = len(sim.trace)
    problems = [
        f"{key} is {figures[key]}, expected {want}"
        for key, want in expectations
        if figures[key] != want
    ]
    return ScenarioResult(
        scenario=name,
        seed=seed,
        nodes=nodes,
        virtual_s=round(virtual, 6),
        events=events,
        digest=digest,
        figures=figures,
        problems=problems,
        wall_s=round(time.perf_counter() - wall, 3),
    )
