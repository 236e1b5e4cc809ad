"""``switchy demo``: several nodes in one process, talking over loopback."""

from __future__ import annotations

import asyncio
import statistics
from typing import Final

from switchy.presets import default_node
from switchy.stack.addresses import with_peer
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import AuthenticationFailed, InvalidConfiguration
from switchy.stack.identity import KeyPair
from switchy.stack.metrics import measure_clock, quantile
from switchy.stack.node import Node

__all__ = ["MAX_DEMO_NODES", "MIN_DEMO_NODES", "demo_names", "run_demo"]

#: Fewest nodes the demo runs (a dialer and a listener).
MIN_DEMO_NODES: Final = 2
#: Most nodes the demo runs (each is a node with a TCP listener in this process).
MAX_DEMO_NODES: Final = 50
#: Bytes moved each way by the demo's perf step.
DEMO_PERF_BYTES: Final = 64 * 1024 * 1024

_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


def demo_names(nodes: int) -> list[str]:
    """The demo's node names: alice, bob, ..., heidi, then node9, node10, ..."""
    return [_NAMES[i] if i < len(_NAMES) else f"node{i + 1}" for i in range(nodes)]


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.0f} us"


def _say(text: str = "") -> None:
    print(text, flush=True)


async def _find_by_name(peers: list[Node], names: list[str], config: NetworkConfig | None) -> None:
    """Demo step: a name registry; every node registers its name; the first finds the last."""
    from switchy.protocols.discovery.claims import seal_name_claim
    from switchy.protocols.discovery.client import lookup, register
    from switchy.protocols.discovery.registry import RegistryService

    _say("\n7b. Find peers by name")
    async with default_node(services=[RegistryService()], config=config) as registry:
        await registry.listen("/ip4/127.0.0.1/tcp/0")
        where = registry.full_addrs[0]
        _say(f"   a name registry runs at {where}")
        for node, name in zip(peers, names, strict=True):
            claim = seal_name_claim(node.key, name, tuple(node.listen_addrs), 1)
            await register(node, where, name, 60, claim)
        _say(f"   {', '.join(names)} registered their names with signed claims")
        found = await lookup(peers[0], where, names[-1])
        # the looked-up addresses are all the dialer knows of that peer: dial them
        conn = await peers[0].connect(with_peer(found.addrs[0], found.peer_id))
        _say(
            f"   {names[0]} looked up {names[-1]!r}: {found.peer_id.fmt_short()} at "
            f"{found.addrs[0]} (signatures checked), connected to "
            f"{conn.remote_peer.fmt_short()}"
        )


async def run_demo(
    nodes: int = 3, *, perf_bytes: int = DEMO_PERF_BYTES, config: NetworkConfig | None = None
) -> None:
    """Start ``nodes`` nodes, connect them, and show each part of the stack at work.

    ``nodes`` must be within :data:`MIN_DEMO_NODES`..:data:`MAX_DEMO_NODES`
    (else :class:`~switchy.stack.errors.InvalidConfiguration`); ``perf_bytes`` is
    moved each way in the throughput step; every node uses ``config`` (default: the
    defaults).
    """
    from switchy.protocols.echo import echo
    from switchy.protocols.identify import IdentifyService, identify
    from switchy.protocols.perf import perf
    from switchy.protocols.ping import ping

    if not MIN_DEMO_NODES <= nodes <= MAX_DEMO_NODES:
        raise InvalidConfiguration(
            f"the demo runs {MIN_DEMO_NODES} to {MAX_DEMO_NODES} nodes, not {nodes}"
        )
    names = demo_names(nodes)
    clock = measure_clock()
    _say(f"switchy-p2p demo: {nodes} nodes on loopback, TCP + Noise + yamux\n")
    peers: list[Node] = []
    try:
        for name in names:
            node = default_node(config=config)
            await node.start()
            await node.listen("/ip4/127.0.0.1/tcp/0")
            peers.append(node)
            _say(f"  {name:<6} {node.peer_id}  listening on {node.full_addrs[0]}")
        label = {n.peer_id: name for n, name in zip(peers, names, strict=True)}
        a, b = peers[0], peers[1]
        c = peers[2] if nodes > 2 else peers[1]
        c_name = label[c.peer_id]

        _say("\n1. Dial, secure, multiplex")
        start = clock()
        conn = await a.connect(b.full_addrs[0])
        ms = (clock() - start) * 1e3
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
        # the protocol is confirmed before the first ping: no round trip includes setup
        rtts = await ping(a, b.peer_id, count=20)
        _say(
            f"   20 pings {names[0]} -> {names[1]}: median {_us(statistics.median(rtts))}, "
            f"p90 {_us(quantile(rtts, 0.9))}"
        )

        _say("\n4. Echo")
        message = f"hello from {c_name}".encode()
        back = await echo(c, a.full_addrs[0], message)
        _say(f"   {c_name} sent {message.decode()!r} to {names[0]}, got back {back.decode()!r}")

        _say("\n5. Many streams on one connection")
        start = clock()
        results = await asyncio.gather(*(echo(a, b.peer_id, b"stream %d" % i) for i in range(200)))
        ms = (clock() - start) * 1e3
        if results != [b"stream %d" % i for i in range(200)]:
            raise AssertionError("demo: an echo stream came back wrong")
        _say(
            f"   200 concurrent echo streams {names[0]} -> {names[1]} in {ms:.1f} ms, "
            f"still {len(a.connections(b.peer_id))} connection"
        )

        _say("\n6. Throughput (libp2p perf)")
        r = await perf(a, b.peer_id, upload=perf_bytes, download=perf_bytes)
        _say(
            f"   {names[0]} -> {names[1]}: upload {perf_bytes / r.upload_seconds / 1e6:.0f} MB/s, "
            f"download {perf_bytes / r.download_seconds / 1e6:.0f} MB/s "
            f"({perf_bytes / 2**20:g} MiB each way, encrypted)"
        )

        _say("\n7. Authentication")
        stranger = KeyPair.generate().peer_id  # an id no node here has
        wrong = with_peer(b.listen_addrs[0], stranger)
        try:
            await a.connect(wrong)
        except AuthenticationFailed as exc:
            _say(
                f"   {names[0]} dialing {names[1]}'s address but expecting another id "
                f"is refused: {exc}"
            )
        else:
            raise AssertionError("demo: dialing with a wrong peer id succeeded")

        await _find_by_name(peers, names, config)

        _say("\n8. Connection statistics")
        for node in peers:
            for cn in node.connections():
                s = cn.stats
                lat = (
                    f"ping median {_us(s.median_latency)} / p90 {_us(s.p90_latency)}"
                    if s.latency_samples
                    else "no pings"
                )
                _say(
                    f"   {label[node.peer_id]:<6} <-> {label.get(cn.remote_peer, '?'):<6} "
                    f"sent {s.bytes_sent:>10} B in {s.messages_sent:>5} writes, "
                    f"received {s.bytes_received:>10} B, {lat}, open {s.duration:.2f} s"
                )
    finally:
        _say("\n9. Graceful shutdown")
        for node, name in zip(peers, names, strict=False):
            await node.close()
            _say(f"   {name} closed")
