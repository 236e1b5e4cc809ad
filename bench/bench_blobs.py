"""File transfer over loopback TCP and QUIC against the raw stream of the same transport; JSON.

One process, default node pairs.  For each transport, alternating ``--rounds`` times:

- ``raw``: ``--size`` bytes written in 256 KiB writes on one stream and counted by the
  other side (the anchor: :func:`bench.common.stream_throughput` on that transport);
- ``blobs``: one ``/switchy/blobs/1.0.0`` fetch of a ``--size`` file (manifest, pipelined
  chunk requests, every chunk BLAKE3-verified and written to disk), timed from the
  manifest request on an established connection, so that it compares with the anchor
  (which starts on an open stream); ``blobs_with_dial`` includes the dial.

Then the resume figure: a fetch killed (cancelled) once half the bytes arrived, then a
second fetch; ``resume_moved_fraction`` is the share of the file the provider served
again (the goal is <= 0.51).

Usage: ``python -m bench.bench_blobs [--size BYTES] [--rounds N] [--transport tcp|quic|both]``
(on uvloop with ``SWITCHY_BENCH_LOOP=uvloop``, as every benchmark run by ``bench.common.run``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CHUNK, run, stream_throughput
from switchy.presets import default_node
from switchy.protocols.blobs import CHUNK_SIZE, BlobService, Progress, Ticket, fetch

LISTEN = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic": "/ip4/127.0.0.1/udp/0/quic-v1"}


def _random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(os.urandom(CHUNK))
    return path


async def blob_throughput(listen: str, src: Path, out: Path) -> tuple[float, float]:
    """Bytes/s of one verified fetch of ``src``: (on a connection, including the dial)."""
    size = src.stat().st_size
    blobs = BlobService()
    async with default_node(services=[blobs], listen=[listen]) as server, default_node() as client:
        ticket = blobs.add_file(src)
        start = time.perf_counter()
        await client.connect(server.full_addrs[0])
        connected = time.perf_counter()
        path = await fetch(client, ticket, out)
        end = time.perf_counter()
    path.unlink()
    return size / (end - connected), size / (end - start)


class _Counting(BlobService):
    """Counts the bytes served."""

    served = 0

    def read_chunk(self, path: Path, index: int) -> bytes:
        data = super().read_chunk(path, index)
        self.served += len(data)
        return data


async def resume_fraction(listen: str, src: Path, out: Path) -> dict[str, float]:
    """Kill a fetch at 50 %, fetch again; the share of the file moved by the second fetch."""
    size = src.stat().st_size
    blobs = _Counting()
    async with default_node(services=[blobs], listen=[listen]) as _server:
        ticket: Ticket = blobs.add_file(src)
        async with default_node() as client:
            task: asyncio.Task[Path] | None = None

            def kill(p: Progress) -> None:
                if p.done >= size // 2 and task is not None:
                    task.cancel()

            task = asyncio.ensure_future(fetch(client, ticket, out, progress=kill))
            with contextlib.suppress(asyncio.CancelledError):
                await task
        first = blobs.served
        blobs.served = 0
        async with default_node() as client:
            path = await fetch(client, ticket, out)
        assert path.stat().st_size == size
        path.unlink()
    return {"first_fetch_served": first / size, "resume_moved_fraction": blobs.served / size}


async def measure(transport: str, size: int, rounds: int, tmp: Path) -> dict[str, Any]:
    """Alternate raw and blobs rounds on ``transport``; medians and the resume figure."""
    listen = LISTEN[transport]
    src = _random_file(tmp / "file.bin", size)
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    raw, blob, dialed = [], [], []
    for _ in range(rounds):
        raw.append(await stream_throughput(size, listen))
        b, d = await blob_throughput(listen, src, out)
        blob.append(b)
        dialed.append(d)
    result: dict[str, Any] = {
        "transport": transport,
        "bytes": size,
        "rounds": rounds,
        "raw_stream_MBps": [round(x / 1e6, 1) for x in raw],
        "blobs_MBps": [round(x / 1e6, 1) for x in blob],
        "blobs_with_dial_MBps": [round(x / 1e6, 1) for x in dialed],
        "ratio_median": statistics.median(b / r for b, r in zip(blob, raw, strict=True)),
    }
    result.update(await resume_fraction(listen, src, out))
    src.unlink()
    return result


def main() -> None:
    """Run the measurements; print one JSON object per transport."""
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=1 << 30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--transport", choices=["tcp", "quic", "both"], default="both")
    args = p.parse_args()
    size = max(CHUNK_SIZE, args.size // CHUNK * CHUNK)
    transports = ["tcp", "quic"] if args.transport == "both" else [args.transport]
    with tempfile.TemporaryDirectory() as tmp:
        for t in transports:
            print(json.dumps(run(measure(t, size, args.rounds, Path(tmp)))), flush=True)


if __name__ == "__main__":
    main()
