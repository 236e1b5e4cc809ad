"""The ``switchy`` command line: identities, a listening node, a relay, a name registry,
ping, perf, requests to a router, a static file server, a demo and simulated scenarios."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from switchy.stack.errors import P2PError

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
    from switchy.stack.identity import KeyPair, load_or_create_key

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
    """``switchy listen``: serve the default protocols; optionally also through relays
    (``--relay``) and under a name at registries (``--register NAME --registry ADDR``)."""
    from switchy.presets import default_node

    if args.register is not None and not args.registry:
        print("switchy: error: --register needs --registry MULTIADDR", file=sys.stderr)
        return 2
    key = _load_key(args.key, create=args.key is not None)
    services: list[Any] = []
    backend = None
    if args.relay:
        from switchy.transports.relay import RelayTransport

        services.append(RelayTransport(args.relay))
    if args.register is not None:
        from switchy.protocols.discovery.backends import RegistryBackend, register_name

        backend = RegistryBackend(args.registry)
        services.append(backend)
    async with default_node(key=key, services=services) as node:
        if args.addrs or not args.relay:
            await node.listen(*(args.addrs or [DEFAULT_LISTEN]))
        for _ in args.relay:  # one reservation per relay; each falls back to the others
            await node.listen("/p2p-circuit")
        for addr in node.full_addrs:
            print(addr)
        sys.stdout.flush()
        if backend is not None:
            await register_name(node, args.register)
            print(f"registered {args.register!r} with {backend.label}", file=sys.stderr)
        print(f"serving {', '.join(node.protocols)}; Ctrl-C to stop", file=sys.stderr)
        await _wait_for_signal()
        print("shutting down", file=sys.stderr)
    return 0


async def _cmd_ping(args: argparse.Namespace) -> int:
    from switchy.presets import default_node
    from switchy.protocols.ping import ping

    async with default_node(key=_load_key(args.key, create=False)) as node:
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
    from switchy.presets import default_node
    from switchy.protocols.perf import perf

    async with default_node(key=_load_key(args.key, create=False)) as node:
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


async def _cmd_relay(args: argparse.Namespace) -> int:
    from switchy.presets import default_node
    from switchy.transports.relay import RelayConfig, RelayService

    config = RelayConfig(
        limit_data=args.limit_data,
        limit_duration=args.limit_duration,
        max_reservations=args.max_reservations,
    )
    key = _load_key(args.key, create=args.key is not None)
    async with default_node(key=key, services=[RelayService(config)]) as node:
        await node.listen(*(args.addrs or [DEFAULT_LISTEN]))
        for addr in node.full_addrs:
            print(addr)
        sys.stdout.flush()
        limits = f"{config.limit_data or 'unlimited'} bytes, {config.limit_duration or 'no'} s"
        print(
            f"relaying (circuit v2, limits per circuit: {limits}); Ctrl-C to stop", file=sys.stderr
        )
        await _wait_for_signal()
        print("shutting down", file=sys.stderr)
    return 0


async def _cmd_demo(args: argparse.Namespace) -> int:
    from switchy.demo import run_demo

    await run_demo(nodes=args.nodes)
    return 0


def _parse_seed(text: str) -> int | str:
    """A simulation seed: an integer when it looks like one, else the text itself."""
    try:
        return int(text)
    except ValueError:
        return text


def _cmd_sim(args: argparse.Namespace) -> int:
    """Run one simulated scenario (synchronously: it drives its own virtual-time loop)."""
    from switchy.scenarios import run_scenario

    with contextlib.ExitStack() as files:
        sink = files.enter_context(open(args.trace, "w", encoding="utf-8")) if args.trace else None
        result = run_scenario(args.scenario, seed=args.seed, nodes=args.nodes, trace_sink=sink)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        print(
            f"scenario {result.scenario}: {result.nodes} nodes, seed {result.seed!r}, "
            f"{result.virtual_s:.3f} s virtual in {result.wall_s:.3f} s wall, "
            f"{result.events} events"
        )
        for key, value in result.figures.items():
            print(f"  {key}: {value}")
        print(f"  trace digest: {result.digest}")
        print("ok" if result.ok else "FAILED: " + "; ".join(result.problems))
    if not result.ok:
        print(
            f"switchy: scenario {result.scenario} failed with seed {result.seed!r}; "
            f"rerun with --seed {result.seed} to reproduce",
            file=sys.stderr,
        )
        return 1
    return 0


async def _cmd_registry(args: argparse.Namespace) -> int:
    from switchy.presets import default_node
    from switchy.protocols.discovery.registry import RegistryService

    key = _load_key(args.key, create=args.key is not None)
    async with default_node(key=key, services=[RegistryService()]) as node:
        await node.listen(*(args.addrs or [DEFAULT_LISTEN]))
        for addr in node.full_addrs:
            print(addr)
        sys.stdout.flush()
        print("serving the name registry; Ctrl-C to stop", file=sys.stderr)
        await _wait_for_signal()
        print("shutting down", file=sys.stderr)
    return 0


async def _cmd_ping_by_name(args: argparse.Namespace) -> int:
    """``switchy ping``: with ``--registry``, a non-multiaddr target is a name to resolve first."""
    from switchy.presets import default_node
    from switchy.protocols.discovery.backends import RegistryBackend, discover
    from switchy.stack.addresses import with_peer

    if args.addr.startswith("/"):
        return await _cmd_ping(args)
    if not args.registry:
        print(
            f"switchy: error: invalid multiaddr {args.addr!r} "
            "(to ping it as a name, give --registry MULTIADDR)",
            file=sys.stderr,
        )
        return 2
    async with default_node(services=[RegistryBackend(args.registry)]) as resolver:
        found = await discover(resolver, args.addr)
        peer, addrs = found.peer_id, list(found.addrs)
    if not addrs:
        print(f"switchy: error: {args.addr!r} resolved to {peer} with no address", file=sys.stderr)
        return 1
    if not args.json:
        print(f"{args.addr} is {peer}", file=sys.stderr)
    # The resolved address carries the peer id: the connection authenticates it.
    args.addr = str(with_peer(addrs[0], peer))
    return await _cmd_ping(args)


async def _cmd_serve(args: argparse.Namespace) -> int:
    from switchy.presets import default_node
    from switchy.protocols.router import Router
    from switchy.protocols.router.static import StaticFiles

    router = Router().with_service(StaticFiles(args.static))
    key = _load_key(args.key, create=args.key is not None)
    async with default_node(key=key, services=[router]) as node:
        await node.listen(*(args.addrs or [DEFAULT_LISTEN]))
        for addr in node.full_addrs:
            print(addr)
        sys.stdout.flush()
        print(f"serving {args.static} at GET /files and /files/{{name}}", file=sys.stderr)
        await _wait_for_signal()
        print("shutting down", file=sys.stderr)
    return 0


class _Progress:
    """A one-line progress display on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self._start = self._last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._show(now)

    def _show(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-9) / 1e6
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {frac:6.1%} {self.done}/{self.total} B {rate:.1f} MB/s"
        else:
            text = f"{self.done} B {rate:.1f} MB/s"
        print(f"\r{text}", end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled:
            self._show(time.monotonic())
            print(file=sys.stderr)


async def _file_body(path: str) -> Any:
    with open(path, "rb") as f:  # noqa: ASYNC230 - chunks are read in a thread
        while chunk := await asyncio.to_thread(f.read, 256 * 1024):
            yield chunk


async def _cmd_request(args: argparse.Namespace) -> int:
    from switchy.presets import default_node
    from switchy.protocols.router import request

    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"switchy: error: --header needs NAME:VALUE, got {h!r}", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    body: Any = None
    if args.data is not None:
        if args.data.startswith("@"):
            path = args.data[1:]
            if not os.path.isfile(path):
                print(f"switchy: error: no file {path}", file=sys.stderr)
                return 2
            body = _file_body(path)
        else:
            body = args.data.encode()
    async with default_node(key=_load_key(args.key, create=False)) as node:
        resp = await request(
            node,
            args.addr,
            args.method.upper(),
            args.path,
            headers=headers,
            body=body,
            timeout=args.timeout,
            stream=True,
        )
        async with resp:
            if not resp.is_success:
                detail = (await resp.read(limit=4096)).decode(errors="replace").strip()
                print(resp.status_line + (f": {detail}" if detail else ""), file=sys.stderr)
                return 1
            # one local write per chunk; this loop serves nothing else meanwhile
            out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115, ASYNC230
            progress = _Progress(resp.length, sys.stderr.isatty())
            try:
                async for chunk in resp.iter_body():
                    out.write(chunk)
                    progress.update(len(chunk))
            finally:
                if args.output:
                    out.close()
                else:
                    out.flush()
            progress.finish()
    return 0


async def _cmd_chat(args: argparse.Namespace) -> int:
    from switchy.chat import chat_main

    return await chat_main(
        room=args.room,
        nick=args.nick,
        listen=args.listen or ("/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"),
        peers=args.peer,
        mdns=args.mdns,
        registry=args.registry,
        join=args.join,
    )


async def _cmd_send(args: argparse.Namespace) -> int:
    """``switchy send FILE``: print the file's ticket and serve it until interrupted."""
    from switchy.presets import default_node
    from switchy.protocols.blobs import BlobService

    blobs = BlobService()
    async with default_node(services=[blobs], listen=args.listen or [DEFAULT_LISTEN]) as node:
        ticket = blobs.add_file(args.file)
        print(ticket, flush=True)
        print(f"serving {args.file} as {node.peer_id}; Ctrl-C to stop", file=sys.stderr)
        await _wait_for_signal()
    return 0


async def _cmd_receive(args: argparse.Namespace) -> int:
    """``switchy receive TICKET``: fetch, verify and save the file (resumes a .part file)."""
    import json as _json

    from switchy.presets import default_node
    from switchy.protocols.blobs import Progress, Ticket, fetch

    ticket = Ticket.parse(args.ticket)
    bar = _Progress(None, enabled=not args.json and sys.stderr.isatty())

    def show(p: Progress) -> None:
        if args.json:
            print(_json.dumps({"done": p.done, "total": p.total, "resumed": p.resumed}),
                  file=sys.stderr, flush=True)
        else:
            bar.total = p.total
            bar.update(p.done - bar.done)

    async with default_node() as node:
        path = await fetch(node, ticket, args.out, progress=show)
    bar.finish()
    print(path)
    return 0


def _add_transfer_parsers(sub: Any) -> None:
    s = sub.add_parser("send", help="serve a file and print its ticket (/switchy/blobs/1.0.0)")
    s.add_argument("file", help="the file to send")
    s.add_argument("--listen", action="append", metavar="ADDR", help="listen address(es)")
    s.set_defaults(func=_cmd_send)
    s = sub.add_parser("receive", help="fetch the file of a ticket printed by send")
    s.add_argument("ticket")
    s.add_argument("--out", default=".", help="directory to save into (default .)")
    s.add_argument("--json", action="store_true", help="progress as JSON lines on stderr")
    s.set_defaults(func=_cmd_receive)


def _add_chat_parser(sub: Any) -> None:
    s = sub.add_parser("chat", help="chat in a room with other peers (gossipsub)")
    s.add_argument("--room", default="lobby", help="room name (default lobby)")
    s.add_argument("--nick", required=True, help="your nickname")
    s.add_argument("--listen", action="append", metavar="ADDR", help="listen address(es)")
    s.add_argument("--peer", action="append", default=[], metavar="ADDR", help="peer to dial")
    s.add_argument("--mdns", action="store_true", help="find peers on the LAN by mDNS")
    s.add_argument("--registry", metavar="ADDR", help="a name registry to register with")
    s.add_argument("--join", metavar="NICK", help="with --registry: dial this member")
    s.set_defaults(func=_cmd_chat)


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
    s.add_argument("--register", metavar="NAME", help="register NAME with --registry")
    s.add_argument("--registry", metavar="MULTIADDR", action="append", help="a name registry")
    s.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="MULTIADDR",
        help="also listen through this relay (…/p2p/<relay id>; repeat for several relays)",
    )
    s.set_defaults(func=_cmd_listen)

    from switchy.transports.relay.config import RelayConfig

    relay_defaults = RelayConfig()
    s = sub.add_parser("relay", help="run a circuit relay (v2) for peers that cannot be reached")
    s.add_argument("addrs", nargs="*", metavar="MULTIADDR", help=f"default {DEFAULT_LISTEN}")
    s.add_argument("--key", help="key file (created if missing); default: a fresh identity")
    s.add_argument(
        "--limit-data",
        type=parse_size,
        default=relay_defaults.limit_data,
        help="bytes per direction of a relayed connection, 0: none (default %(default)s)",
    )
    s.add_argument(
        "--limit-duration",
        type=int,
        default=relay_defaults.limit_duration,
        help="seconds a relayed connection may last, 0: no limit (default %(default)s)",
    )
    s.add_argument(
        "--max-reservations",
        type=int,
        default=relay_defaults.max_reservations,
        help="reservations held at once (default %(default)s)",
    )
    s.set_defaults(func=_cmd_relay)

    s = sub.add_parser(
        "ping", help="ping a peer (a multiaddr, a …/p2p-circuit/p2p/<id> address, or a name)"
    )
    s.add_argument("addr", metavar="MULTIADDR|NAME")
    s.add_argument("-c", "--count", type=int, default=5, help="number of pings (default 5)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--key", help="key file to use (default: a fresh identity)")
    s.add_argument("--registry", metavar="MULTIADDR", action="append", help="resolve NAME here")
    s.set_defaults(func=_cmd_ping_by_name)

    s = sub.add_parser("registry", help="run a name registry (/switchy/discovery/1.0.0)")
    s.add_argument("addrs", nargs="*", metavar="MULTIADDR", help=f"default {DEFAULT_LISTEN}")
    s.add_argument("--key", help="key file (created if missing); default: a fresh identity")
    s.set_defaults(func=_cmd_registry)

    s = sub.add_parser("perf", help="measure throughput to a peer (libp2p perf)")
    s.add_argument("addr", metavar="MULTIADDR")
    s.add_argument("--upload", type=parse_size, default=0, help="bytes to send (e.g. 100M)")
    s.add_argument("--download", type=parse_size, default=0, help="bytes to receive")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--key", help="key file to use (default: a fresh identity)")
    s.set_defaults(func=_cmd_perf)

    s = sub.add_parser("serve", help="serve a folder's files over the request router")
    s.add_argument("--static", required=True, metavar="DIR", help="folder to serve")
    s.add_argument("addrs", nargs="*", metavar="MULTIADDR", help=f"default {DEFAULT_LISTEN}")
    s.add_argument("--key", help="key file (created if missing); default: a fresh identity")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("request", help="send a request to a peer's router")
    s.add_argument("addr", metavar="MULTIADDR")
    s.add_argument("method", metavar="METHOD", help="GET, POST, PUT, DELETE or PATCH")
    s.add_argument("path", metavar="PATH", help="e.g. /files/song.ogg or /tracks?limit=5")
    s.add_argument("--header", action="append", default=[], metavar="K:V", help="repeatable")
    s.add_argument("--data", metavar="@FILE|TEXT", help="request body: text, or @file")
    s.add_argument("--output", metavar="FILE", help="write the body here (default stdout)")
    s.add_argument("--timeout", type=float, default=None, help="seconds to wait for the answer")
    s.add_argument("--key", help="key file to use (default: a fresh identity)")
    s.set_defaults(func=_cmd_request)

    s = sub.add_parser("demo", help="run several nodes in this process and show them talking")
    s.add_argument("--nodes", type=int, default=3, help="number of nodes (2 or more)")
    s.set_defaults(func=_cmd_demo)

    from switchy.scenarios import SCENARIOS

    s = sub.add_parser("sim", help="run a scenario on the deterministic network simulator")
    s.add_argument("--scenario", choices=sorted(SCENARIOS), default="mesh")
    s.add_argument("--seed", type=_parse_seed, default=1, help="same seed, same run (default 1)")
    s.add_argument("--nodes", type=int, default=10, help="number of nodes (default 10)")
    s.add_argument("--trace", metavar="FILE", help="write the event trace as JSON lines")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_sim)
    _add_chat_parser(sub)
    _add_transfer_parsers(sub)
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
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int] | int] = args.func
    try:
        result = func(args)
        return result if isinstance(result, int) else asyncio.run(result)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (P2PError, OSError) as exc:
        print(f"switchy: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
