"""Harnesses: how the conformance suites build the implementation under test.

A third party subclasses one harness per kind of part and returns it from a
pytest fixture (see :mod:`switchy.stack.conformance`):

* :class:`TransportHarness` — ``make()`` returns a fresh :class:`~switchy.stack.transport.Transport`;
* :class:`SecurityHarness` — ``make()`` returns a :class:`~switchy.stack.security.SecurityTransport`;
* :class:`MuxerHarness` — ``make()`` returns a :class:`~switchy.stack.mux.StreamMuxer`;
* :class:`NodeHarness` — ``make_node(**kw)`` returns a :class:`~switchy.stack.node.Node` and
  says how to reach it.

Every harness runs the suite's coroutines through :meth:`Harness.run`.  The
default uses a fresh :class:`~switchy.transports.sim.Simulation` event loop (virtual
time: the suite's "this must not happen within N seconds" checks cost no wall
time); harnesses of real-socket transports override it with :func:`asyncio.run`
where those checks wait :attr:`Harness.patience` real
seconds, and only when the implementation misbehaves.

The built-in harnesses at the end of this module are the ones the project's
own tests use, and examples to copy.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from switchy.stack.config import NetworkConfig
from switchy.stack.identity import KeyPair

if TYPE_CHECKING:
    from switchy.protocols.discovery.backends import DiscoveryBackend
    from switchy.protocols.router import Router, Service
    from switchy.stack.mux import StreamMuxer
    from switchy.stack.node import Node
    from switchy.stack.security import SecurityTransport
    from switchy.stack.transport import Transport
    from switchy.transports.sim import Simulation

__all__ = [
    "DiscoveryHarness",
    "Harness",
    "MuxerHarness",
    "NodeHarness",
    "NoiseHarness",
    "QuicTransportHarness",
    "SecurityHarness",
    "SimNodeHarness",
    "SimTransportHarness",
    "TcpNodeHarness",
    "TcpTransportHarness",
    "TransportHarness",
    "YamuxHarness",
]

_T = TypeVar("_T")


class Harness:
    """Common part: how coroutines run, and how long "never" is."""

    #: Seconds a check waits for something that must happen.
    patience: float = 10.0
    #: Seconds a check watches for something that must NOT happen (e.g. a write that
    #: must block); short for real-time harnesses, where it is spent on every run.
    quiet_period: float = 10.0
    #: Seed of the simulation :meth:`run` creates (virtual harnesses).
    seed: int = 1

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``main()`` to completion on a fresh event loop and return its result."""
        from switchy.transports.sim import SimConfig, Simulation

        with Simulation(self.seed, config=SimConfig(default_packet_loss=0.0)) as sim:
            self.simulation = sim
            return sim.run(main)

    def config(self) -> NetworkConfig:
        """The NetworkConfig the suite passes to muxers and transports."""
        return NetworkConfig(keepalive_interval=0, close_timeout=0.5)


class TransportHarness(Harness):
    """Builds the transport under test."""

    #: Address the suite listens on (port 0 or the transport's equivalent).
    listen_addr: str = "/ip4/127.0.0.1/tcp/0"
    #: Bytes written to a peer that reads nothing: more than the transport may buffer.
    backpressure_bytes: int = 64 * 1024 * 1024

    @abc.abstractmethod
    def make(self) -> Transport:
        """A fresh transport, called inside :meth:`run` (one per simulated endpoint)."""

    @abc.abstractmethod
    def unreachable_addr(self) -> str:
        """An address :meth:`make`'s transport can dial but where nobody listens."""

    def unsupported_addr(self) -> str:
        """An address the transport must refuse with UnsupportedAddress."""
        return "/dns4/example.invalid/udp/1/webrtc-direct"


class SecurityHarness(Harness):
    """Builds the security transport under test; the raw link is a memory pipe."""

    @abc.abstractmethod
    def make(self) -> SecurityTransport:
        """A fresh security transport (called inside :meth:`run`)."""


class MuxerHarness(Harness):
    """Builds the stream muxer under test; it runs over a memory pipe."""

    @abc.abstractmethod
    def make(self) -> StreamMuxer:
        """A fresh muxer (called inside :meth:`run`)."""


class NodeHarness(Harness):
    """Builds nodes with the parts under test."""

    #: Connections between the nodes go through a relay (and must say so: ``is_limited``).
    relayed: bool = False

    @abc.abstractmethod
    def make_node(self, name: str, **kwargs: Any) -> Node:
        """A node (not started); ``kwargs`` go to :class:`~switchy.stack.node.Node`."""

    @abc.abstractmethod
    def listen_addr(self) -> str:
        """Where a node made by :meth:`make_node` listens."""

    def partition(self, a: str, b: str) -> Any:
        """Cut the network between the nodes named ``a`` and ``b``; None when unsupported."""
        return None

    def heal(self, handle: Any) -> None:
        """Undo :meth:`partition`."""


class RemotePeerHarness(Harness):
    """A running remote peer (any implementation) that speaks ping and ``/echo/1.0.0``.

    The suite dials it from one of our nodes; it checks behaviour both
    implementations must share (ping, echo integrity, concurrent streams, unknown
    protocols, reconnecting, a wrong expected peer id).
    """

    patience = 20.0
    quiet_period = 0.5

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        async def wrapped() -> _T:
            return await main()

        return asyncio.run(wrapped())

    @abc.abstractmethod
    def remote(self) -> AbstractAsyncContextManager[str]:
        """Start the remote peer; yield its full address (with ``/p2p/<id>``); stop it."""

    def make_local(self) -> Node:
        """Our node that dials the remote (default: TCP + Noise + yamux)."""
        from switchy.stack.node import Node

        return Node.default(config=self.config())


class SwitchyRemoteHarness(RemotePeerHarness):
    """Our own node as the remote peer (the reference the other implementations meet)."""

    @asynccontextmanager
    async def remote(self) -> AsyncIterator[str]:
        from switchy.protocols.echo import EchoService
        from switchy.protocols.ping import PingService
        from switchy.stack.node import Node

        node = Node(
            services=[PingService(), EchoService()],
            config=self.config(),
            listen=["/ip4/127.0.0.1/tcp/0"],
        )
        async with node:
            yield str(node.full_addrs[0])


class RouterHarness(Harness):
    """The router part under test: services (route handlers) and optionally the Router.

    The suite mounts :meth:`services` on :meth:`make_router`'s router, serves it on a
    simulated node and sends requests: :meth:`good_requests` must answer 2xx; random
    hostile requests must never crash a handler (no 500) nor hang.
    """

    def make_router(self) -> Router:
        """A fresh, empty router (default: :class:`switchy.protocols.router.Router`)."""
        from switchy.protocols.router import Router

        return Router()

    def services(self) -> list[Service]:
        """The services under test (fresh instances each call)."""
        return []

    def good_requests(self) -> list[tuple[str, str, bytes]]:
        """(method, path, body) requests the services must answer with a 2xx status."""
        return []


class DiscoveryHarness(Harness):
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


class _RealTime(Harness):
    patience = 5.0
    quiet_period = 0.5

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        async def wrapped() -> _T:
            return await main()

        return asyncio.run(wrapped())


class TcpTransportHarness(_RealTime, TransportHarness):
    """The TCP transport on loopback."""

    def make(self) -> Transport:
        from switchy.transports.tcp import TcpTransport

        return TcpTransport(self.config())

    def unreachable_addr(self) -> str:
        import socket

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


class SimTransportHarness(TransportHarness):
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
        from switchy.transports.sim import SimTransport

        host = f"h{self._next}"
        self._next += 1
        return SimTransport(self.simulation.network, host)

    def unreachable_addr(self) -> str:
        from switchy.transports.sim import sim_multiaddr

        return str(sim_multiaddr(self.simulation.network.host(f"h{self.hosts - 1}").number, 9))


class QuicTransportHarness(_RealTime, TransportHarness):
    """The QUIC transport on loopback UDP (its connections bring their own streams)."""

    listen_addr = "/ip4/127.0.0.1/udp/0/quic-v1"
    backpressure_bytes = 12 * 1024 * 1024  # above the 4 MiB stream window

    def make(self) -> Transport:
        from switchy.transports.quic import QuicTransport

        return QuicTransport(self.config())

    def unreachable_addr(self) -> str:
        import socket

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
        from switchy.transports.quic.sim import sim_quic_transport

        host = f"h{self._next}"
        self._next += 1
        return sim_quic_transport(self.simulation.network, host, self.config())

    def unreachable_addr(self) -> str:
        return super().unreachable_addr() + "/quic-v1"

    def config(self) -> NetworkConfig:
        return NetworkConfig(keepalive_interval=0, close_timeout=0.5, dial_timeout=2.0)


class NoiseHarness(SecurityHarness):
    """The Noise security transport."""

    def make(self) -> SecurityTransport:
        from switchy.stack.security.noise import NoiseSecurity

        return NoiseSecurity(self.config())


class YamuxHarness(MuxerHarness):
    """The yamux stream muxer."""

    def make(self) -> StreamMuxer:
        from switchy.stack.mux.yamux import Yamux

        return Yamux()


class TcpNodeHarness(_RealTime, NodeHarness):
    """Default nodes (TCP + Noise + yamux) on loopback."""

    def make_node(self, name: str, **kwargs: Any) -> Node:
        from switchy.stack.node import Node

        kwargs.setdefault("config", self.config())
        return Node(listen=[self.listen_addr()], **kwargs)

    def listen_addr(self) -> str:
        return "/ip4/127.0.0.1/tcp/0"


class SimNodeHarness(NodeHarness):
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
        from switchy.stack.node import Node

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
        from switchy.transports.sim import SimTransport

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
        import tempfile
        from pathlib import Path

        self._dir = tempfile.TemporaryDirectory(prefix="switchy-conformance-")
        root = Path(self._dir.name)
        (root / "a.txt").write_bytes(b"alpha")
        (root / "b.bin").write_bytes(bytes(range(256)) * 100)

    def services(self) -> list[Service]:
        from switchy.protocols.router.static import StaticFiles

        return [StaticFiles(self._dir.name)]

    def good_requests(self) -> list[tuple[str, str, bytes]]:
        return [("GET", "/files", b""), ("GET", "/files/a.txt", b""), ("GET", "/files/b.bin", b"")]


class SimQuicNodeHarness(SimNodeHarness):
    """Nodes on the simulator connected by QUIC over simulated datagrams."""

    def transport_for(self, host: str) -> Transport:
        from switchy.transports.quic.sim import sim_quic_transport

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
            from switchy.transports.relay import RelayConfig, RelayService

            unlimited = RelayConfig(limit_data=0, limit_duration=0)
            relay = SimNodeHarness.make_node(self, "relay", services=[RelayService(unlimited)])
            async with relay:
                self._relay_addr = relay.full_addrs[0]
                return await main()

        return super().run(with_relay)

    def make_node(self, name: str, **kwargs: Any) -> Node:
        from switchy.transports.relay import RelayTransport

        kwargs["services"] = [RelayTransport([self._relay_addr]), *kwargs.get("services", [])]
        kwargs.setdefault("listen", [f"{self._relay_addr}/p2p-circuit"])
        return super().make_node(name, **kwargs)


class RegistryDiscoveryHarness(DiscoveryHarness):
    """The name-registry backend, with one registry node on the simulated network."""

    async def setup(self, nodes: SimNodeHarness) -> None:
        from switchy.protocols.discovery.registry import RegistryService

        self._registry = nodes.make_node("registry", services=[RegistryService()])
        await self._registry.start()

    def make_backend(self) -> DiscoveryBackend:
        from switchy.protocols.discovery.backends import RegistryBackend

        return RegistryBackend([self._registry.full_addrs[0]])

    async def teardown(self) -> None:
        await self._registry.close()


class SimNameDiscoveryHarness(DiscoveryHarness):
    """The simulator's name service (names are not owned)."""

    owns_names = False

    def make_backend(self) -> DiscoveryBackend:
        from switchy.protocols.discovery.backends import SimNameBackend

        return SimNameBackend(self.simulation.names)
