"""Deterministic network simulator: virtual time, a network graph, faults on demand.

Same seed and scenario → the same run, event for event.  The pieces:

* :class:`Simulation` / :func:`run_simulation` — the run: virtual-time loop,
  network, name service, trace and the seeded randomness;
* :class:`VirtualTimeLoop` — an asyncio loop whose clock jumps over idle time;
* :class:`Network`, :class:`Host`, :class:`Link`, :class:`Partition` — the graph
  and its faults (loss, jitter, duplication, reordering, bandwidth, link
  up/down, partitions, crashes, holds);
* :class:`SimConnection` / :class:`SimListener` — reliable ordered streams;
  :class:`SimDatagramTransport` — unreliable datagrams;
* :class:`SimTransport` — the stack transport (``/memory/<host*100000+port>``);
* :class:`NameService`, :class:`TraceRecorder`, :class:`SimConfig`;
* :meth:`Network.add_nat` → :class:`NatBox` — NAT and firewall boxes
  (:class:`NatConfig`, presets :data:`NAT_PRESETS`; the pure state machine is
  :class:`NatTable`; see ``specs/simulator-nat.md``).

Modules: :mod:`switchy.transports.sim.simulation`, :mod:`switchy.transports.sim.loop`,
:mod:`switchy.transports.sim.network`, :mod:`switchy.transports.sim.stream`,
:mod:`switchy.transports.sim.datagram`, :mod:`switchy.transports.sim.transport`,
:mod:`switchy.transports.sim.names`, :mod:`switchy.transports.sim.trace`,
:mod:`switchy.transports.sim.config`, :mod:`switchy.transports.sim.nat`,
:mod:`switchy.transports.sim.natbox`, :mod:`switchy.transports.sim.report` (a trace as an
HTML page, ``switchy sim --report``).  Ready-made scenarios of the whole stack (what
``switchy sim`` runs) are in :mod:`switchy.scenarios`.
"""

from __future__ import annotations

from switchy.stack.errors import SimulationDeadlock
from switchy.transports.sim.config import SimConfig
from switchy.transports.sim.datagram import SimDatagramTransport
from switchy.transports.sim.loop import RealNetworkForbidden, VirtualTimeLoop
from switchy.transports.sim.names import NameRecord, NameService
from switchy.transports.sim.nat import NAT_PRESETS, NatConfig, NatTable, nat_preset
from switchy.transports.sim.natbox import NatBox
from switchy.transports.sim.network import Host, Link, Network, Partition, sim_multiaddr
from switchy.transports.sim.simulation import Simulation, run_simulation
from switchy.transports.sim.stream import SimConnection, SimListener
from switchy.transports.sim.trace import HostCounters, LinkCounters, TraceEvent, TraceRecorder
from switchy.transports.sim.transport import SimTransport, parse_sim_multiaddr

__all__ = [
    "NAT_PRESETS",
    "Host",
    "HostCounters",
    "Link",
    "LinkCounters",
    "NameRecord",
    "NameService",
    "NatBox",
    "NatConfig",
    "NatTable",
    "Network",
    "Partition",
    "RealNetworkForbidden",
    "SimConfig",
    "SimConnection",
    "SimDatagramTransport",
    "SimListener",
    "SimTransport",
    "Simulation",
    "SimulationDeadlock",
    "TraceEvent",
    "TraceRecorder",
    "VirtualTimeLoop",
    "nat_preset",
    "parse_sim_multiaddr",
    "run_simulation",
    "sim_multiaddr",
]
