"""The conformance suite: pytest suites that judge any transport, security layer,
stream muxer or node set-up built for this stack.

Suites (modules of this package, each needing one harness fixture):

* ``test_transport`` — ``transport_harness`` → :class:`TransportHarness`;
* ``test_security`` — ``security_harness`` → :class:`SecurityHarness`;
* ``test_muxer`` — ``muxer_harness`` → :class:`MuxerHarness`;
* ``test_node`` — ``node_harness`` → :class:`NodeHarness` (message integrity,
  connection lifecycle, the protocol-handler contract, partitions on the simulator);
* ``test_router`` — ``router_harness`` → :class:`RouterHarness`: your router services
  (good requests answer 2xx, hostile ones never crash or hang a handler) and the
  routing contract itself (a stateful model test of registration and matching);
* ``test_discovery`` — ``discovery_harness`` → :class:`DiscoveryHarness`: register,
  resolve, connect by name, unknown names, names of any shape, many names at once,
  and (where names are owned) no take-over of a live name;
* ``test_remote`` — ``remote_harness`` → :class:`RemotePeerHarness`: a running peer of
  any implementation (ours, py-libp2p, …) that speaks ping and echo, dialed by our node.

Using it on your own part: write a module with the fixture(s), e.g.
``my_fixtures.py``::

    import pytest
    from switchy.stack.conformance import TransportHarness

    class MyHarness(TransportHarness):
        listen_addr = "/ip4/127.0.0.1/tcp/0"
        def make(self): return MyTransport()
        def unreachable_addr(self): return "/ip4/127.0.0.1/tcp/9"

    @pytest.fixture
    def transport_harness(): return MyHarness()

and run ``pytest --pyargs switchy.stack.conformance -p my_fixtures`` (with ``my_fixtures``
importable).  Suites without a fixture are skipped.  A failure's message starts
with ``contract '<name>' broken:`` and says what happened.

Harnesses run each test in virtual time on the simulator's event loop unless
they override :meth:`Harness.run` (real sockets must: see
:class:`TcpTransportHarness`).  :mod:`switchy.stack.conformance.strategies` has the
hypothesis strategies the suites use.
"""

from __future__ import annotations

from switchy.stack.conformance._util import ContractViolation
from switchy.stack.conformance.harness import (
    DiscoveryHarness,
    Harness,
    MuxerHarness,
    NodeHarness,
    NoiseHarness,
    QuicTransportHarness,
    RegistryDiscoveryHarness,
    RelayNodeHarness,
    RemotePeerHarness,
    RouterHarness,
    SecurityHarness,
    SimNameDiscoveryHarness,
    SimNodeHarness,
    SimQuicNodeHarness,
    SimQuicTransportHarness,
    SimTransportHarness,
    StaticFilesHarness,
    SwitchyRemoteHarness,
    TcpNodeHarness,
    TcpTransportHarness,
    TransportHarness,
    YamuxHarness,
)

__all__ = [
    "ContractViolation",
    "DiscoveryHarness",
    "Harness",
    "MuxerHarness",
    "NodeHarness",
    "NoiseHarness",
    "QuicTransportHarness",
    "RegistryDiscoveryHarness",
    "RelayNodeHarness",
    "RemotePeerHarness",
    "RouterHarness",
    "SecurityHarness",
    "SimNameDiscoveryHarness",
    "SimNodeHarness",
    "SimQuicNodeHarness",
    "SimQuicTransportHarness",
    "SimTransportHarness",
    "StaticFilesHarness",
    "SwitchyRemoteHarness",
    "TcpNodeHarness",
    "TcpTransportHarness",
    "TransportHarness",
    "YamuxHarness",
]
