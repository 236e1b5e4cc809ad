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
import json
import os
from pathlib import Path

import pytest

from switchy.protocols.dcutr import DCUtRConfig, DCUtRService, PunchEvent, Role
from switchy.protocols.identify import IdentifyService
from switchy.protocols.ping import PingService, ping
from switchy.stack.node import Node
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport
from switchy.transports.tcp import TcpTransport
from tests.interop.harness import PEER_SCRIPT, run_peer

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


def test_pylibp2p_as_b_upgrades_our_relayed_dial(interop_python: Path) -> None:
    """We dial py-libp2p through our relay (we are ``A``); py-libp2p accepted the relayed
    connection, so it is ``B``: its auto-drive loop opens ``/libp2p/dcutr``, we answer
    CONNECT and dial at SYNC as the client.  Loopback: the roles and the exchange, not NAT
    traversal.  We do not listen: py-libp2p would first dial our (loopback, so public to
    it) listen address itself, the spec's unilateral upgrade, and never punch; so our
    CONNECT carries no address and py-libp2p's own dial has nothing to aim at (it gives
    up at once), while ours at SYNC reaches its listener."""

    async def main() -> None:
        events: list[PunchEvent] = []
        svc = DCUtRService(DCUtRConfig(is_public=lambda _a: True), on_event=events.append)
        relay = Node(
            transports=[TcpTransport()],
            services=[IdentifyService(), RelayService(RelayConfig(limit_data=0))],
            listen=[LOCAL],
        )
        a = Node(
            transports=[TcpTransport()],
            services=[IdentifyService(), PingService(), RelayTransport(), svc],
        )
        async with relay, a:
            proc = await asyncio.create_subprocess_exec(
                str(interop_python),
                str(PEER_SCRIPT),
                "dcutr-listen",
                str(relay.full_addrs[0]),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            assert proc.stdout is not None and proc.stdin is not None
            try:
                info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
                relayed = await a.connect(info["addrs"][0])
                assert relayed.is_limited
                peer = relayed.remote_peer
                up = asyncio.Event()
                a.on_connection_event(
                    lambda e: up.set() if e.peer == peer and not e.connection.is_limited else None
                )
                if not any(not c.is_limited for c in a.connections(peer)):
                    await asyncio.wait_for(up.wait(), 30)
                direct = next(c for c in a.connections(peer) if not c.is_limited)
                assert direct.is_initiator  # A is the client of the direct connection
                assert await ping(a, peer)
                line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
                assert line == {"direct": str(a.peer_id)}
            finally:
                proc.stdin.close()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        ok = [e for e in events if e.role is Role.A and e.kind == "succeeded"]
        assert ok and ok[0].attempt == 1, events  # the exchange, not a plain dial, made it

    asyncio.run(asyncio.wait_for(main(), 120))
