"""Optimistic multistream-select proposals that the listener refuses.

Proposing optimistically saves a round trip; a refusal must still surface as
:class:`NegotiationFailed` naming the protocol: for the muxer of a new connection
(``connect()`` must not succeed first) and for a stream whose proposal is followed
at once by bulk data (the refusal must not hide behind the reset or STOP_SENDING
that the data provokes).  In virtual time over TCP-like and QUIC streams, and over
real loopback for the ``switchy perf`` command.
"""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from switchy.presets import default_node
from switchy.protocols.perf import PERF_PROTOCOL, perf
from switchy.protocols.ping import PingService, ping
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import NegotiationFailed
from switchy.stack.mux import MuxedConnection, StreamMuxer
from switchy.stack.mux.yamux import Yamux
from switchy.stack.stream import Connection
from switchy.transports.sim import SimConfig, Simulation, run_simulation
from tests.sim_nodes import KINDS, sim_node

QUIET = SimConfig(default_packet_loss=0.0)
LATENCY = 0.01
BULK = 4 * 1024 * 1024


class FakeMplex(StreamMuxer):
    """Registered as ``/mplex/6.7.0`` (yamux inside: only the negotiated id matters here)."""

    protocol_id = "/mplex/6.7.0"

    def create(
        self, conn: Connection, *, is_initiator: bool, config: NetworkConfig
    ) -> MuxedConnection:
        return Yamux().create(conn, is_initiator=is_initiator, config=config)


def two_hosts(sim: Simulation) -> None:
    sim.network.add_hosts(["a", "b", "c"])
    sim.network.add_link("a", "b", latency=LATENCY)
    sim.network.add_link("c", "b", latency=LATENCY)


def test_connect_fails_naming_the_muxer_when_the_listener_refuses_it() -> None:
    async def main(sim: Simulation) -> None:
        two_hosts(sim)
        async with (
            sim_node(sim, "b", "tcp", PingService(), muxers=[FakeMplex()]) as b,
            sim_node(sim, "a", "tcp", PingService()) as a,  # yamux only: proposed optimistically
            sim_node(sim, "c", "tcp", PingService(), muxers=[FakeMplex()]) as c,
        ):
            with pytest.raises(NegotiationFailed, match=r"stream muxer '/yamux/1\.0\.0'"):
                await a.connect(b.full_addrs[0])
            assert a.connections() == [] and a.connected_peers == []
            # A dialer with the listener's muxer connects, and only once it was confirmed:
            # the answer to the proposal sent with the last Noise message is one more
            # round trip away (the link's round trip is 2 * LATENCY).
            start = sim.now
            conn = await c.connect(b.full_addrs[0])
            assert sim.now - start >= 3 * 2 * LATENCY - 1e-9
            assert (await ping(c, b.peer_id))[0] == pytest.approx(2 * LATENCY, abs=1e-3)
            assert not conn.is_closed

    run_simulation(main, seed=5, config=QUIET)


@pytest.mark.parametrize("kind", KINDS)
def test_bulk_write_after_a_refused_proposal_raises_negotiation_failed(kind: str) -> None:
    async def main(sim: Simulation) -> None:
        two_hosts(sim)
        async with (
            sim_node(sim, "b", kind, PingService()) as b,
            sim_node(sim, "a", kind, PingService()) as a,
        ):  # b serves ping, not perf
            stream = await a.open_stream(b.full_addrs[0], "/bulk/1.0.0")
            with pytest.raises(NegotiationFailed, match=r"'/bulk/1\.0\.0'"):
                await stream.write(bytes(BULK))
            await stream.reset()
            with pytest.raises(NegotiationFailed, match=re.escape(f"'{PERF_PROTOCOL}'")):
                await perf(a, b.peer_id, upload=BULK, download=0)
            # The connection is unharmed: a served protocol still works on it.
            assert len(await ping(a, b.peer_id, count=2)) == 2

    run_simulation(main, seed=6, config=QUIET)


@pytest.mark.parametrize("listen", ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"])
def test_switchy_perf_against_a_peer_without_perf_names_the_refusal(listen: str) -> None:
    async def main() -> None:
        async with default_node(listen=[listen], services=[]) as b:
            b.unhandle(PERF_PROTOCOL)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "switchy.cli",
                "perf",
                str(b.full_addrs[0]),
                "--upload",
                str(BULK),
                "--download",
                "0",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            text = err.decode()
            assert proc.returncode != 0
            assert text.startswith("switchy: error:") and "Traceback" not in text, text
            assert f"'{PERF_PROTOCOL}'" in text and "refused" in text, text

    asyncio.run(main())
