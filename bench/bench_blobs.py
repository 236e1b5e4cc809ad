"""File transfer over loopback TCP against the raw stream of the same pair; prints JSON.

One process, a default node pair: ``/switchy/blobs/1.0.0`` fetching a ``--size`` file
(verified chunk by chunk, written to disk) and, as the anchor, the same number of
bytes written on one raw stream (bench.common.stream_throughput).

Usage: ``python -m bench.bench_blobs [--size BYTES]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from bench.common import CHUNK, stream_throughput
from switchy.presets import default_node
from switchy.protocols.blobs import BlobService, fetch


def _random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(os.urandom(CHUNK))
    return path


async def blob_throughput(size: int) -> float:
    """Bytes/s of one verified fetch of a ``size``-byte file."""
    with tempfile.TemporaryDirectory() as tmp:
        src = _random_file(Path(tmp, "file.bin"), size)
        out = Path(tmp, "out")
        out.mkdir()
        blobs = BlobService()
        async with (
            default_node(services=[blobs], listen=["/ip4/127.0.0.1/tcp/0"]),
            default_node() as client,
        ):
            ticket = blobs.add_file(src)
            start = time.perf_counter()
            await fetch(client, ticket, out)
            elapsed = time.perf_counter() - start
        return size / elapsed


def main() -> None:
    """Run both measurements; print MB/s and the ratio."""
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256 * 1024 * 1024)
    size = p.parse_args().size // CHUNK * CHUNK
    raw = asyncio.run(stream_throughput(size))
    blob = asyncio.run(blob_throughput(size))
    print(
        json.dumps(
            {
                "bytes": size,
                "raw_stream_MBps": raw / 1e6,
                "blobs_MBps": blob / 1e6,
                "ratio": blob / raw,
            }
        )
    )


if __name__ == "__main__":
    main()
