"""The network graph: hosts, links, routes, partitions, crashes, config and bad input."""

from __future__ import annotations

import asyncio
import io
import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.stack.errors import DiscoveryFailed, InvalidConfiguration, NoRoute
from switchy.stack.identity import KeyPair
from switchy.transports.sim import Network, SimConfig, Simulation, TraceRecorder, run_simulation

QUIET = SimConfig(default_packet_loss=0.0)


def make_sim(seed: int = 1, config: SimConfig = QUIET) -> Simulation:
    return Simulation(seed, config=config)


def test_defaults_come_from_the_config() -> None:
    with make_sim(config=SimConfig(default_latency_ms=12, default_packet_loss=0.25)) as sim:
        net = sim.network
        net.add_hosts(["a", "b"])
        link = net.add_link("a", "b")
        assert link.latency == pytest.approx(0.012)
        assert link.loss == 0.25
        assert net.link("b", "a").latency == pytest.approx(0.012)


def test_directed_links_and_shortest_path_by_latency() -> None:
    with make_sim() as sim:
        net = sim.network
        net.add_hosts(["a", "b", "c", "d"])
        net.add_link("a", "d", latency=0.5)
        net.add_link("a", "b", latency=0.1)
        net.add_link("b", "c", latency=0.1)
        net.add_link("c", "d", latency=0.1)
        assert net.find_path("a", "d") == ["a", "b", "c", "d"]
        assert net.path_latency("a", "d") == pytest.approx(0.3)
        net.update_link("b", "c", latency=1.0)
        assert net.find_path("a", "d") == ["a", "d"]
        # A directed link only carries one way.
        net.add_hosts(["x", "y"])
        net.add_link("x", "y", latency=0.01, directed=True)
        assert net.find_path("x", "y") == ["x", "y"]
        assert net.find_path("y", "x") is None
        assert not net.has_link("y", "x")
        with pytest.raises(NoRoute, match="no route from y to x"):
            net.path_latency("y", "x")


def test_equal_latency_prefers_fewer_hops() -> None:
    with make_sim() as sim:
        net = sim.network
        net.add_hosts(["a", "b", "c"])
        net.add_link("a", "b", latency=0.1)
        net.add_link("b", "c", latency=0.1)
        net.add_link("a", "c", latency=0.2)
        assert net.find_path("a", "c") == ["a", "c"]


def test_link_down_reroutes_and_crashed_host_does_not_forward() -> None:
    with make_sim() as sim:
        net = sim.network
        net.add_hosts(["a", "b", "c", "d"])
        net.add_link("a", "b", latency=0.1)
        net.add_link("b", "d", latency=0.1)
        net.add_link("a", "c", latency=0.2)
        net.add_link("c", "d", latency=0.2)
        assert net.find_path("a", "d") == ["a", "b", "d"]
        net.link_down("a", "b")
        assert net.find_path("a", "d") == ["a", "c", "d"]
        net.link_up("a", "b")
        assert net.find_path("a", "d") == ["a", "b", "d"]
        net.crash("b")
        assert net.find_path("a", "d") == ["a", "c", "d"]
        net.restart("b")
        assert net.find_path("a", "d") == ["a", "b", "d"]
        net.remove_link("a", "c")
        net.link_down("b", "d", both=False)
        assert net.find_path("a", "d") is None
        assert net.find_path("d", "a") == ["d", "b", "a"]


def test_bad_input_gives_clear_errors() -> None:
    with make_sim() as sim:
        net = sim.network
        net.add_hosts(["a", "b"])
        with pytest.raises(InvalidConfiguration, match="unknown host 'zz'"):
            net.add_link("a", "zz")
        with pytest.raises(InvalidConfiguration, match="latency must be"):
            net.add_link("a", "b", latency=-0.1)
        with pytest.raises(InvalidConfiguration, match="latency must be"):
            net.add_link("a", "b", latency=float("nan"))
        with pytest.raises(InvalidConfiguration, match=r"loss must be within \[0, 1\]"):
            net.add_link("a", "b", loss=1.5)
        with pytest.raises(InvalidConfiguration, match=r"loss must be within \[0, 1\]"):
            net.add_link("a", "b", loss=-0.01)
        with pytest.raises(InvalidConfiguration, match=r"duplicate must be within"):
            net.add_link("a", "b", duplicate=2)
        with pytest.raises(InvalidConfiguration, match="bandwidth must be > 0"):
            net.add_link("a", "b", bandwidth=0)
        with pytest.raises(InvalidConfiguration, match="jitter must be"):
            net.add_link("a", "b", jitter=-1)
        with pytest.raises(InvalidConfiguration, match="to itself"):
            net.add_link("a", "a")
        with pytest.raises(InvalidConfiguration, match="unknown host 'ghost'"):
            net.crash("ghost")
        with pytest.raises(InvalidConfiguration, match="unknown host 'ghost'"):
            net.restart("ghost")
        with pytest.raises(InvalidConfiguration, match="already exists"):
            net.add_host("a")
        with pytest.raises(InvalidConfiguration, match="non-empty string"):
            net.add_host("")
        with pytest.raises(InvalidConfiguration, match="no link from 'a' to 'b'"):
            net.link("a", "b")
        with pytest.raises(InvalidConfiguration, match="not crashed"):
            net.restart("a")
        with pytest.raises(InvalidConfiguration, match="both sides"):
            net.partition(["a"], ["a", "b"])
        with pytest.raises(InvalidConfiguration, match="non-empty"):
            net.partition(["a", "b"])
        with pytest.raises(InvalidConfiguration, match="not active"):
            net.heal(net.partition(["a"], ["b"]).__class__(frozenset("a"), frozenset("b")))


def test_partition_groups_both_ways_and_one_way() -> None:
    with make_sim() as sim:
        net = sim.network
        net.add_hosts(["a", "b", "c"])
        p = net.partition(["a"])
        assert p.b == frozenset({"b", "c"})
        assert p.blocks("a", "b") and p.blocks("c", "a") and not p.blocks("b", "c")
        one = net.partition(["b"], ["c"], one_way=True)
        assert one.blocks("b", "c") and not one.blocks("c", "b")
        assert net.partitions == [p, one]
        net.heal(p)
        assert net.partitions == [one]
        net.heal()
        assert net.partitions == []


def test_crash_and_restart_callbacks_and_host_tasks() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        host = net.add_host("a")
        events: list[str] = []
        host.on_crash(lambda h: events.append(f"crash {h.name} {h.incarnation}"))
        host.on_restart(lambda h: events.append(f"restart {h.name} {h.up}"))
        task = host.spawn(asyncio.sleep(100), name="a-sleeper")
        await asyncio.sleep(1)
        net.crash("a")
        net.crash("a")  # crashing a crashed host does nothing
        await asyncio.sleep(0)
        assert task.cancelled()
        assert not host.up
        net.restart("a")
        assert events == ["crash a 1", "restart a True"]
        kinds = [e.kind for e in sim.trace.of_kind("crash", "restart")]
        assert kinds == ["crash", "restart"]

    run_simulation(main, seed=1, config=QUIET)


def test_name_service_lookup_takes_the_discovery_delay() -> None:
    async def main(sim: Simulation) -> None:
        peer = KeyPair.generate(sim.entropy).peer_id
        addr = sim.network.add_host("a").address(4001)
        sim.names.register("alice", peer, [addr])
        assert "alice" in sim.names
        start = sim.now
        record = await sim.names.lookup("alice")
        assert sim.now - start == pytest.approx(0.25)
        assert record.peer == peer and record.addrs == (addr,)
        with pytest.raises(DiscoveryFailed, match="'bob'"):
            await sim.names.lookup("bob")
        sim.names.unregister("alice")
        with pytest.raises(DiscoveryFailed):
            await sim.names.lookup("alice")
        with pytest.raises(InvalidConfiguration):
            sim.names.register("", peer)

    run_simulation(main, seed=1, config=SimConfig(discovery_delay_ms=250))


def test_config_from_env() -> None:
    env = {
        "SIMULATOR_DEFAULT_LATENCY_MS": "20",
        "SIMULATOR_DEFAULT_PACKET_LOSS": "0.5",
        "SIMULATOR_DISCOVERY_DELAY_MS": "7",
        "SIMULATOR_CONNECTION_TIMEOUT_SECS": "3",
        "SIMULATOR_MAX_MESSAGE_SIZE": "2048",
        "SIMULATOR_UNRELATED": "ignored",
    }
    cfg = SimConfig.from_env(env)
    assert cfg == SimConfig(
        default_latency_ms=20,
        default_packet_loss=0.5,
        discovery_delay_ms=7,
        connection_timeout_secs=3,
        max_message_size=2048,
    )
    assert cfg.default_latency == pytest.approx(0.02)
    assert cfg.discovery_delay == pytest.approx(0.007)
    defaults = SimConfig.from_env({})
    assert (defaults.default_latency_ms, defaults.default_packet_loss) == (50, 0.01)
    assert (defaults.discovery_delay_ms, defaults.connection_timeout_secs) == (100, 30)
    assert defaults.max_message_size == 1024 * 1024
    assert SimConfig.from_env({}, max_message_size=5).max_message_size == 5


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("SIMULATOR_DEFAULT_LATENCY_MS", "fast", "SIMULATOR_DEFAULT_LATENCY_MS='fast'"),
        ("SIMULATOR_DEFAULT_LATENCY_MS", "-5", "SIMULATOR_DEFAULT_LATENCY_MS='-5'"),
        ("SIMULATOR_DEFAULT_PACKET_LOSS", "1.5", r"within \[0, 1\]"),
        ("SIMULATOR_DISCOVERY_DELAY_MS", "inf", "SIMULATOR_DISCOVERY_DELAY_MS"),
        ("SIMULATOR_CONNECTION_TIMEOUT_SECS", "0", "must be a finite number > 0"),
        ("SIMULATOR_MAX_MESSAGE_SIZE", "1.5", "SIMULATOR_MAX_MESSAGE_SIZE='1.5'"),
        ("SIMULATOR_MAX_MESSAGE_SIZE", "0", "integer > 0"),
    ],
)
def test_bad_config_values_are_clear_errors(name: str, value: str, match: str) -> None:
    with pytest.raises(InvalidConfiguration, match=match):
        SimConfig.from_env({name: value})


def test_trace_json_lines_digest_and_counters() -> None:
    rec = TraceRecorder()
    rec.record(0.5, "send", "a", "b", 10, {"conn": 1})
    rec.record(0.75, "deliver", "a", "b", 10, {"conn": 1})
    rec.note(1.0, "marker", step=2)
    buf = io.StringIO()
    assert rec.write_jsonl(buf) == 3
    lines = buf.getvalue().splitlines()
    assert json.loads(lines[0]) == {
        "t": 0.5,
        "kind": "send",
        "src": "a",
        "dst": "b",
        "size": 10,
        "extra": {"conn": 1},
    }
    assert json.loads(lines[2])["extra"] == {"text": "marker", "step": 2}
    assert rec.to_jsonl() == buf.getvalue()
    same = TraceRecorder()
    for ev in rec:
        same.record(ev.time, ev.kind, ev.src, ev.dst, ev.size, ev.extra)
    assert same.digest() == rec.digest()
    same.record(2.0, "drop", "a", "b", 1)
    assert same.digest() != rec.digest()
    assert [e.kind for e in rec.of_kind("deliver")] == ["deliver"]
    off = TraceRecorder(enabled=False)
    off.record(0.0, "send", "a", "b", 1)
    assert len(off) == 0
    sink = io.StringIO()
    streamed = TraceRecorder(sink=sink)
    streamed.record(0.5, "send", "a", "b", 10, {"conn": 1})
    assert sink.getvalue() == lines[0] + "\n"


def test_trace_written_to_a_file(tmp_path: pytest.TempPathFactory) -> None:
    path = f"{tmp_path}/trace.jsonl"

    async def main(sim: Simulation) -> None:
        sim.network.add_hosts(["a", "b"])
        sim.network.add_link("a", "b", latency=0.01)

    run_simulation(main, seed=1, config=QUIET, trace_path=path)
    with open(path, encoding="utf-8") as fh:
        events = [json.loads(line) for line in fh]
    assert events[0]["kind"] == "link"


def test_network_needs_its_own_hosts() -> None:
    with make_sim() as sim, make_sim() as other:
        foreign = other.network.add_host("a")
        with pytest.raises(InvalidConfiguration, match="another network"):
            sim.network.host(foreign)
        assert isinstance(sim.network, Network)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=9),
    edges=st.lists(
        st.tuples(
            st.integers(0, 8),
            st.integers(0, 8),
            st.integers(1, 50),
            st.booleans(),
        ),
        max_size=30,
    ),
    down=st.sets(st.integers(0, 8), max_size=3),
)
def test_find_path_is_a_shortest_route(
    n: int, edges: list[tuple[int, int, int, bool]], down: set[int]
) -> None:
    """Routes agree with Floyd-Warshall over links that are up, avoiding crashed hosts."""
    with make_sim() as sim:
        net = sim.network
        names = [f"h{i}" for i in range(n)]
        net.add_hosts(names)
        for a, b, ms, directed in edges:
            if a < n and b < n and a != b:
                net.add_link(names[a], names[b], latency=ms / 1000, directed=directed)
        crashed = {i for i in down if i < n}
        for i in sorted(crashed):
            net.crash(names[i])
        inf = float("inf")
        dist = [[0.0 if i == j else inf for j in range(n)] for i in range(n)]
        for link in net.links:
            i, j = names.index(link.src.name), names.index(link.dst.name)
            dist[i][j] = min(dist[i][j], link.latency)
        for k in range(n):
            if k in crashed:
                continue  # a crashed host forwards nothing
            for i in range(n):
                for j in range(n):
                    if dist[i][k] + dist[k][j] < dist[i][j]:
                        dist[i][j] = dist[i][k] + dist[k][j]
        for i in range(n):
            for j in range(n):
                path = net.find_path(names[i], names[j])
                if dist[i][j] == inf:
                    assert path is None
                    continue
                assert path is not None and path[0] == names[i] and path[-1] == names[j]
                total = sum(net.link(a, b).latency for a, b in itertools.pairwise(path))
                assert total == pytest.approx(dist[i][j])
                assert all(names.index(h) not in crashed for h in path[1:-1])


def test_link_properties_validate_and_take_effect() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "b", "c"])
        ab = net.add_link("a", "b", latency=0.1)
        net.add_link("a", "c", latency=0.01)
        net.add_link("c", "b", latency=0.01)
        assert net.find_path("a", "b") == ["a", "c", "b"]
        net.link("c", "b").latency = 1.0
        assert net.find_path("a", "b") == ["a", "b"]
        with pytest.raises(InvalidConfiguration, match="loss"):
            ab.loss = 7
        with pytest.raises(InvalidConfiguration, match="bandwidth"):
            ab.bandwidth = -1
        ab.up = False
        assert net.find_path("a", "b") == ["a", "c", "b"]
        ab.up = True
        # Re-adding a link replaces its parameters instead of duplicating it.
        again = net.add_link("a", "b", latency=0.5, loss=0.0)
        assert again is ab and ab.latency == 0.5
        assert len(net.links) == 6
        net.update_link("a", "b", bandwidth=1000.0)
        assert ab.bandwidth == 1000.0 and net.link("b", "a").bandwidth == 1000.0
        net.update_link("a", "b", unlimited_bandwidth=True, both=False)
        assert ab.bandwidth is None and net.link("b", "a").bandwidth == 1000.0
        assert "held" not in repr(ab)
        net.hold("a", "b")
        assert ab.held and "held" in repr(ab)
        net.release("a", "b")
        assert not ab.held

    run_simulation(main, seed=1, config=QUIET)


def _searched_path(net: Network, a: str, b: str) -> list[str] | None:
    """The route from ``a`` to ``b`` by a full search from ``a`` (no leaf shortcut)."""
    src, dst = net.host(a), net.host(b)
    if src is dst:
        return [a]
    prev = net._tree(src)
    if prev[dst.number] is None:
        return None
    hosts = [dst.name]
    v = dst.number
    while v != src.number:
        link = prev[v]
        assert link is not None
        hosts.append(link.src.name)
        v = link.src.number
    return hosts[::-1]


@settings(max_examples=60, deadline=None)
@given(
    edges=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 7), st.sampled_from([0.001, 0.002, 0.005])),
        max_size=14,
    ),
    leaves=st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0.001, 0.003])), max_size=6),
    down=st.lists(st.integers(0, 30), max_size=3),
    crashed=st.lists(st.integers(0, 13), max_size=2),
)
def test_routes_of_leaves_are_the_routes_a_full_search_finds(
    edges: list[tuple[int, int, float]],
    leaves: list[tuple[int, float]],
    down: list[int],
    crashed: list[int],
) -> None:
    # A leaf's route is its one link plus its neighbour's route: the same as searching.
    with Simulation(1, config=SimConfig(default_packet_loss=0.0)) as sim:
        net = sim.network
        core = [f"c{i}" for i in range(8)]
        net.add_hosts(core)
        for a, b, latency in edges:
            if a != b and not net.has_link(core[a], core[b]):
                net.add_link(core[a], core[b], latency=latency)
        names = list(core)
        for i, (at, latency) in enumerate(leaves):
            leaf = f"l{i}"
            net.add_host(leaf)
            net.add_link(leaf, core[at], latency=latency)
            names.append(leaf)
        links = net.links
        for i in down:
            if links:
                link = links[i % len(links)]
                net.set_link_up(link.src.name, link.dst.name, False, both=False)
        for i in crashed:
            net.crash(names[i % len(names)])
        for x in names:
            for y in names:
                assert net.find_path(x, y) == _searched_path(net, x, y), (x, y)


def test_routes_between_the_leaves_of_a_star_search_only_from_the_hub() -> None:
    # One search per host made a large star quadratic in time and memory.
    with Simulation(1, config=SimConfig(default_packet_loss=0.0)) as sim:
        net = sim.network
        net.add_host("hub")
        for i in range(50):
            net.add_host(f"h{i}")
            net.add_link(f"h{i}", "hub", latency=0.005)
        for i in range(50):
            assert net.find_path(f"h{i}", f"h{(i + 1) % 50}") == [
                f"h{i}",
                "hub",
                f"h{(i + 1) % 50}",
            ]
            assert net.path_latency(f"h{i}", "hub") == pytest.approx(0.005)
        assert list(net._trees) == [net.host("hub").number]
        net.crash("hub")
        assert net.find_path("h0", "h1") is None
        assert net.find_path("h0", "hub") == ["h0", "hub"]


@given(st.integers(0, 10_000), st.integers(0, 65_535))
def test_sim_host_number_reads_the_host_of_any_sim_address(host: int, port: int) -> None:
    from switchy.transports.sim.network import sim_host_number, sim_multiaddr

    value = sim_multiaddr(host, port).value_for_protocol("memory")
    assert sim_host_number(value) == host
    assert sim_host_number(int(value)) == host


@pytest.mark.parametrize("value", ["", "x", "-1", "1.5"])
def test_sim_host_number_refuses_what_is_not_a_sim_address(value: str) -> None:
    from switchy.transports.sim.network import sim_host_number

    assert sim_host_number(value) is None
