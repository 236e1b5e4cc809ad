"""Test helper: a node on one simulated host, over QUIC or over TCP-like streams."""

from __future__ import annotations

from typing import Any, Final

from switchy.stack.node import Node, ProtocolService
from switchy.transports.quic.sim import sim_quic_transport
from switchy.transports.sim import SimTransport, Simulation

#: The transports :func:`sim_node` builds nodes on: QUIC, or streams + Noise + yamux.
KINDS: Final = ("quic", "tcp")


def sim_node(sim: Simulation, host: str, kind: str, *services: ProtocolService, **kw: Any) -> Node:
    """A node on ``host`` serving ``services``, listening on the simulated ``kind``."""
    if kind == "quic":
        transport: Any = sim_quic_transport(sim.network, host)
        listen = "/memory/4001/quic-v1"
    else:
        transport = SimTransport(sim.network, host)
        listen = "/memory/0"
    return Node(
        transports=[transport],
        services=list(services),
        entropy=sim.entropy_source(host),
        listen=[listen],
        **kw,
    )
