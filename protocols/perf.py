"""libp2p perf (``/perf/1.0.0``): upload N bytes, download M bytes, measure both.

The client sends M as an 8-byte big-endian integer, then N bytes, then closes
its write side; the server reads to the end, then sends M bytes and closes.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

import attrs

from switchy.stack.errors import ProtocolError
from switchy.stack.metrics import measure_clock
from switchy.stack.node import Node, ProtocolService

if TYPE_CHECKING:
    from switchy.stack.node import Target
    from switchy.stack.stream import MuxedStream

__all__ = ["PERF_PROTOCOL", "PerfResult", "PerfService", "perf"]

PERF_PROTOCOL: Final = "/perf/1.0.0"
#: Bytes written per call when generating traffic.
PERF_CHUNK: Final = 1024 * 1024
#: The largest download a server agrees to send (1 TiB).
MAX_PERF_DOWNLOAD: Final = 1 << 40

_ZEROS = bytes(PERF_CHUNK)


@attrs.frozen
class PerfResult:
    """Timings of one perf run, in seconds."""

    upload_bytes: int
    download_bytes: int
    upload_seconds: float
    download_seconds: float

    @property
    def total_seconds(self) -> float:
        """Upload plus download time."""
        return self.upload_seconds + self.download_seconds


async def _send_zeros(stream: MuxedStream, n: int) -> None:
    view = memoryview(_ZEROS)
    while n > 0:
        k = min(n, PERF_CHUNK)
        await stream.write(view[:k] if k < PERF_CHUNK else _ZEROS)
        n -= k


async def _drain(stream: MuxedStream) -> int:
    total = 0
    while True:
        chunk = await stream.read(1 << 20)
        if not chunk:
            return total
        total += len(chunk)


async def handle_perf(stream: MuxedStream) -> None:
    """Serve one perf request."""
    header = await stream.read_exactly(8)
    (to_send,) = struct.unpack(">Q", header)
    if to_send > MAX_PERF_DOWNLOAD:
        raise ProtocolError(f"perf request for {to_send} bytes exceeds {MAX_PERF_DOWNLOAD}")
    await _drain(stream)
    await _send_zeros(stream, to_send)
    await stream.close_write()


class PerfService(ProtocolService):
    """Serves ``/perf/1.0.0``."""

    service_name = "perf"
    service_protocols = (PERF_PROTOCOL,)

    def attach(self, node: Node) -> None:
        node.handle(PERF_PROTOCOL, handle_perf)


async def perf(node: Node, target: Target, upload: int, download: int) -> PerfResult:
    """Run one perf exchange with ``target``: send ``upload`` bytes, then receive
    ``download`` bytes; both are timed with :func:`~switchy.stack.metrics.measure_clock`
    (virtual time under the simulator)."""
    stream = await node.open_stream(target, PERF_PROTOCOL)
    clock = measure_clock()
    try:
        start = clock()
        await stream.write(struct.pack(">Q", download))
        await _send_zeros(stream, upload)
        await stream.close_write()
        mid = clock()
        got = await _drain(stream)
        end = clock()
    except BaseException:
        await stream.reset()
        raise
    await stream.close()
    if got != download:
        raise ProtocolError(f"perf server sent {got} bytes, {download} were requested")
    return PerfResult(upload, download, mid - start, end - mid)
