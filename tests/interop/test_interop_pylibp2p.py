"""Interop with py-libp2p (PyPI ``libp2p``), both directions: TCP + Noise + yamux, and QUIC-v1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from multiaddr import Multiaddr

from switchy.presets import default_node
from switchy.protocols.autonat import AutoNATService, Verdict, probe
from switchy.protocols.autonat.pb import V1Status
from switchy.protocols.echo import echo
from switchy.protocols.identify import IDENTIFY_PROTOCOL, IdentifyService, identify
from switchy.protocols.perf import perf
from switchy.protocols.ping import PING_PROTOCOL, ping
from switchy.stack.identity import KeyPair, PeerId
from switchy.stack.node import Node
from switchy.transports.tcp import TcpTransport
from tests.interop.harness import pylibp2p_listener, run_peer

pytestmark = pytest.mark.interop


def run(fn: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(fn(), 120)

    asyncio.run(bounded())


# --- py-libp2p dials us ------------------------------------------------------------------


def test_pylibp2p_pings_identifies_echoes_and_perfs_us(interop_python: Path) -> None:
    async def main() -> None:
        async with default_node(listen=["/ip4/127.0.0.1/tcp/0"]) as node:
            addr = str(node.full_addrs[0])
            r = await run_peer("ping", addr, "-c", "5")
            assert len(r["rtts_us"]) == 5
            r = await run_peer("identify", addr)
            assert r["protocol_version"] == "ipfs/0.1.0"
            assert r["agent_version"] == node.agent_version
            assert bytes.fromhex(r["public_key"]) == node.key.public_key.to_protobuf()
            assert {PING_PROTOCOL, IDENTIFY_PROTOCOL} <= set(r["protocols"])
            assert r["listen_addrs"] == [str(a) for a in node.listen_addrs]
            assert r["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")
            spr = r["signed_peer_record"]  # verified by py-libp2p's consume_envelope
            assert spr["peer_id"] == str(node.peer_id)
            assert spr["addrs"] == [str(a) for a in node.listen_addrs]
            r = await run_peer("echo", addr, "--size", "1000000")
            assert r["echoed"] == 1_000_000 and r["match"] is True
            r = await run_peer("perf", addr, "--upload", "5000000", "--download", "3000000")
            assert r["download_bytes"] == 3_000_000
            # py-libp2p identified itself to us as well (identify runs on every connection)
            assert len(node.peerstore.peers()) >= 1

    run(main)


# --- we dial py-libp2p -------------------------------------------------------------------


def test_we_ping_identify_echo_and_perf_pylibp2p(interop_python: Path) -> None:
    async def main() -> None:
        seed = bytes(range(32))
        async with pylibp2p_listener(seed) as peer, default_node() as node:
            expected = KeyPair.from_seed(seed).peer_id
            assert PeerId.from_string(peer.peer_id) == expected
            addr = next(a for a in peer.addrs if "/tcp/" in a)
            if "/p2p/" not in addr:
                addr += f"/p2p/{peer.peer_id}"
            rtts = await ping(node, addr, count=5)
            assert len(rtts) == 5
            info = await identify(node, expected)
            assert info.public_key == KeyPair.from_seed(seed).public_key
            assert PING_PROTOCOL in info.protocols
            assert info.observed_addr is not None
            conn = node.connections(expected)[0]
            assert info.observed_addr == conn.local_addr
            assert conn.security_protocol == "/noise" and conn.muxer_protocol == "/yamux/1.0.0"
            data = bytes(i % 253 for i in range(500_000))
            assert await echo(node, expected, data) == data
            result = await perf(node, expected, upload=4_000_000, download=2_000_000)
            assert result.download_bytes == 2_000_000
            svc = next(s for s in node.services if isinstance(s, IdentifyService))
            await svc.wait_identified(expected, timeout=10)
            assert node.peerstore.get(expected).public_key == info.public_key
            # py-libp2p's signed peer record verifies here (and ours there, above).
            record = node.peerstore.get(expected).peer_record
            assert record is not None and record.peer_id == expected
        assert any(e.get("event") == "echo" and e["bytes"] == 500_000 for e in peer.events)
        assert any(e.get("event") == "perf" and e["received"] == 4_000_000 for e in peer.events)

    run(main)


def test_wrong_peer_id_against_pylibp2p_is_refused(interop_python: Path) -> None:
    async def main() -> None:
        from switchy.stack.errors import AuthenticationFailed

        async with pylibp2p_listener() as peer, default_node() as node:
            base = next(a for a in peer.addrs if "/tcp/" in a).split("/p2p/")[0]
            impostor = KeyPair.generate().peer_id
            with pytest.raises(AuthenticationFailed):
                await node.connect(f"{base}/p2p/{impostor}")

    run(main)


# --- QUIC-v1 (libp2p TLS, native streams) ---------------------------------------------------

QUIC_LISTEN = "/ip4/127.0.0.1/udp/0/quic-v1"


def test_pylibp2p_pings_identifies_echoes_and_perfs_us_over_quic(interop_python: Path) -> None:
    async def main() -> None:
        async with default_node(listen=[QUIC_LISTEN]) as node:
            addr = str(node.full_addrs[0])
            assert "/udp/" in addr and "/quic-v1/" in addr
            r = await run_peer("ping", addr, "--quic", "-c", "5")
            assert len(r["rtts_us"]) == 5
            r = await run_peer("identify", addr, "--quic")
            assert r["agent_version"] == node.agent_version
            assert bytes.fromhex(r["public_key"]) == node.key.public_key.to_protobuf()
            assert {PING_PROTOCOL, IDENTIFY_PROTOCOL} <= set(r["protocols"])
            assert r["listen_addrs"] == [str(a) for a in node.listen_addrs]
            assert r["observed_addr"].startswith("/ip4/127.0.0.1/udp/")
            assert r["observed_addr"].endswith("/quic-v1")
            r = await run_peer("echo", addr, "--quic", "--size", "1000000")
            assert r["echoed"] == 1_000_000 and r["match"] is True
            r = await run_peer(
                "perf", addr, "--quic", "--upload", "3000000", "--download", "3000000"
            )
            assert r["download_bytes"] == 3_000_000
            # the py-libp2p clients connected over QUIC
            assert len(node.peerstore.peers()) >= 1

    run(main)


def test_we_ping_identify_echo_and_perf_pylibp2p_over_quic(interop_python: Path) -> None:
    async def main() -> None:
        from switchy.transports.quic import QuicConnection

        seed = bytes(range(32))
        async with pylibp2p_listener(seed, quic=True) as peer, default_node() as node:
            expected = KeyPair.from_seed(seed).peer_id
            assert PeerId.from_string(peer.peer_id) == expected
            addr = next(a for a in peer.addrs if "/quic-v1" in a)
            if "/p2p/" not in addr:
                addr += f"/p2p/{peer.peer_id}"
            rtts = await ping(node, addr, count=5)
            assert len(rtts) == 5
            conn = node.connections(expected)[0]
            assert isinstance(conn, QuicConnection)
            info = await identify(node, expected)
            assert info.public_key == KeyPair.from_seed(seed).public_key
            assert PING_PROTOCOL in info.protocols
            # py-libp2p 0.8.1 reports a /tcp/ observed address on QUIC connections (its bug);
            # the IP and port it saw are still ours.
            assert info.observed_addr is not None
            assert info.observed_addr.value_for_protocol("ip4") == "127.0.0.1"
            assert info.observed_addr.value_for_protocol(
                "tcp"
            ) == conn.local_addr.value_for_protocol("udp")
            data = bytes(i % 253 for i in range(500_000))
            assert await echo(node, expected, data) == data
            result = await perf(node, expected, upload=3_000_000, download=3_000_000)
            assert result.download_bytes == 3_000_000
        assert any(e.get("event") == "echo" and e["bytes"] == 500_000 for e in peer.events)
        assert any(e.get("event") == "perf" and e["received"] == 3_000_000 for e in peer.events)

    run(main)


def test_wrong_peer_id_against_pylibp2p_over_quic_is_refused(interop_python: Path) -> None:
    async def main() -> None:
        from switchy.stack.errors import AuthenticationFailed

        async with pylibp2p_listener(quic=True) as peer, default_node() as node:
            base = next(a for a in peer.addrs if "/quic-v1" in a).split("/p2p/")[0]
            impostor = KeyPair.generate().peer_id
            with pytest.raises(AuthenticationFailed, match="expected"):
                await node.connect(f"{base}/p2p/{impostor}")

    run(main)


# --- AutoNAT v1 (py-libp2p 0.8.1 has a v1 server and client; it has no AutoNAT v2) --------


def _loopback_autonat(*, server: bool = True, client: bool = True) -> AutoNATService:
    """Loopback addresses count as public here; probing only when the test asks."""
    return AutoNATService(
        server=server, client=client, is_public=lambda _a: True, probe_automatically=False
    )


def test_pylibp2p_asks_our_autonat_v1_server(interop_python: Path) -> None:
    async def main() -> None:
        server = _loopback_autonat(client=False)
        node = Node(
            transports=[TcpTransport()],
            services=[IdentifyService(), server],
            listen=["/ip4/127.0.0.1/tcp/0"],
        )
        async with node:
            lsn = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            dead = lsn.sockets[0].getsockname()[1]
            lsn.close()
            await lsn.wait_closed()
            r = await run_peer(
                "autonat",
                str(node.full_addrs[0]),
                "--ask", "self",
                "--ask", f"/ip4/127.0.0.1/tcp/{dead}",
                "--ask", "/ip4/10.9.8.7/tcp/4001",
            )  # fmt: skip
            own, closed, elsewhere = r["answers"]
            # we dialed py-libp2p back on its listen address (a new connection of ours)
            assert (own["status"], own["addr"]) == (int(V1Status.OK), own["asked"])
            assert closed["status"] == int(V1Status.E_DIAL_ERROR)
            # another IP than the one it connects from: refused without a dial
            assert elsewhere["status"] == int(V1Status.E_DIAL_REFUSED)
            assert server.served == [
                "v1 dialed: OK",
                "v1 dialed: E_DIAL_ERROR",
                "v1 refused",
            ]

    run(main)


def test_we_ask_pylibp2p_autonat_v1_server(interop_python: Path) -> None:
    async def main() -> None:
        client = _loopback_autonat(server=False)
        node = Node(
            transports=[TcpTransport()],
            services=[IdentifyService(), client],
            listen=["/ip4/127.0.0.1/tcp/0"],
        )
        async with pylibp2p_listener(autonat=True) as peer, node:
            addr = next(a for a in peer.addrs if "/tcp/" in a)
            if "/p2p/" not in addr:
                addr += f"/p2p/{peer.peer_id}"
            mine = node.listen_addrs[0]
            other_ip = Multiaddr("/ip4/10.9.8.7/tcp/4001")
            results = await probe(node, [addr], [mine, other_ip])
            assert [(r.version, r.verdict) for r in results] == [
                (1, Verdict.REACHABLE),  # py-libp2p "dials" us (it reuses our connection)
                (1, Verdict.REFUSED),  # not our observed IP: py-libp2p refuses too
            ]
            assert all(r.server == PeerId.from_string(peer.peer_id) for r in results)

    run(main)
