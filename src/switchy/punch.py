"""Hole punching in the simulator: two nodes behind NAT presets meet through a relay.

:func:`punch_pair` builds one run (a relay in the "internet", ``A`` and ``B``
each behind its own NAT box, ``A`` dials ``B`` through the relay, DCUtR does
the rest) and reports what happened; :data:`PUNCH_PRESETS` and
:func:`expected_direct` give the matrix and its expectation, which
``switchy sim --scenario punch`` checks.

Why each pair must (or must not) become direct, in RFC 4787 terms (``A`` dialed
the relayed connection and is the client, ``B`` accepted it):

* ``open`` on either side: a plain dial gets through (``B`` first dials ``A``'s
  public address; else ``A``'s dial reaches ``B``'s listener).
* Both endpoint-independent mapping (``full_cone``, ``address_restricted``,
  ``port_restricted``, ``firewall`` (no translation), ``cgnat`` (two EIM
  layers)): the address the relay observed is the one the peer sees, each
  side's outbound packet opens its filter for the other: direct.
* ``symmetric`` (address-and-port-dependent mapping, random ports) on both
  sides: each packet toward the peer leaves from a new mapping the peer never
  learned: relayed.
* ``symmetric`` ``A`` with ``B`` of endpoint- or address-dependent filtering
  (``full_cone``, ``address_restricted``): ``A``'s packet from its new mapping
  passes ``B``'s filter (``B`` sent to ``A``'s host) and reaches ``B``'s
  listener, where ``B`` accepts it as the server it is meant to be: direct.
  With ``B`` port-dependent filtering (``port_restricted``, ``firewall``,
  ``cgnat``) the new port is filtered: relayed.
* ``symmetric`` ``B`` with any NATed ``A``: ``A`` dials ``B``'s observed
  mapping, which ``B``'s box keeps for the relay only; ``B``'s packets leave
  from a mapping ``A`` never heard of (and over TCP would reach ``A``'s
  listener with both sides expecting to be the server): relayed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

from multiaddr import Multiaddr

from switchy.protocols.dcutr import DCUtRConfig, DCUtRService, PunchEvent
from switchy.protocols.identify import IdentifyService
from switchy.protocols.ping import PingService, ping
from switchy.scenarios import NAT_SCENARIO_PRESETS
from switchy.stack.errors import P2PError
from switchy.stack.mux import MuxedConnection
from switchy.stack.node import Node
from switchy.transports.quic.sim import sim_quic_transport
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport
from switchy.transports.sim.simulation import Simulation
from switchy.transports.sim.transport import SimTransport

__all__ = ["PUNCH_PRESETS", "PUNCH_TRANSPORTS", "AfterPunch", "expected_direct", "punch_pair"]

#: ``after(a, b, relayed, direct)``: run once a pair is direct, before the grace period
#: ends (the relayed connection is still open); its dict joins the result.
AfterPunch = Callable[[Node, Node, MuxedConnection, MuxedConnection], Awaitable[dict[str, Any]]]

#: The NAT presets of the matrix (the ``nat`` scenario's list).
PUNCH_PRESETS: Final = NAT_SCENARIO_PRESETS
#: The transports of the matrix.
PUNCH_TRANSPORTS: Final = ("tcp", "quic")
_EIM_PORT_FILTERED: Final = frozenset({"port_restricted", "firewall", "cgnat"})
_PORT: Final = 4001


def expected_direct(a: str, b: str) -> bool:
    """Whether ``A`` behind preset ``a`` and ``B`` behind ``b`` must end direct (module
    docstring); the same for TCP and QUIC."""
    if "open" in (a, b):
        return True
    if b == "symmetric":
        return False
    if a == "symmetric":
        return b not in _EIM_PORT_FILTERED
    return True


def _node(sim: Simulation, host: str, kind: str, *services: Any) -> Node:
    if kind == "quic":
        transport: Any = sim_quic_transport(sim.network, host)
        listen = f"/memory/{_PORT}/quic-v1"
    else:
        transport = SimTransport(sim.network, host, reuse_port=True)
        listen = f"/memory/{_PORT}"
    return Node(
        transports=[transport],
        services=[IdentifyService(), PingService(), *services],
        entropy=sim.entropy_source(host),
        listen=[listen],
    )


async def punch_pair(
    sim: Simulation,
    a_preset: str,
    b_preset: str,
    kind: str,
    *,
    wan_latency: float = 0.005,
    loss: float = 0.0,
    prefix: str = "",
    after: AfterPunch | None = None,
) -> dict[str, Any]:
    """One run: ``A`` behind ``a_preset`` dials ``B`` behind ``b_preset`` through a relay.

    Returns ``direct`` (whether a direct connection is up and carries a ping),
    ``attempts``, ``reason`` of the last failure, ``time_to_direct`` (virtual
    seconds from the relayed connection to the direct one, as ``B`` saw it),
    ``rtt_relayed`` and
    ``rtt_direct`` (ping round trips), ``relayed_works`` (a ping over the relayed
    connection after a failure), ``new_streams_direct`` (a new stream goes over the
    direct connection) and ``relayed_closed`` (the relayed connection was closed
    after the grace period).  ``wan_latency`` is each NAT box's uplink latency and
    ``loss`` the loss rate of every link made here.  ``after`` measures more on a
    direct pair (:data:`AfterPunch`).
    """
    net = sim.network
    isp, relay_host, a_host, b_host = (f"{prefix}{n}" for n in ("isp", "relay", "a", "b"))
    net.add_hosts([isp, relay_host])
    net.add_link(relay_host, isp, latency=0.02, loss=loss)
    for box, host, preset in (("nat-a", a_host, a_preset), ("nat-b", b_host, b_preset)):
        net.add_nat(
            f"{prefix}{box}",
            lan=[host],
            wan=isp,
            preset=preset,
            wan_latency=wan_latency,
            loss=loss,
            carrier=f"{prefix}{box}-cgn" if preset == "cgnat" else None,
        )
    events: list[PunchEvent] = []
    config = DCUtRConfig(is_public=net.is_public_address)
    unlimited = RelayConfig(limit_data=0, limit_duration=0)
    relay = _node(sim, relay_host, kind, RelayService(unlimited))
    a = _node(sim, a_host, kind, RelayTransport(), DCUtRService(config, on_event=events.append))
    b = _node(sim, b_host, kind, RelayTransport(), DCUtRService(config, on_event=events.append))
    result: dict[str, Any] = {"a": a_preset, "b": b_preset, "transport": kind}
    async with relay, a, b:
        for n in (a, b):
            await n.connect(relay.full_addrs[0])
            ident = next(s for s in n.services if isinstance(s, IdentifyService))
            await ident.wait_identified(relay.peer_id, 10)
        (circuit,) = await b.listen(f"{relay.full_addrs[0]}/p2p-circuit")
        relayed = await a.connect(Multiaddr(f"{circuit}/p2p/{b.peer_id}"))
        t0 = asyncio.get_running_loop().time()
        result["rtt_relayed"] = round((await ping(a, b.peer_id))[0], 6)
        svc = next(s for s in b.services if isinstance(s, DCUtRService))
        # Wait until B's upgrade failed for good, or both ends hold the direct connection.
        for _ in range(600):
            failed = any(e.final for e in events if e.peer == a.peer_id)
            both = a.connections(b.peer_id) and all(
                any(not c.is_limited for c in n.connections(p))
                for n, p in ((a, b.peer_id), (b, a.peer_id))
            )
            if not svc.running and (failed or both):
                break
            await asyncio.sleep(0.05)
        direct = next((c for c in a.connections(b.peer_id) if not c.is_limited), None)
        b_events = [e for e in events if e.peer == a.peer_id]
        result["attempts"] = max((e.attempt for e in b_events), default=0)
        ok = [e for e in b_events if e.kind == "succeeded"]
        fails = [e for e in b_events if e.kind == "failed"]
        result["reason"] = fails[-1].reason if fails and direct is None else ""
        result["direct"] = direct is not None
        if ok:
            first = min(ok, key=lambda e: e.elapsed)
            result["time_to_direct"] = round(first.elapsed, 6)
        if direct is not None:
            try:
                result["rtt_direct"] = round((await ping(a, b.peer_id))[0], 6)
                stream = await a.open_stream(b.peer_id, "/ipfs/ping/1.0.0")
                result["new_streams_direct"] = not stream.muxed_conn.is_limited
                await stream.reset()
            except P2PError as exc:
                result["direct"] = False
                result["reason"] = f"direct connection does not carry a ping: {exc}"
            if after is not None and result["direct"]:
                start = asyncio.get_running_loop().time()
                result.update(await after(a, b, relayed, direct))
                spent = asyncio.get_running_loop().time() - start
            else:
                spent = 0.0
            await asyncio.sleep(max(0.0, config.grace_period + 1.0 - spent))
            result["relayed_closed"] = relayed.is_closed
        else:
            try:
                await ping(a, b.peer_id)
                result["relayed_works"] = not relayed.is_closed
            except P2PError:
                result["relayed_works"] = False
        result["_t0"] = t0
    result.pop("_t0")
    return result
