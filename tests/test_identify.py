"""Identify edge cases met with other implementations: push delivery, observed addresses.

In virtual time on the simulator, over QUIC and over TCP-like streams (Noise + yamux).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from multiaddr import Multiaddr

from switchy.protocols.identify import (
    IDENTIFY_PUSH_PROTOCOL,
    MAX_IDENTIFY_SIZE,
    IdentifyInfo,
    IdentifyService,
    decode_identify,
    decode_identify_stream,
)
from switchy.stack.addresses import with_peer
from switchy.stack.codec import encode_uvarint, pb_bytes, pb_fixed64, pb_varint
from switchy.stack.errors import P2PError, SerializationError
from switchy.stack.identity import KeyPair
from switchy.stack.stream import MuxedStream
from switchy.transports.sim import SimConfig, Simulation, run_simulation
from tests.sim_nodes import KINDS, sim_node

QUIET = SimConfig(default_packet_loss=0.0)
LATENCY = 0.02


class ClosingFirstPeer(IdentifyService):
    """Receives a push as js-libp2p does: it reads the push to its end, then closes its own
    side, and applies the push only if that close succeeds, i.e. the pusher did not stop
    reading (STOP_SENDING) or reset the stream meanwhile.

    The round trip (a connection-level ping) before closing lets a STOP_SENDING that the
    pusher sent on receiving our multistream answer arrive first, as it does before
    js-libp2p's close completes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.outcome: asyncio.Future[str] | None = None

    async def _handle_push(self, stream: MuxedStream) -> None:
        assert self.outcome is not None
        data = await stream.read_all(limit=MAX_IDENTIFY_SIZE)
        conn = stream.muxed_conn
        await conn.ping()  # type: ignore[attr-defined]
        try:
            await stream.write_last(b"\n")  # closing flushes our side: fails if stopped
        except P2PError as exc:
            self.outcome.set_result(f"close failed: {exc}")
            raise
        self._apply(stream.remote_peer, decode_identify_stream(data), push=True)
        self.outcome.set_result("applied")


@pytest.mark.parametrize("kind", KINDS)
def test_identify_push_reaches_a_peer_that_applies_it_after_its_own_close(kind: str) -> None:
    async def main(sim: Simulation) -> None:
        sim.network.add_hosts(["a", "b"])
        sim.network.add_link("a", "b", latency=LATENCY)
        pusher = IdentifyService()
        receiver = ClosingFirstPeer()
        receiver.outcome = asyncio.get_running_loop().create_future()
        async with sim_node(sim, "a", kind, pusher) as a, sim_node(sim, "b", kind, receiver) as b:
            await a.connect(b.full_addrs[0])
            await pusher.wait_identified(b.peer_id, timeout=5)
            assert IDENTIFY_PUSH_PROTOCOL in a.peerstore.protocols(b.peer_id)

            async def new_handler(stream: MuxedStream) -> None:
                await stream.close()

            a.registry.register("/brand-new/1.0.0", new_handler)
            start = sim.now
            await pusher.push()
            # push() waited for b's end of stream (b closes one ping round trip after the
            # push arrived) and no longer than that.
            assert sim.now - start <= 5 * 2 * LATENCY + 1e-6
            assert await asyncio.wait_for(receiver.outcome, 5) == "applied"
            assert "/brand-new/1.0.0" in b.peerstore.protocols(a.peer_id)

    run_simulation(main, seed=3, config=QUIET)


class ObservedAs(IdentifyService):
    """Sends ``suffix(observed)`` as the observed address instead of the real one."""

    def __init__(self, suffix: Callable[[Multiaddr, MuxedStream], Multiaddr]) -> None:
        super().__init__(identify_on_connect=False)
        self._suffix = suffix
        self._stream: MuxedStream | None = None

    async def _handle_identify(self, stream: MuxedStream) -> None:
        self._stream = stream
        await super()._handle_identify(stream)

    def local_info(self, observed: Multiaddr | None) -> IdentifyInfo:
        info = super().local_info(observed)
        if observed is not None and self._stream is not None:
            info.observed_addr = self._suffix(observed, self._stream)
        return info


def test_observed_address_with_our_peer_id_is_stored_without_it() -> None:
    other = KeyPair.generate().peer_id

    async def main(sim: Simulation) -> None:
        sim.network.add_hosts(["a", "b", "c", "d"])
        for h in "bcd":
            sim.network.add_link("a", h, latency=LATENCY)
        ours = ObservedAs(lambda addr, s: with_peer(addr, s.remote_peer))
        theirs = ObservedAs(lambda addr, s: with_peer(addr, other))
        bare = ObservedAs(lambda addr, s: Multiaddr(f"/p2p/{s.remote_peer}"))
        asker = IdentifyService()
        async with (
            sim_node(sim, "a", "tcp", asker) as a,
            sim_node(sim, "b", "tcp", ours) as b,
            sim_node(sim, "c", "tcp", theirs) as c,
            sim_node(sim, "d", "tcp", bare) as d,
        ):
            conn = await a.connect(b.full_addrs[0])
            await asker.wait_identified(b.peer_id, timeout=5)
            # js-libp2p appends /p2p/<our id>: stored as the transport address alone.
            assert a.peerstore.observed_addrs == [conn.local_addr]
            assert "/p2p/" not in str(a.peerstore.observed_addrs[0])
            # An observed address naming someone else, or no transport address, is ignored.
            for node in (c, d):
                await a.connect(node.full_addrs[0])
                await asker.wait_identified(node.peer_id, timeout=5)
            assert a.peerstore.observed_addrs == [conn.local_addr]

    run_simulation(main, seed=4, config=QUIET)


@pytest.mark.parametrize("kind", KINDS)
def test_finish_waits_for_the_remote_end_within_its_bound(kind: str) -> None:
    """Stream.finish (the push's close): returns at the remote's end of stream, or after
    FINISH_TIMEOUT if the remote never ends its side; a reset meanwhile propagates."""
    from switchy.stack.errors import StreamReset
    from switchy.stack.stream import FINISH_TIMEOUT

    async def main(sim: Simulation) -> None:
        sim.network.add_hosts(["a", "b"])
        sim.network.add_link("a", "b", latency=LATENCY)
        release = asyncio.Event()
        async with (
            sim_node(sim, "a", kind, IdentifyService()) as a,
            sim_node(sim, "b", kind, IdentifyService()) as b,
        ):

            async def answers_then_ends(stream: MuxedStream) -> None:
                assert await stream.read_all() == b"data"
                await stream.write(b"late answer")  # drained by finish(), not refused

            async def never_ends(stream: MuxedStream) -> None:
                await stream.read_all()
                await release.wait()

            async def resets(stream: MuxedStream) -> None:
                await stream.read_all()
                await stream.reset()

            for name, handler in [("ends", answers_then_ends), ("never", never_ends)]:
                b.registry.register(f"/{name}/1.0.0", handler)
            b.registry.register("/resets/1.0.0", resets)
            for name, bound in [("ends", 4 * LATENCY), ("never", FINISH_TIMEOUT + 1)]:
                stream = await a.open_stream(b.full_addrs[0], f"/{name}/1.0.0")
                await stream.write(b"data")
                start = sim.now
                await stream.finish()
                took = sim.now - start
                assert took <= bound + 1e-6, (name, took)
                if name == "never":
                    assert took >= FINISH_TIMEOUT
            release.set()
            stream = await a.open_stream(b.peer_id, "/resets/1.0.0")
            await stream.write(b"data")
            with pytest.raises(StreamReset):
                await stream.finish()

    run_simulation(main, seed=8, config=QUIET)


@pytest.mark.parametrize(
    ("field", "name"), [(2, "listenAddrs"), (4, "observedAddr"), (3, "protocols")]
)
def test_a_known_field_of_the_wrong_wire_type_is_refused_naming_it(field: int, name: str) -> None:
    raw = Multiaddr("/ip4/1.2.3.4/tcp/80").to_bytes()  # 8 bytes: they fit a fixed64
    fixed64 = pb_fixed64(field, int.from_bytes(raw, "little"))
    fixed32 = encode_uvarint(field << 3 | 5) + raw[:4]
    for wrong in (fixed64, fixed32, pb_varint(field, 7)):
        with pytest.raises(SerializationError, match=rf"Identify\.{name} must be a length-delim"):
            decode_identify(pb_bytes(5, b"ipfs/0.1.0") + wrong)
    # the right wire type is read, unknown fields of any type are skipped
    info = decode_identify(pb_bytes(2, raw) + pb_fixed64(7, 1) + pb_varint(9, 1))
    assert info.listen_addrs == [Multiaddr("/ip4/1.2.3.4/tcp/80")]


class SignallingPush(IdentifyService):
    """Sets ``pushed`` once a push was handled (and counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed = asyncio.Event()

    async def _handle_push(self, stream: MuxedStream) -> None:
        await super()._handle_push(stream)
        self.pushed.set()


class RefusingPush(IdentifyService):
    """Reads a push and then resets the stream instead of applying it."""

    async def _handle_push(self, stream: MuxedStream) -> None:
        await stream.read_all(limit=MAX_IDENTIFY_SIZE)
        raise SerializationError("this peer refuses every push")


async def close_at_once(stream: MuxedStream) -> None:
    await stream.close()


def test_identify_push_metrics_count_pushes_sent_received_and_failed() -> None:
    """``libp2p_identify_identify_push_total{dir}`` counts a delivered push on both sides
    (outbound at the pusher, inbound at the receiver); a push the receiver resets counts in
    ``libp2p_identify_push_failures_total`` and not as sent."""
    push_total = "libp2p_identify_identify_push_total"
    failures = "libp2p_identify_push_failures_total"

    async def main(sim: Simulation) -> None:
        sim.network.add_hosts(["a", "b", "c"])
        for h in "bc":
            sim.network.add_link("a", h, latency=LATENCY)
        pusher, receiver, refuser = IdentifyService(), SignallingPush(), RefusingPush()
        async with (
            sim_node(sim, "a", "tcp", pusher) as a,
            sim_node(sim, "b", "tcp", receiver) as b,
            sim_node(sim, "c", "tcp", refuser) as c,
        ):
            await a.connect(b.full_addrs[0])
            await pusher.wait_identified(b.peer_id, timeout=5)
            metric = a.metrics.get(push_total)
            failed = a.metrics.get(failures)
            assert metric is not None and failed is not None  # registered once, at attach
            assert metric.value("outbound") == 0 and failed.value() == 0
            a.registry.register("/brand-new/1.0.0", close_at_once)
            await pusher.push()
            assert metric.value("outbound") == 1
            got = b.metrics.get(push_total)
            assert got is not None
            await asyncio.wait_for(receiver.pushed.wait(), 5)
            assert got.value("inbound") == 1
            assert "/brand-new/1.0.0" in b.peerstore.protocols(a.peer_id)

            await a.connect(c.full_addrs[0])
            await pusher.wait_identified(c.peer_id, timeout=5)
            b_conns = a.connections(b.peer_id)
            for conn in b_conns:
                await conn.close()
            a.registry.register("/newer/1.0.0", close_at_once)
            await pusher.push()
            assert failed.value() == 1  # c reset it
            assert metric.value("outbound") == 1  # not counted as sent
            refused = c.metrics.get(push_total)
            assert refused is not None and refused.value("inbound") == 0

    run_simulation(main, seed=5, config=QUIET)
