"""Noise core benchmarks; prints one JSON object.

Figures (one process, no I/O):
- transport encrypt and decrypt throughput in MB/s for several write sizes
  (decrypt is fed the wire bytes in 256 KiB chunks, as a socket would deliver them);
- complete handshakes per second (both sides, with per-identity credentials made once).

Usage: ``python -m bench.bench_noise [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from switchy.stack.identity import KeyPair
from switchy.stack.security.noise_core import NoiseCredentials, NoiseHandshake, NoiseTransport

READ_CHUNK = 256 * 1024


def _pair() -> tuple[NoiseTransport, NoiseTransport]:
    a = NoiseCredentials.create(KeyPair.from_seed(b"\x01" * 32))
    b = NoiseCredentials.create(KeyPair.from_seed(b"\x02" * 32))
    init, resp = _handshake(a, b)
    return init.transport()[0], resp.transport()[0]


def _handshake(a: NoiseCredentials, b: NoiseCredentials) -> tuple[NoiseHandshake, NoiseHandshake]:
    init = NoiseHandshake(True, a, expected_peer=b.peer_id)
    resp = NoiseHandshake(False, b)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    resp.receive_data(init.data_to_send())
    assert init.complete and resp.complete
    return init, resp


def _throughput(write_size: int, total: int) -> dict[str, float]:
    send, recv = _pair()
    data = bytes(write_size)
    writes = max(1, total // write_size)
    start = time.perf_counter()
    wire = [send.encrypt(data) for _ in range(writes)]
    enc = time.perf_counter() - start
    stream = b"".join(wire)
    chunks = [stream[i : i + READ_CHUNK] for i in range(0, len(stream), READ_CHUNK)]
    got = 0
    start = time.perf_counter()
    for chunk in chunks:
        for piece in recv.decrypt(chunk):
            got += len(piece)
    dec = time.perf_counter() - start
    assert got == writes * write_size
    mb = writes * write_size / 1e6
    return {"encrypt_MBps": round(mb / enc, 1), "decrypt_MBps": round(mb / dec, 1)}


def _handshakes(n: int) -> dict[str, float]:
    a = NoiseCredentials.create(KeyPair.from_seed(b"\x03" * 32))
    b = NoiseCredentials.create(KeyPair.from_seed(b"\x04" * 32))
    start = time.perf_counter()
    for _ in range(n):
        _handshake(a, b)
    elapsed = time.perf_counter() - start
    return {
        "handshakes_per_s": round(n / elapsed, 1),
        "handshake_both_sides_us": round(elapsed / n * 1e6, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """All figures as a dict."""
    total = (32 if quick else 256) * 1024 * 1024
    results: dict[str, Any] = {}
    for size in (1024, 16 * 1024, 64 * 1024, 1024 * 1024):
        results[f"transport_{size // 1024}KiB_writes"] = _throughput(size, total)
    results.update(_handshakes(100 if quick else 1000))
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes, fewer rounds")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=2))


if __name__ == "__main__":
    main()
