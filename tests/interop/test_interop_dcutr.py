"""DCUtR against py-libp2p 0.8.1 (``libp2p.relay.circuit_v2.dcutr``), over TCP on loopback.

py-libp2p dials our node through our relay and runs its DCUtR; we accepted the
relayed connection, so we are ``B``: we open ``/libp2p/dcutr``, time CONNECT,
send SYNC, and both sides dial.  On loopback there is no NAT to punch, so this
checks the wire exchange and the roles (py-libp2p is the client of the direct
connection), not NAT traversal.  Loopback counts as public here, and our
unilateral dial is off so the exchange itself must make the connection.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from switchy.protocols.dcutr import DCUtRConfig, DCUtRService, PunchEvent, Role
from switchy.protocols.identify import IdentifyService
from switchy.protocols.ping import PingService
from switchy.stack.node import Node
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport
from switchy.transports.tcp import TcpTransport
from tests.interop.harness import run_peer

pytestmark = pytest.mark.interop

LOCAL = "/ip4/127.0.0.1/tcp/0"


def test_pylibp2p_dials_us_through_a_relay_and_dcutr_makes_it_direct(
    interop_python: Path,
) -> None:
    async def main() -> None:
        events: list[PunchEvent] = []
        svc = DCUtRService(
            DCUtRConfig(is_public=lambda _a: True, unilateral=False), on_event=events.append
        )
        relay = Node(
            transports=[TcpTransport()],
            services=[IdentifyService(), RelayService(RelayConfig(limit_data=0))],
            listen=[LOCAL],
        )
        b = Node(
            transports=[TcpTransport()],
            services=[IdentifyService(), PingService(), RelayTransport(), svc],
            listen=[LOCAL],
        )
        async with relay, b:
            (addr,) = await b.listen(f"{relay.full_addrs[0]}/p2p-circuit")
            result = await run_peer("dcutr", f"{addr}/p2p/{b.peer_id}", "-c", "2")
            assert result["direct"] is True, (result, events)
            assert len(result["rtts_us"]) == 2
            ok = [e for e in events if e.kind == "succeeded" and e.role is Role.B]
            assert ok and ok[0].attempt == 1, events
            conn = ok[0].connection
            assert conn is not None and not conn.is_limited and not conn.is_initiator

    asyncio.run(asyncio.wait_for(main(), 120))
