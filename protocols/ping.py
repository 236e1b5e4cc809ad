"""libp2p ping (``/ipfs/ping/1.0.0``): 32 random bytes echoed back, repeated on one stream."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from switchy.stack.errors import ProtocolError
from switchy.stack.metrics import LATENCY_BUCKETS, measure_clock
from switchy.stack.node import Node, ProtocolService

if TYPE_CHECKING:
    from switchy.stack.node import Target
    from switchy.stack.stream import MuxedStream

__all__ = ["PING_PROTOCOL", "PING_SIZE", "PingService", "ping"]

PING_PROTOCOL: Final = "/ipfs/ping/1.0.0"
#: Size of one ping payload, fixed by the spec.
PING_SIZE: Final = 32


async def handle_ping(stream: MuxedStream) -> None:
    """Echo each 32-byte payload until the remote closes its side."""
    buf = b""
    while True:
        chunk = await stream.read(PING_SIZE * 64)
        if not chunk:
            return
        buf += chunk
        whole = len(buf) - len(buf) % PING_SIZE
        if whole:
            await stream.write(buf[:whole])
            buf = buf[whole:]


class PingService(ProtocolService):
    """Serves ``/ipfs/ping/1.0.0``."""

    service_name = "ping"
    service_protocols = (PING_PROTOCOL,)

    def attach(self, node: Node) -> None:
        node.handle(PING_PROTOCOL, handle_ping)


async def ping(node: Node, target: Target, count: int = 1) -> list[float]:
    """Ping ``target`` ``count`` times on one stream; return the round trips in seconds.

    Each round trip is also recorded in the connection's latency statistics.  The
    protocol is confirmed before the first ping, so no round trip includes the
    negotiation; they are timed with :func:`~switchy.stack.metrics.measure_clock`
    (virtual time under the simulator, :func:`time.perf_counter` otherwise).
    Raises :class:`ProtocolError` when the echo differs from what was sent.
    """
    stream = await node.open_stream(target, PING_PROTOCOL, confirm=True)
    rtts: list[float] = []
    entropy = node.entropy or os.urandom
    clock = measure_clock()
    rtt_metric = node.metrics.histogram(
        "libp2p_ping_rtt_seconds", "Round trips measured by ping", buckets=LATENCY_BUCKETS
    )
    try:
        for _ in range(count):
            payload = entropy(PING_SIZE)
            start = clock()
            await stream.write(payload)
            answer = await stream.read_exactly(PING_SIZE)
            rtt = clock() - start
            if answer != payload:
                raise ProtocolError("ping answer does not match the payload sent")
            rtts.append(rtt)
            stream.stats.record_latency(rtt)
            rtt_metric.observe(rtt)
    except BaseException:
        await stream.reset()
        raise
    await stream.close()
    return rtts
