"""Harnesses above the core: virtual time, the protocols' harnesses and the built-in ones.

* :class:`VirtualTimeHarness` — runs a suite's coroutines on a fresh
  :class:`~switchy.transports.sim.Simulation` (virtual time: "this must not happen
  within N seconds" checks cost no wall time); mix it into your harness when your part
  runs over memory pipes or the simulator;
* :class:`RouterHarness`, :class:`DiscoveryHarness`, :class:`RemotePeerHarness` — the
  parts the protocol suites judge (router services, discovery backends, a remote peer
  of any implementation);
* the built-in harnesses of the project's own parts (TCP, QUIC, the simulator, Noise,
  yamux, nodes on TCP, the simulator, simulated QUIC and behind a relay, the static
  file service, the registry and the simulator's name service): the ones the project's
  tests use, and examples to copy.

The core's harness bases (:class:`~switchy.stack.conformance.TransportHarness`, ...)
are in :mod:`switchy.stack.conformance.harness`.
"""

from __future__ import annotations

import abc
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from switchy.presets import default_node
from switchy.protocols.discovery.backends import (
    DiscoveryBackend,
    RegistryBackend,
    SimNameBackend,
)
from switchy.protocols.discovery.registry import RegistryService
from switchy.protocols.echo import EchoService
from switchy.protocols.ping import PingService
from switchy.protocols.router import Router, Service
from switchy.protocols.router.static import StaticFiles
from switchy.stack.config import NetworkConfig
from switchy.stack.conformance.harness import (
    Harness,
    MuxerHarness,
    NodeHarness,
    SecurityHarness,
    TransportHarness,
)
from switchy.stack.identity import KeyPair
from switchy.stack.mux import StreamMuxer
from switchy.stack.mux.yamux import Yamux
from switchy.stack.node import Node
from switchy.stack.security import SecurityTransport
from switchy.stack.security.noise import NoiseSecurity
from switchy.stack.transport import Transport
from switchy.transports.quic import QuicTransport
from switchy.transports.quic.sim import sim_quic_transport
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport
from switchy.transports.sim import SimConfig, SimTransport, Simulation, sim_multiaddr
from switchy.transports.tcp import TcpTransport

__all__ = [
    "DiscoveryHarness",
    "NoiseHarness",
    "QuicTransportHarness",
    "RegistryDiscoveryHarness",
    "RelayNodeHarness",
    "RemotePeerHarness",
    "RouterHarness",
    "SimNameDiscoveryHarness",
    "SimNodeHarness",
    "SimQuicNodeHarness",
    "SimQuicTransportHarness",
    "SimTransportHarness",
    "StaticFilesHarness",
    "SwitchyRemoteHarness",
    "TcpNodeHarness",
    "TcpTransportHarness",
    "VirtualTimeHarness",
    "YamuxHarness",
]

_T = TypeVar("_T")


class VirtualTimeHarness(Harness):
    """Runs each test in virtual time on a fresh simulation (seeded by :attr:`seed`).

    The simulation is :attr:`simulation` while a test runs.  Real sockets are refused
    on its loop: a part that needs them keeps the core's real-time :meth:`run`.
    """

    patience = 10.0
    quiet_period = 10.0  # virtual seconds: free
    #: Seed of the simulation :meth:`run` creates.
    seed: int = 1
    #: The running simulation (set by :meth:`run`).
    simulation: Simulation

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``main()`` to completion in a fresh simulation and return its result."""
        with Simulation(self.seed, config=SimConfig(default_packet_loss=0.0)) as sim:
            self.simulation = sim
            return sim.run(main)


class RemotePeerHarness(Harness):
    """A running remote peer (any implementation) that speaks ping and ``/echo/1.0.0``.

    The suite dials it from one of our nodes; it checks behaviour both
    implementations must share (ping, echo integrity, concurrent streams, unknown
    protocols, reconnecting, a wrong expected peer id).
    """

    patience = 20.0
    quiet_period = 0.5

    @abc.abstractmethod
    def remote(self) -> AbstractAsyncContextManager[str]:
        """Start the remote peer; yield its full address (with ``/p2p/<id>``); stop it."""

    def make_local(self) -> Node:
        """Our node that dials the remote (default: :func:`switchy.default_node`)."""
        return default_node(config=self.config())


class SwitchyRemoteHarness(RemotePeerHarness):
    """Our own node as the remote peer (the reference the other implementations meet)."""

    @asynccontextmanager
    async def remote(self) -> AsyncIterator[str]:
        node = Node(
            transports=[TcpTransport(self.config())],
            services=[PingService(), EchoService()],
            config=self.config(),
            listen=["/ip4/127.0.0.1/tcp/0"],
        )
        async with node:
            yield str(node.full_addrs[0])


class RouterHarness(VirtualTimeHarness):
    """The router part under test: services (route handlers) and optionally the Router.

    The suite mounts :meth:`services` on :meth:`make_router`'s router, serves it on a
    simulated node and sends requests: :meth:`good_requests` must answer 2xx; random
    hostile requests must never crash a handler (no 500) nor hang.
    """

    def make_router(self) -> Router:
        """A fresh, empty router (default: :class:`switchy.protocols.router.Router`)."""
        return Router()

    def services(self) -> list[Service]:
        """The services under test (fresh instances each call)."""
        return []

    def good_requests(self) -> list[tuple[str, str, bytes]]:
        """(method, path, body) requests the services must answer with a 2xx status."""
        return []


class DiscoveryHarness(VirtualTimeHarness):
    """The discovery backend under test, on simulated nodes (virtual time).

    :meth:`setup` starts what the backend needs (e.g. a registry node, made with
    ``nodes.make_node``); :meth:`make_backend` gives each node its own backend.
    """

    #: A live name belongs to its registrant: another peer cannot take it over.
    owns_names: bool = True

    async def setup(self, nodes: SimNodeHarness) -> None:
        """Start shared infrastructure inside the run (default: nothing)."""

    @abc.abstractmethod
    def make_backend(self) -> DiscoveryBackend:
        """A fresh backend for one node (called after :meth:`setup`)."""

    async def teardown(self) -> None:
        """Stop what :meth:`setup` started."""


# --- built-in harnesses ---------------------------------------------------------------------


class TcpTransportHarness(TransportHarness):
    """The TCP transport on loopback."""

    def make(self) -> Transport:
        return TcpTransport(self.config())

    def unreachable_addr(self) -> str:
        with socket.socket() as s:  # a port that was free a moment ago
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"/ip4/127.0.0.1/tcp/{port}"


def _star(sim: Simulation, hosts: int) -> None:
    net = sim.network
    net.add_host("hub")
    for i in range(hosts):
        net.add_host(f"h{i}")
        net.add_link(f"h{i}", "hub", latency=0.005)


class SimTransportHarness(VirtualTimeHarness, TransportHarness):
    """The simulator's stream transport: each ``make()`` is a new host on a star."""

    listen_addr = "/memory/4001"
    hosts = 64

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        self._next = 0

        async def wrapped() -> _T:
            _star(self.simulation, self.hosts)
            return await main()

        return super().run(wrapped)

    def make(self) -> Transport:
        host = f"h{self._next}"
        self._next += 1
        return SimTransport(self.simulation.network, host)

    def unreachable_addr(self) -> str:
        return str(sim_multiaddr(self.simulation.network.host(f"h{self.hosts - 1}").number, 9))


class QuicTransportHarness(TransportHarness):
    """The QUIC transport on loopback UDP (its connections bring their own streams)."""

    listen_addr = "/ip4/127.0.0.1/udp/0/quic-v1"
    backpressure_bytes = 12 * 1024 * 1024  # above the 4 MiB stream window

    def make(self) -> Transport:
        return QuicTransport(self.config())

    def unreachable_addr(self) -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"/ip4/127.0.0.1/udp/{port}/quic-v1"

    def config(self) -> NetworkConfig:
        # Nobody answers at the unreachable address: give up on it soon.
        return NetworkConfig(keepalive_interval=0, close_timeout=0.5, dial_timeout=1.0)


class SimQuicTransportHarness(SimTransportHarness):
    """The QUIC transport over the simulator's datagrams (virtual time)."""

    listen_addr = "/memory/4001/quic-v1"
    backpressure_bytes = 12 * 1024 * 1024

    def make(self) -> Transport:
        host = f"h{self._next}"
        self._next += 1
        return sim_quic_transport(self.simulation.network, host, self.config())

    def unreachable_addr(self) -> str:
        return super().unreachable_addr() + "/quic-v1"

    def config(self) -> NetworkConfig:
        return NetworkConfig(keepalive_interval=0, close_timeout=0.5, dial_timeout=2.0)


class NoiseHarness(VirtualTimeHarness, SecurityHarness):
    """The Noise security transport."""

    def make(self) -> SecurityTransport:
        return NoiseSecurity(self.config())


class YamuxHarness(VirtualTimeHarness, MuxerHarness):
    """The yamux stream muxer."""

    def make(self) -> StreamMuxer:
        return Yamux()


class TcpNodeHarness(NodeHarness):
    """Nodes with TCP (+ Noise + yamux) on loopback."""

    def make_node(self, name: str, **kwargs: Any) -> Node:
        config = kwargs.setdefault("config", self.config())
        return Node(transports=[TcpTransport(config)], listen=[self.listen_addr()], **kwargs)

    def listen_addr(self) -> str:
        return "/ip4/127.0.0.1/tcp/0"


class SimNodeHarness(VirtualTimeHarness, NodeHarness):
    """Nodes on the simulator; supports partitions."""

    @classmethod
    def inside(cls, simulation: Simulation) -> SimNodeHarness:
        """A node factory for a simulation another harness is already running."""
        nodes = cls()
        nodes.simulation = simulation
        simulation.network.add_host("hub")
        return nodes

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        async def wrapped() -> _T:
            _star(self.simulation, 16)
            return await main()

        return super().run(wrapped)

    def make_node(self, name: str, **kwargs: Any) -> Node:
        sim = self.simulation
        if all(host.name != name for host in sim.network.hosts):
            sim.network.add_host(name)
            sim.network.add_link(name, "hub", latency=0.005)
        kwargs.setdefault("config", self.config())
        kwargs.setdefault("key", KeyPair.generate(sim.entropy_source(name)))
        kwargs.setdefault("listen", [self.listen_addr()])
        return Node(
            transports=[self.transport_for(name)],
            entropy=sim.entropy_source(f"{name}/node"),
            **kwargs,
        )

    def transport_for(self, host: str) -> Transport:
        """The transport of the node on simulated ``host`` (simulated TCP-like streams)."""
        return SimTransport(self.simulation.network, host)

    def listen_addr(self) -> str:
        return "/memory/4001"

    def partition(self, a: str, b: str) -> Any:
        return self.simulation.network.partition([a])

    def heal(self, handle: Any) -> None:
        self.simulation.network.heal(handle)


class StaticFilesHarness(RouterHarness):
    """The built-in static file service on a temporary folder with two files."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="switchy-conformance-")
        root = Path(self._dir.name)
        (root / "a.txt").write_bytes(b"alpha")
        (root / "b.bin").write_bytes(bytes(range(256)) * 100)

    def services(self) -> list[Service]:
        return [StaticFiles(self._dir.name)]

    def good_requests(self) -> list[tuple[str, str, bytes]]:
        return [("GET", "/files", b""), ("GET", "/files/a.txt", b""), ("GET", "/files/b.bin", b"")]


class SimQuicNodeHarness(SimNodeHarness):
    """Nodes on the simulator connected by QUIC over simulated datagrams."""

    def transport_for(self, host: str) -> Transport:
        return sim_quic_transport(self.simulation.network, host, self.config())

    def listen_addr(self) -> str:
        return "/memory/4001/quic-v1"


class RelayNodeHarness(SimNodeHarness):
    """Nodes reachable only through a circuit relay (v2) on the simulated network.

    Each node listens on ``…/p2p/<relay>/p2p-circuit`` and nowhere else, so every
    connection the node suite makes is relayed (Noise + yamux end to end).
    """

    relayed = True

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        async def with_relay() -> _T:
            unlimited = RelayConfig(limit_data=0, limit_duration=0)
            relay = SimNodeHarness.make_node(self, "relay", services=[RelayService(unlimited)])
            async with relay:
                self._relay_addr = relay.full_addrs[0]
                return await main()

        return super().run(with_relay)

    def make_node(self, name: str, **kwargs: Any) -> Node:
        kwargs["services"] = [RelayTransport([self._relay_addr]), *kwargs.get("services", [])]
        kwargs.setdefault("listen", [f"{self._relay_addr}/p2p-circuit"])
        return super().make_node(name, **kwargs)


class RelayQuicNodeHarness(RelayNodeHarness, SimQuicNodeHarness):
    """Nodes reachable only through a circuit relay whose legs are QUIC (simulated).

    The end-to-end Noise + yamux connection runs over QUIC streams of the relay's
    connections: where a cancelled write once cut Noise frames.
    """


class RegistryDiscoveryHarness(DiscoveryHarness):
    """The name-registry backend, with one registry node on the simulated network."""

    async def setup(self, nodes: SimNodeHarness) -> None:
        self._registry = nodes.make_node("registry", services=[RegistryService()])
        await self._registry.start()

    def make_backend(self) -> DiscoveryBackend:
        return RegistryBackend([self._registry.full_addrs[0]])

    async def teardown(self) -> None:
        await self._registry.close()


class SimNameDiscoveryHarness(DiscoveryHarness):
    """The simulator's name service (names are not owned)."""

    owns_names = False

    def make_backend(self) -> DiscoveryBackend:
        return SimNameBackend(self.simulation.names)
