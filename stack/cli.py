"""The ``switchy`` command line: identities, a listening node, ping, perf and a demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from stack.errors import P2PError

__all__ = ["main"]

#: Where ``switchy id`` keeps the identity when no ``--key`` is given.
DEFAULT_KEY_PATH = (
    Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "switchy" / "identity.key"
)
#: Listen address used by ``switchy listen`` when none is given.
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"

_SUFFIXES = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_size(text: str) -> int:
    """Parse a byte count like ``1048576``, ``10M``, ``64KiB`` or ``1G``."""
    t = text.strip().lower().removesuffix("b")
    num = t.rstrip("kmgi")
    suffix = t[len(num) :]
    if suffix not in _SUFFIXES or not num:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 1048576, 10M, 64KiB)")
    try:
        value = float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"size must not be negative: {text!r}")
    return int(value * _SUFFIXES[suffix])


def _load_key(path: str | None, *, create: bool) -> Any:
    from stack.identity import KeyPair, load_or_create_key

    if path is None:
        return KeyPair.generate() if not create else load_or_create_key(DEFAULT_KEY_PATH)
    return load_or_create_key(path) if create else KeyPair.load(path)


async def _cmd_id(args: argparse.Namespace) -> int:
    path = args.key or str(DEFAULT_KEY_PATH)
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existed = Path(path).exists()
    key = _load_key(path, create=True)
    if args.json:
        print(
            json.dumps(
                {
                    "peer_id": str(key.peer_id),
                    "public_key": key.public_bytes.hex(),
                    "key_file": path,
                    "created": not existed,
                }
            )
        )
    else:
        print(key.peer_id)
        print(f"{'created' if not existed else 'key file'}: {path}", file=sys.stderr)
    return 0


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _cmd_listen(args: argparse.Namespace) -> int:
    from stack.node import Node

    key = _load_key(args.key, create=args.key is not None)
    addrs = args.addrs or [DEFAULT_LISTEN]
    async with Node.default(key=key) as node:
        await node.listen(*addrs)
        for addr in node.full_addrs:
            print(addr)
        sys.stdout.flush()
        print(f"serving {', '.join(node.protocols)}; Ctrl-C to stop", file=sys.stderr)
        await _wait_for_signal()
        print("shutting down", file=sys.stderr)
    return 0


async def _cmd_ping(args: argparse.Namespace) -> int:
    from protocols.ping import ping
    from stack.node import Node

    async with Node.default(key=_load_key(args.key, create=False)) as node:
        conn = await node.connect(args.addr)
        rtts: list[float] = []
        for i in range(args.count):
            rtt = (await ping(node, conn.remote_peer, 1))[0]
            rtts.append(rtt)
            if not args.json:
                print(f"pong from {conn.remote_peer.fmt_short()}: seq={i} time={rtt * 1e3:.3f} ms")
        ms = [r * 1e3 for r in rtts]
        if args.json:
            print(
                json.dumps(
                    {
                        "peer_id": str(conn.remote_peer),
                        "count": len(ms),
                        "rtts_ms": ms,
                        "min_ms": min(ms),
                        "median_ms": statistics.median(ms),
                        "max_ms": max(ms),
                    }
                )
            )
        else:
            print(
                f"{len(ms)} pings: min {min(ms):.3f} / median {statistics.median(ms):.3f} "
                f"/ max {max(ms):.3f} ms"
            )
    return 0


async def _cmd_perf(args: argparse.Namespace) -> int:
    from protocols.perf import perf
    from stack.node import Node

    async with Node.default(key=_load_key(args.key, create=False)) as node:
        r = await perf(node, args.addr, args.upload, args.download)
    up = r.upload_bytes / r.upload_seconds / 1e6 if r.upload_seconds else 0.0
    down = r.download_bytes / r.download_seconds / 1e6 if r.download_seconds else 0.0
    if args.json:
        print(
            json.dumps(
                {
                    "upload_bytes": r.upload_bytes,
                    "download_bytes": r.download_bytes,
                    "upload_seconds": r.upload_seconds,
                    "download_seconds": r.download_seconds,
                    "upload_MBps": up,
                    "download_MBps": down,
                }
            )
        )
    else:
        print(f"upload   {r.upload_bytes} bytes in {r.upload_seconds:.3f} s ({up:.1f} MB/s)")
        print(f"download {r.download_bytes} bytes in {r.download_seconds:.3f} s ({down:.1f} MB/s)")
    return 0


async def _cmd_demo(args: argparse.Namespace) -> int:
    from stack.demo import run_demo

    await run_demo(nodes=args.nodes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``switchy``."""
    p = argparse.ArgumentParser(
        prog="switchy",
        description="switchy-p2p: direct, encrypted peer-to-peer connections (libp2p-compatible)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("id", help="create or show this machine's identity")
    s.add_argument("--key", help=f"key file (default {DEFAULT_KEY_PATH})")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_id)

    s = sub.add_parser("listen", help="serve ping, identify, echo and perf")
    s.add_argument(
        "addrs",
        nargs="*",
        metavar="MULTIADDR",
        help=f"TCP (/ip4/…/tcp/N) or QUIC (/ip4/…/udp/N/quic-v1); default {DEFAULT_LISTEN}",
    )
    s.add_argument("--key", help="key file (created if missing); default: a fresh identity")
    s.set_defaults(func=_cmd_listen)

    s = sub.add_parser("ping", help="ping a peer")
    s.add_argument("addr", metavar="MULTIADDR")
    s.add_argument("-c", "--count", type=int, default=5, help="number of pings (default 5)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--key", help="key file to use (default: a fresh identity)")
    s.set_defaults(func=_cmd_ping)

    s = sub.add_parser("perf", help="measure throughput to a peer (libp2p perf)")
    s.add_argument("addr", metavar="MULTIADDR")
    s.add_argument("--upload", type=parse_size, default=0, help="bytes to send (e.g. 100M)")
    s.add_argument("--download", type=parse_size, default=0, help="bytes to receive")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--key", help="key file to use (default: a fresh identity)")
    s.set_defaults(func=_cmd_perf)

    s = sub.add_parser("demo", help="run several nodes in this process and show them talking")
    s.add_argument("--nodes", type=int, default=3, help="number of nodes (2 or more)")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchy`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "count", 1) < 1:
        print("switchy: error: --count must be at least 1", file=sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.func
    try:
        return asyncio.run(func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (P2PError, OSError) as exc:
        print(f"switchy: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
