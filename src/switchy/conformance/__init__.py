"""The conformance suites of the whole stack, and the harnesses of the project's own parts.

The core ships the suites of the core's contracts in :mod:`switchy.stack.conformance`
(transport, security, muxer, node); this package, above the core, the transports and
the protocols, adds:

* the suites of the protocols: ``test_router`` (``router_harness`` →
  :class:`RouterHarness`: your router services and the routing contract),
  ``test_discovery`` (``discovery_harness`` → :class:`DiscoveryHarness`: register,
  resolve, connect by name, unknown names, names of any shape, many at once, no
  take-over of a live name) and ``test_remote`` (``remote_harness`` →
  :class:`RemotePeerHarness`: a running peer of any implementation that speaks ping
  and echo, dialed by our node);
* :class:`VirtualTimeHarness`, to run a suite in virtual time on the simulator;
* the built-in harnesses (:class:`TcpTransportHarness`, :class:`NoiseHarness`,
  :class:`YamuxHarness`, :class:`SimNodeHarness`, ...), the ones the project's tests
  run and examples to copy.

Every name of :mod:`switchy.stack.conformance` is also here, so one import serves.  Run
every suite with ``pytest --pyargs switchy.stack.conformance switchy.conformance -p
my_fixtures`` (see the README's "Conformance suite").
"""

from __future__ import annotations

from switchy.conformance.harness import (
    DiscoveryHarness,
    NoiseHarness,
    QuicTransportHarness,
    RegistryDiscoveryHarness,
    RelayNodeHarness,
    RelayQuicNodeHarness,
    RemotePeerHarness,
    RouterHarness,
    SimNameDiscoveryHarness,
    SimNodeHarness,
    SimQuicNodeHarness,
    SimQuicTransportHarness,
    SimTransportHarness,
    StaticFilesHarness,
    SwitchyRemoteHarness,
    TcpNodeHarness,
    TcpTransportHarness,
    VirtualTimeHarness,
    YamuxHarness,
)
from switchy.stack.conformance import (
    ContractViolation,
    Harness,
    MuxerHarness,
    NodeHarness,
    SecurityHarness,
    TransportHarness,
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
    "RelayQuicNodeHarness",
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
    "VirtualTimeHarness",
    "YamuxHarness",
]
