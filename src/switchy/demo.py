"""``switchy demo``: several nodes in one process, talking over loopback."""

from __future__ import annotations

import asyncio
import statistics
import time

from switchy.presets import default_node
from switchy.stack.addresses import with_peer
from switchy.stack.errors import AuthenticationFailed
from switchy.stack.node import Node

__all__ = ["run_demo"]

_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _find_by_name(peers: list[Node], names: list[str]) -> None:
    """Demo step: a name registry; every node registers its name; the first finds the last."""
    from switchy.protocols.discovery.claims import seal_name_claim
    from switchy.protocols.discovery.client import lookup, register
    from switchy.protocols.discovery.registry import RegistryService

    _say("\n7b. Find peers by name")
    async with default_node(services=[RegistryService()]) as registry:
        await registry.listen("/ip4/127.0.0.1/tcp/0")
        where = registry.full_addrs[0]
        _say(f"   a name registry runs at {where}")
        for node, name in zip(peers, names, strict=True):
            claim = seal_name_claim(node.key, name, tuple(node.listen_addrs), 1)
            await register(node, where, name, 60, claim)
        _say(f"   {', '.join(names)} registered their names with signed claims")
        found = await lookup(peers[0], where, names[-1])
        conn = await peers[0].connect(found.peer_id)
        _say(
            f"   {names[0]} looked up {names[-1]!r}: {found.peer_id.fmt_short()} at "
            f"{found.addrs[0]} (signatures checked), connected to "
            f"{conn.remote_peer.fmt_short()}"
        )


async def run_demo(nodes: int = 3) -> None:
    """Start ``nodes`` nodes, connect them, and show each part of the stack at work."""
    from switchy.protocols.echo import echo
    from switchy.protocols.identify import IdentifyService, identify
    from switchy.protocols.perf import perf
    from switchy.protocols.ping import ping

    nodes = max(2, min(nodes, len(_NAMES)))
    names = _NAMES[:nodes]
    _say(f"switchy-p2p demo: {nodes} nodes on loopback, TCP + Noise + yamux\n")
    peers: list[Node] = []
    try:
        for name in names:
            node = default_node()
            await node.start()
            await node.listen("/ip4/127.0.0.1/tcp/0")
            peers.append(node)
            _say(f"  {name:<6} {node.peer_id}  listening on {node.full_addrs[0]}")
        label = {n.peer_id: name for n, name in zip(peers, names, strict=True)}
        a, b = peers[0], peers[1]
        c = peers[2] if nodes > 2 else peers[1]

        _say("\n1. Dial, secure, multiplex")
        start = time.perf_counter()
        conn = await a.connect(b.full_addrs[0])
        ms = (time.perf_counter() - start) * 1e3
        _say(
            f"   {names[0]} -> {names[1]}: connected in {ms:.2f} ms "
            f"({conn.security_protocol} + {conn.muxer_protocol}), "
            f"{names[1]} authenticated as {conn.remote_peer.fmt_short()}"
        )

        _say("\n2. Identify")
        info = await identify(a, b.peer_id)
        _say(f"   {names[1]} runs {info.agent_version}, speaks {', '.join(info.protocols)}")
        _say(f"   {names[1]} sees {names[0]} at {info.observed_addr}")
        idsvc = next(s for s in b.services if isinstance(s, IdentifyService))
        await idsvc.wait_identified(a.peer_id, timeout=5)
        _say(
            f"   {names[1]}'s peer store now knows {names[0]} at "
            f"{', '.join(map(str, b.peerstore.addrs(a.peer_id)))}"
        )

        _say("\n3. Ping")
        rtts = await ping(a, b.peer_id, count=20)
        _say(
            f"   20 pings {names[0]} -> {names[1]}: median {statistics.median(rtts) * 1e6:.0f} us, "
            f"max {max(rtts) * 1e6:.0f} us"
        )

        _say("\n4. Echo")
        message = f"hello from {names[2 % nodes]}".encode()
        back = await echo(c, a.full_addrs[0], message)
        _say(
            f"   {names[2 % nodes]} sent {message.decode()!r} to {names[0]}, "
            f"got back {back.decode()!r}"
        )

        _say("\n5. Many streams on one connection")
        start = time.perf_counter()
        results = await asyncio.gather(*(ping(a, b.peer_id) for _ in range(200)))
        ms = (time.perf_counter() - start) * 1e3
        _say(
            f"   200 concurrent ping streams {names[0]} -> {names[1]} in {ms:.1f} ms, "
            f"still {len(a.connections(b.peer_id))} connection"
        )
        assert len(results) == 200

        _say("\n6. Throughput (libp2p perf)")
        size = 64 * 1024 * 1024
        r = await perf(a, b.peer_id, upload=size, download=size)
        _say(
            f"   {names[0]} -> {names[1]}: upload {size / r.upload_seconds / 1e6:.0f} MB/s, "
            f"download {size / r.download_seconds / 1e6:.0f} MB/s (64 MiB each way, encrypted)"
        )

        _say("\n7. Authentication")
        wrong = with_peer(b.listen_addrs[0], c.peer_id if c is not b else a.peer_id)
        try:
            await peers[-1].connect(wrong)
            _say("   unexpected: dialing with a wrong peer id succeeded")
        except AuthenticationFailed as exc:
            _say(f"   dialing {names[1]}'s address but expecting another id is refused: {exc}")

        await _find_by_name(peers, names)

        _say("\n8. Connection statistics")
        for node in peers:
            for cn in node.connections():
                s = cn.stats
                lat = f"{s.average_latency * 1e6:.0f} us" if s.average_latency else "-"
                _say(
                    f"   {label[node.peer_id]:<6} <-> {label.get(cn.remote_peer, '?'):<6} "
                    f"sent {s.bytes_sent:>10} B in {s.messages_sent:>5} writes, "
                    f"received {s.bytes_received:>10} B, mean ping {lat}, open {s.duration:.2f} s"
                )
    finally:
        _say("\n9. Graceful shutdown")
        for node, name in zip(peers, names, strict=False):
            await node.close()
            _say(f"   {name} closed")
