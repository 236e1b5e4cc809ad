"""Floods against one node over loopback, each bounded in count and time: the node stays
within its limits, an honest peer keeps getting pings answered (measured during the
flood), and afterwards connections, streams, memory charges, fds and tasks are back to
the baseline.

The attackers come from 127.0.0.2 (Linux routes all of 127/8 to the loopback), the
honest peer from 127.0.0.1: the per-IP limits fall on the attacker only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from multiaddr import Multiaddr

from switchy.protocols.discovery import DISCOVERY_PROTOCOL
from switchy.protocols.discovery.client import registry_request
from switchy.protocols.discovery.codec import (
    MAX_PIPELINED_REQUESTS,
    ClientCore,
    Lookup,
    Register,
)
from switchy.protocols.discovery.registry import RegistryService
from switchy.protocols.ping import PingService, ping
from switchy.protocols.router import Request, Router
from switchy.protocols.router.client import request
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import ConnectionClosed, P2PError
from switchy.stack.node import Node, ProtocolService
from switchy.transports.quic import QuicTransport
from switchy.transports.quic.endpoint import MAX_PENDING_HANDSHAKES_PER_SOURCE, RETRY_THRESHOLD
from switchy.transports.tcp import TcpTransport
from tests.test_hardening import _client_initial

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
ATTACKER_IP = "127.0.0.2"


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(bounded())


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Rss:
    """The process's resident memory (MiB): at the start, its peak over :meth:`sample`
    calls, and now (printed next to each flood's figures; not asserted: the allocator
    keeps freed pages, and the resource manager's charges are what the tests check)."""

    def __init__(self) -> None:
        self.base = self.peak = rss_mib()

    def sample(self) -> None:
        """Note the current resident memory."""
        self.peak = max(self.peak, rss_mib())

    def report(self) -> str:
        """``RSS base -> peak -> now``."""
        return f"RSS {self.base:.0f} -> {self.peak:.0f} -> {rss_mib():.0f} MiB"


def rss_mib() -> float:
    """Resident memory of this process in MiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def plain_node(**config: object) -> Node:
    cfg = NetworkConfig(keepalive_interval=0, **config)  # type: ignore[arg-type]
    return Node(transports=[TcpTransport()], services=[PingService()], config=cfg)


#: Turns of the event loop :meth:`Baseline.reached` gives ending tasks to finish.
SETTLE_TURNS = 100


@attrs.frozen
class Baseline:
    """The process's open file descriptors and the loop's tasks at a quiet moment (taken
    before a flood; :meth:`reached` checks that everything came back to it)."""

    fds: int
    tasks: int

    @classmethod
    async def take(cls) -> Baseline:
        """The counts now (after one turn of the loop)."""
        await asyncio.sleep(0)
        return cls(fds(), len(asyncio.all_tasks()))

    async def reached(self, *, extra_fds: int = 0) -> None:
        """Assert that fds (``extra_fds`` more allowed) and tasks are back at or below the
        baseline; tasks that are ending get up to :data:`SETTLE_TURNS` turns of the loop
        (no timer: the loop runs what is ready)."""
        for _ in range(SETTLE_TURNS):
            if len(asyncio.all_tasks()) <= self.tasks:
                break
            await asyncio.sleep(0)
        now = Baseline(fds(), len(asyncio.all_tasks()))
        assert now.fds <= self.fds + extra_fds, f"{now.fds} fds open, baseline {self.fds}"
        assert now.tasks <= self.tasks, (
            f"{now.tasks} tasks, baseline {self.tasks}: "
            + ", ".join(sorted({t.get_coro().__qualname__ for t in asyncio.all_tasks()}))  # type: ignore[union-attr]
        )


async def before_the_flood(server: Node, honest: Node, listen: str = LOOPBACK) -> Multiaddr:
    """``server`` listens on ``listen``, ``honest`` connects and pings it once (its
    connection is part of the baseline); the server's address."""
    await server.listen(listen)
    addr = server.full_addrs[0]
    assert (await ping(honest, addr))[0] < 5.0
    return addr


class SilentSockets:
    """``count`` TCP connections to ``127.0.0.1:port`` from :data:`ATTACKER_IP` that never
    send a byte, each waiting for the server to end it: :attr:`some_ended` is set once
    ``first`` of them were ended, :attr:`all_ended` once all were."""

    def __init__(self, port: int, count: int, first: int) -> None:
        self.ended = 0
        self.some_ended = asyncio.Event()
        self.all_ended = asyncio.Event()
        self._count, self._first = count, first
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks = [asyncio.ensure_future(self._silent(port)) for _ in range(count)]

    async def _silent(self, port: int) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(ATTACKER_IP, 0)
        )
        self._writers.append(writer)
        with contextlib.suppress(OSError):
            await reader.read()  # never sends: waits for the server to end it
        self.ended += 1
        if self.ended >= self._first:
            self.some_ended.set()
        if self.ended == self._count:
            self.all_ended.set()

    async def close(self) -> None:
        """Close our ends (after :attr:`all_ended`) and wait until each is closed."""
        for w in self._writers:
            w.close()
        await asyncio.gather(*self._tasks)
        for w in self._writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()


def test_slowloris_tcp_handshakes() -> None:
    """100 TCP connections that never start the handshake: the per-IP limit refuses all but
    20 at once, the handshake timeout frees those, honest pings go on meanwhile."""
    server = plain_node(handshake_timeout=1.0, max_inbound_per_ip=20)
    honest = plain_node()
    flood = 100  # from one attacker address; the per-IP limit holds 20 of them

    async def main() -> None:
        async with server, honest:
            await honest.listen(LOOPBACK)
            addr = await before_the_flood(server, honest)
            base = await Baseline.take()
            tcp_port = int(addr.value_for_protocol("tcp"))
            silent = SilentSockets(tcp_port, flood, first=flood - 20)  # the refused ones
            await asyncio.wait_for(silent.some_ended.wait(), 20)
            during = server.limits.usage()
            assert during.get("transient", {}).get("conns_inbound", 0) <= 20
            assert server.limits.blocked[("ip", "conns_inbound")] >= flood - 20
            rtts = await ping(honest, addr, count=5)  # while 20 handshakes are held open
            assert max(rtts) < 5.0
            async with plain_node() as newcomer:  # a new honest connection gets through too
                assert (await ping(newcomer, addr))[0] < 5.0
            await asyncio.wait_for(silent.all_ended.wait(), 20)  # the handshake timeout ended them
            await silent.close()
            assert "transient" not in server.limits.usage()
            assert server.limits.system.used("conns") == 1  # the honest peer only
            await base.reached()
            print(f"slowloris: honest ping during the flood {max(rtts) * 1000:.1f} ms (max of 5)")

    run(main)


def test_yamux_syn_flood() -> None:
    """An attacker opening 3,000 streams as fast as its frames go (no ACK wait): the
    backlog and stream limits refuse the excess, honest pings go on, all is freed after."""
    server = plain_node(
        negotiation_timeout=1.0, limits=("peer.streams_inbound=200", "peer.memory=8MiB")
    )
    honest = plain_node()
    attacker = plain_node(
        max_ack_backlog=100_000,
        max_streams_per_connection=100_000,
        limits=tuple(
            f"{scope}.{r}=unlimited"
            for scope in ("system", "transient", "peer")
            for r in ("streams", "streams_outbound")
        ),
    )
    flood = 3000

    async def main() -> None:
        async with server, honest, attacker:
            addr = await before_the_flood(server, honest)
            base = await Baseline.take()
            gone = asyncio.Event()
            server.on_connection_event(
                lambda ev: gone.set() if ev.peer == attacker.peer_id else None
            )
            conn = await attacker.connect(addr)
            ended_by_server = False
            try:
                for _ in range(flood):  # SYNs only: each stream waits for its negotiation
                    await conn.open_stream()
                await conn.ping(timeout=20)  # type: ignore[attr-defined]  # all SYNs handled
            except ConnectionClosed:
                # More refusals than MAX_QUEUED_ANSWERS waiting to be sent: the server
                # ends the session of a peer that floods SYNs past every limit.
                ended_by_server = True
            if not ended_by_server:
                usage = server.limits.usage()[f"peer:{attacker.peer_id}"]
                assert 0 < usage["streams_inbound"] <= 200
                assert usage.get("memory", 0) <= 8 * 1024 * 1024
            refused = server.limits.blocked[("peer", "streams_inbound")]
            # the limits refused some, or the session ended first (refusals of yamux's own
            # stream cap and accept backlog count as answers too)
            assert refused > 0 or ended_by_server
            rtts = await ping(honest, addr, count=5)
            assert max(rtts) < 5.0
            await conn.close()
            await asyncio.wait_for(gone.wait(), 20)
            # the honest peer's ping streams end on the server a moment after its pings
            # return: end its connection too, then nothing may be held
            honest_gone = asyncio.Event()
            server.on_connection_event(
                lambda ev: honest_gone.set() if ev.peer == honest.peer_id else None
            )
            await honest.close()
            await asyncio.wait_for(honest_gone.wait(), 20)
            assert set(server.limits.usage()) == {"system"}
            assert server.limits.system.used("streams") == 0
            await base.reached(extra_fds=1)  # the attacker's own connection is gone too
            print(
                f"SYN flood: {refused} streams refused, session ended by the server: "
                f"{ended_by_server}; honest ping {max(rtts) * 1000:.1f} ms"
            )

    run(main)


async def honest_pings_while(
    honest: Node, addr: Multiaddr, flood: asyncio.Future[Any], sample: Callable[[], None]
) -> list[float]:
    """Ping ``addr`` from ``honest`` one after another until ``flood`` is done, calling
    ``sample()`` after each (the memory checks); the round trips, at least one."""
    rtts: list[float] = []
    while not flood.done() or not rtts:
        rtts += await ping(honest, addr, count=1)
        sample()
    return rtts


async def wait_gone(server: Node, *peers: Node) -> None:
    """Close ``peers`` and wait until ``server`` saw each one's last connection end."""
    for peer in peers:
        gone = asyncio.Event()
        pid = peer.peer_id
        server.on_connection_event(
            lambda ev, pid=pid, gone=gone: (  # type: ignore[misc]
                gone.set() if ev.peer == pid and not server.connections(pid) else None
            )
        )
        await peer.close()
        if server.connections(pid):
            await asyncio.wait_for(gone.wait(), 20)


def test_ping_flood() -> None:
    """An attacker sends 60,000 yamux pings (in bursts below the answer queue's bound)
    and then runs 300 /ipfs/ping streams of 40 pings each at once: the stream limit
    refuses the excess, the peer's memory stays within its budget, an honest peer's pings
    go on meanwhile, and everything is freed afterwards."""
    budget = 8 * 1024 * 1024
    server = plain_node(limits=("peer.streams_inbound=64", f"peer.memory={budget}"))
    honest = plain_node()
    attacker = plain_node()
    bursts, burst, streams, per_stream = 120, 500, 300, 40

    async def main() -> None:
        async with server, honest, attacker:
            addr = await before_the_flood(server, honest)
            base = await Baseline.take()
            rss = Rss()
            conn = await attacker.connect(addr)
            peak = 0

            def sample() -> None:
                nonlocal peak
                rss.sample()
                use = server.limits.usage().get(f"peer:{attacker.peer_id}", {})
                peak = max(peak, use.get("memory", 0))
                assert peak <= budget
                assert use.get("streams_inbound", 0) <= 64

            async def yamux_pings() -> None:
                for _ in range(bursts):
                    for _ in range(burst - 1):
                        conn._session.ping()  # type: ignore[attr-defined]  # no wait
                    await conn.ping(timeout=20)  # type: ignore[attr-defined]  # the burst's last

            flood = asyncio.ensure_future(yamux_pings())
            yamux_rtts = await honest_pings_while(honest, addr, flood, sample)
            await flood  # the session carried every burst
            assert not conn.is_closed

            async def one_stream() -> bool:
                try:
                    await ping(attacker, addr, count=per_stream)
                except P2PError:
                    return False  # refused by the stream limit
                return True

            async def stream_pings() -> list[bool]:
                return await asyncio.gather(*(one_stream() for _ in range(streams)))

            flood2 = asyncio.ensure_future(stream_pings())
            stream_rtts = await honest_pings_while(honest, addr, flood2, sample)
            served = sum(await flood2)
            refused = server.limits.blocked[("peer", "streams_inbound")]
            assert served > 0
            assert served + refused >= streams  # each stream served or refused
            assert max(yamux_rtts) < 5.0 and max(stream_rtts) < 5.0
            await wait_gone(server, attacker, honest)
            assert set(server.limits.usage()) == {"system"}
            assert server.limits.system.used("streams") == 0
            await base.reached()
            print(
                f"ping flood: {bursts * burst} yamux pings, honest ping max "
                f"{max(yamux_rtts) * 1000:.1f} ms over {len(yamux_rtts)}; {streams} ping "
                f"streams ({served} served, {refused} refused), honest ping max "
                f"{max(stream_rtts) * 1000:.1f} ms over {len(stream_rtts)}; peer memory "
                f"peak {peak / 1024:.0f} KiB of {budget // 1024} KiB; {rss.report()}"
            )

    run(main)


def service_node(*services: ProtocolService, **config: object) -> Node:
    """A TCP node serving ping and ``services``."""
    cfg = NetworkConfig(keepalive_interval=0, **config)  # type: ignore[arg-type]
    return Node(transports=[TcpTransport()], services=[PingService(), *services], config=cfg)


def test_router_request_flood() -> None:
    """An attacker posts 1,200 requests of 32 KiB bodies in three waves of 400 at once:
    the stream limit, ``max_concurrent`` and ``max_buffered`` refuse the excess (the
    bodies in memory never pass ``max_buffered``), an honest peer's pings and requests are
    answered meanwhile, and everything is freed afterwards."""
    router = Router(max_concurrent=32, max_buffered=256 * 1024)
    peak = 0

    def echo(request: Request) -> bytes:
        nonlocal peak  # the bodies held while this one is
        peak = max(peak, router.buffered)
        assert router.buffered <= router.max_buffered
        assert isinstance(request.body, bytes)  # a buffered route
        return request.body

    router.post("/echo")(echo)
    router.get("/hello")(lambda request: "hello")
    budget = 8 * 1024 * 1024
    server = service_node(router, limits=("peer.streams_inbound=64", f"peer.memory={budget}"))
    honest = plain_node()
    attacker = plain_node()
    waves, per_wave, body = 3, 400, os.urandom(32 * 1024)

    async def main() -> None:
        async with server, honest, attacker:
            addr = await before_the_flood(server, honest)
            assert (await request(honest, addr, "GET", "/hello")).status == 200
            base = await Baseline.take()
            rss = Rss()
            await attacker.connect(addr)
            statuses: Counter[int | str] = Counter()
            honest_statuses: Counter[int] = Counter()

            def sample() -> None:
                rss.sample()
                use = server.limits.usage().get(f"peer:{attacker.peer_id}", {})
                assert use.get("memory", 0) <= budget

            async def one() -> None:
                try:
                    res = await request(attacker, addr, "POST", "/echo", body=body, timeout=20)
                except P2PError as exc:
                    statuses[type(exc).__name__] += 1
                else:
                    statuses[res.status] += 1
                    assert res.status != 200 or res.body == body

            async def flood() -> None:
                for _ in range(waves):
                    await asyncio.gather(*(one() for _ in range(per_wave)))

            task = asyncio.ensure_future(flood())
            rtts: list[float] = []
            while not task.done() or not rtts:
                rtts += await ping(honest, addr)
                res = await request(honest, addr, "GET", "/hello", timeout=10)
                honest_statuses[res.status] += 1
                sample()
            await task
            assert sum(statuses.values()) == waves * per_wave
            assert statuses[200] > 0 and len(statuses) > 1  # served some, refused others
            assert max(rtts) < 5.0
            assert honest_statuses[200] > 0
            await wait_gone(server, attacker, honest)
            assert router.buffered == 0
            assert set(server.limits.usage()) == {"system"}
            await base.reached()
            print(
                f"router flood: attacker {dict(statuses)}; honest ping max "
                f"{max(rtts) * 1000:.1f} ms over {len(rtts)}, honest requests "
                f"{dict(honest_statuses)}; bodies in memory peak {peak // 1024} KiB "
                f"of {router.max_buffered // 1024} KiB; {rss.report()}"
            )

    run(main)


def test_discovery_request_flood() -> None:
    """An attacker opens 200 registry streams at once, each sending 64 requests
    pipelined 8 deep (lookups and registrations with bad claims): the stream limit refuses
    the excess, the registry holds no name of the attacker, an honest peer's pings and lookups are
    answered meanwhile, and everything is freed afterwards."""
    registry = RegistryService()
    budget = 8 * 1024 * 1024
    server = service_node(registry, limits=("peer.streams_inbound=64", f"peer.memory={budget}"))
    honest = plain_node()
    attacker = plain_node()
    streams, per_stream = 200, 64

    async def main() -> None:
        async with server, honest, attacker:
            addr = await before_the_flood(server, honest)
            base = await Baseline.take()
            rss = Rss()
            await attacker.connect(addr)
            answers: Counter[str] = Counter()

            def sample() -> None:
                rss.sample()
                use = server.limits.usage().get(f"peer:{attacker.peer_id}", {})
                assert use.get("memory", 0) <= budget
                assert use.get("streams_inbound", 0) <= 64
                assert len(registry.registry) == 0

            async def one(k: int) -> None:
                core = ClientCore()
                try:
                    stream = await attacker.open_stream(addr, DISCOVERY_PROTOCOL)
                    for i in range(per_stream):  # pipelined as deep as the protocol allows
                        if i % 2:
                            core.send_request(Lookup(f"name{k}-{i}"))
                        else:
                            core.send_request(Register(f"name{k}-{i}", 60, b"\x00" * 64))
                        if core.pending < MAX_PIPELINED_REQUESTS and i < per_stream - 1:
                            continue
                        await stream.write(core.data_to_send())
                        while core.pending:
                            data = await stream.read(65536)
                            if not data:
                                raise ConnectionClosed("the registry ended the stream")
                            for response in core.receive_data(data):
                                answers[response.status.name] += 1
                    await stream.close()
                except P2PError as exc:
                    answers[type(exc).__name__] += 1

            task = asyncio.ensure_future(asyncio.gather(*(one(k) for k in range(streams))))
            rtts: list[float] = []
            honest_answers: Counter[str] = Counter()
            while not task.done() or not rtts:
                rtts += await ping(honest, addr)
                res = await registry_request(honest, addr, Lookup("honest-name"))
                honest_answers[res.status.name] += 1
                sample()
            await task
            assert answers["NOT_FOUND"] > 0  # some streams were served
            assert answers["OK"] == 0  # no bad claim was taken
            assert max(rtts) < 5.0
            assert honest_answers["NOT_FOUND"] > 0
            await wait_gone(server, attacker, honest)
            assert len(registry.registry) == 0
            assert set(server.limits.usage()) == {"system"}
            await base.reached()
            print(
                f"discovery flood: attacker answers {dict(answers)}; honest ping max "
                f"{max(rtts) * 1000:.1f} ms over {len(rtts)}, honest lookups "
                f"{dict(honest_answers)}; {rss.report()}"
            )

    run(main)


def quic_node(**config: object) -> Node:
    """A QUIC node serving ping."""
    cfg = NetworkConfig(keepalive_interval=0, **config)  # type: ignore[arg-type]
    return Node(transports=[QuicTransport()], services=[PingService()], config=cfg)


def test_quic_handshake_slowloris() -> None:
    """Three attacker addresses each start 100 QUIC handshakes and never finish them: the
    per-source cap holds 32 of each, past RETRY_THRESHOLD the rest must prove their address
    with a Retry (which the attacker ignores), an honest dial still succeeds and honest
    pings go on, and the handshake timeout frees every slot."""
    server = quic_node(handshake_timeout=10.0)
    honest = quic_node()
    sources, per_source = ("127.0.0.2", "127.0.0.3", "127.0.0.4"), 100  # 4 rounds of 25

    async def main() -> None:
        async with server, honest:
            addr = await before_the_flood(server, honest, "/ip4/127.0.0.1/udp/0/quic-v1")
            base = await Baseline.take()
            rss = Rss()
            ep = server.transports[0].endpoints[0]  # type: ignore[attr-defined]
            port = int(addr.value_for_protocol("udp"))
            held = MAX_PENDING_HANDSHAKES_PER_SOURCE * 2  # .2 and .3; .4 meets the Retry
            assert held >= RETRY_THRESHOLD
            timed_out = 0
            all_timed_out = asyncio.Event()
            original = ep._handshake_timed_out

            def counted(conn: object) -> None:
                nonlocal timed_out
                original(conn)
                timed_out += 1
                if timed_out == held:
                    all_timed_out.set()

            ep._handshake_timed_out = counted
            loop = asyncio.get_running_loop()
            socks = []
            for ip in sources:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((ip, 0))
                sock.setblocking(False)
                socks.append(sock)
            try:
                rtts: list[float] = []
                for sock in socks:
                    for _ in range(per_source // 25):
                        for _ in range(25):  # few enough for any socket receive buffer
                            sock.sendto(_client_initial(port, loop.time()), ("127.0.0.1", port))
                        # the server reads its socket in order: these Initials are handled
                        # (held, refused or sent a Retry) before this ping's round trip
                        rtts += await ping(honest, addr)
                        rss.sample()
                counters = ep.counters
                assert len(ep._handshakes) == held
                assert max(ep._pending_by_source.values()) <= MAX_PENDING_HANDSHAKES_PER_SOURCE
                assert counters.refused_handshakes == 2 * (per_source - 32)
                assert counters.retries == per_source  # the third source met the Retry
                async with quic_node() as newcomer:  # proves its address, then is served
                    new_rtt = (await ping(newcomer, addr))[0]
                assert counters.retries == per_source + 1 and counters.invalid_tokens == 0
                assert max(rtts) < 5.0 and new_rtt < 5.0
                await asyncio.wait_for(all_timed_out.wait(), 60)
            finally:
                for sock in socks:
                    sock.close()
            assert not ep._handshakes and not ep._pending_by_source
            assert (await ping(honest, addr))[0] < 5.0
            assert server.limits.system.used("conns") == 1  # the honest peer only
            await base.reached()
            print(
                f"QUIC slowloris: {len(sources) * per_source} handshakes started, {held} held, "
                f"{counters.refused_handshakes} refused, {counters.retries - 1} sent a Retry; "
                f"honest ping max {max(rtts) * 1000:.1f} ms over {len(rtts)}, a new honest "
                f"client (after its Retry) {new_rtt * 1000:.1f} ms; {rss.report()}"
            )

    run(main)


def test_idle_socket_flood_leaves_room_for_honest_handshakes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attacker at 127.0.0.2 keeps 60 idle TCP sockets open, more than the 8 pending
    handshakes a descriptor budget of 32 allows: new honest clients from 127.0.0.1 are
    still served (each hangs up the attacker's oldest pending handshake), the attacker's
    own excess is refused at once, and the handshake timeout frees the rest."""
    import switchy.stack.node as node_module

    monkeypatch.setattr(node_module, "fd_budget", lambda: 32)  # 8 pending handshakes at most
    server = plain_node(handshake_timeout=3.0)
    flood, cap, newcomers = 60, 8, 5

    async def main() -> None:
        async with server:
            await server.listen(LOOPBACK)
            addr = server.full_addrs[0]
            tcp_port = int(addr.value_for_protocol("tcp"))
            base = await Baseline.take()
            rss = Rss()
            silent = SilentSockets(tcp_port, flood, first=flood - cap)  # the refused ones
            await asyncio.wait_for(silent.some_ended.wait(), 20)  # the cap is full
            assert server._pending_inbound == cap
            rtts = []
            for _ in range(newcomers):  # each a new connection, its handshake included
                async with plain_node() as honest:
                    start = asyncio.get_running_loop().time()
                    rtts.append((await ping(honest, addr))[0])
                    connect_time = asyncio.get_running_loop().time() - start
                assert server._pending_inbound <= cap
                rss.sample()
                transient = server.limits.usage().get("transient", {})
                assert transient.get("conns_inbound", 0) <= cap
            assert max(rtts) < 5.0
            await asyncio.wait_for(silent.all_ended.wait(), 20)  # evicted, refused or timed out
            await silent.close()
            assert server._pending_inbound == 0 and not server._pending_by_ip
            assert "transient" not in server.limits.usage()
            await base.reached()
            print(
                f"idle-socket flood: {flood} sockets, {cap} pending at most; {newcomers} new "
                f"honest clients served, ping max {max(rtts) * 1000:.1f} ms (last connect + "
                f"ping {connect_time * 1000:.1f} ms); {rss.report()}"
            )

    run(main)
