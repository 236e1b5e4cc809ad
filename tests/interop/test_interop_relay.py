"""Circuit relay v2 against py-libp2p 0.8.1, which speaks the spec's protocol ids and messages.

Our relay client (reservation, CONNECT, stop) through a py-libp2p relay (the
reservation's voucher, a signed envelope made by py-libp2p, carries a Voucher
payload our codec reads), and a py-libp2p client through our relay to our node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from switchy.presets import default_node
from switchy.protocols.echo import echo
from switchy.protocols.ping import ping
from switchy.stack.codec import pb_fields
from switchy.stack.identity import PeerId
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport
from switchy.transports.relay.pb import decode_voucher
from switchy.transports.relay.voucher import VOUCHER_PAYLOAD_TYPE
from tests.interop.harness import pylibp2p_listener, run_peer

pytestmark = pytest.mark.interop


def test_our_peers_connect_through_a_pylibp2p_relay(interop_python: Path) -> None:
    async def main() -> None:
        async with pylibp2p_listener(relay=True) as relay, default_node() as b, default_node() as a:
            relay_id = PeerId.from_string(relay.peer_id)
            raddr = next(x for x in relay.addrs if "/tcp/" in x)
            if "/p2p/" not in raddr:
                raddr += f"/p2p/{relay.peer_id}"
            (addr,) = await b.listen(f"{raddr}/p2p-circuit")
            (listener,) = next(t for t in b.transports if isinstance(t, RelayTransport)).listeners
            rsv = listener.reservation
            assert rsv is not None and rsv.relay == relay_id and rsv.voucher is not None
            # py-libp2p's voucher: an envelope (payload type 0x0302) around our Voucher codec.
            fields = dict(pb_fields(rsv.voucher))
            assert fields[2] == VOUCHER_PAYLOAD_TYPE
            payload = fields[3]
            assert isinstance(payload, bytes)
            voucher = decode_voucher(payload)
            assert (voucher.relay, voucher.peer) == (relay_id, b.peer_id)

            conn = await a.connect(f"{addr}/p2p/{b.peer_id}")
            assert conn.is_limited and conn.remote_peer == b.peer_id
            assert len(await ping(a, b.peer_id, count=3)) == 3
            data = bytes(i % 251 for i in range(300_000))
            assert await echo(a, b.peer_id, data) == data

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_pylibp2p_client_connects_through_our_relay(interop_python: Path) -> None:
    async def main() -> None:
        relay_service = RelayService(RelayConfig(limit_data=0))
        async with (
            default_node(services=[relay_service], listen=["/ip4/127.0.0.1/tcp/0"]) as r,
            default_node() as b,
        ):
            (addr,) = await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            result = await run_peer("circuit-ping", f"{addr}/p2p/{b.peer_id}", "-c", "3")
            assert len(result["rtts_us"]) == 3
            # Open or already ended, depending on how fast the client's exit is noticed.
            (circuit,) = [*relay_service.circuits, *relay_service.history]
            assert circuit.dst == b.peer_id and circuit.forwarded["src"] > 0

    asyncio.run(asyncio.wait_for(main(), 120))
