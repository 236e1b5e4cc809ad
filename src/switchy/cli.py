"""The ``switchy`` command line: identities, a listening node, a relay, a name registry,
ping, perf, requests to a router, a static file server, a demo and simulated scenarios.

Exit status: 0 on success, 1 for a runtime or network failure (a peer unreachable,
refused, timed out), 2 for a usage error or bad input (options, addresses, key files,
``SWITCHY_*`` variables), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from switchy.stack import __version__
from switchy.stack.errors import (
    InvalidConfiguration,
    InvalidPeerId,
    P2PError,
    UnsupportedAddress,
)

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "default_key_path", "main"]

#: Exit status of a runtime or network failure.
EXIT_FAILURE = 1
#: Exit status of a usage error or bad input (argparse uses it too).
EXIT_USAGE = 2
#: Errors that mean the user's input was wrong: exit status :data:`EXIT_USAGE`.
_BAD_INPUT = (InvalidConfiguration, InvalidPeerId, UnsupportedAddress)
#: Log levels of ``--log-level`` and ``SWITCHY_LOG_LEVEL``.
LOG_LEVELS = ("debug", "info", "warning", "error")
_EXIT_HELP = (
    "exit status: 0 success; 1 a runtime or network failure (unreachable, refused, timed "
    "out); 2 a usage error or bad input (options, addresses, key files, SWITCHY_* "
    "variables); 130 interrupted.  SWITCHY_<SETTING> variables (e.g. SWITCHY_DIAL_TIMEOUT=5) "
    "set the network configuration, SWITCHY_LOG_LEVEL the log level."
)


def default_key_path() -> Path:
    """Where ``switchy id`` and ``switchy listen`` keep the identity when no ``--key`` is
    given: ``$XDG_CONFIG_HOME/switchy/identity.key`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "switchy" / "identity.key"


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


def _load_key(path: str | os.PathLike[str] | None, *, create: bool) -> Any:
    """A command's identity: the key file at ``path`` (made first if missing and
    ``create``), or a fresh throwaway one when ``path`` is ``None``.

    A key file that cannot be used raises :class:`InvalidConfiguration` naming the
    file and what is wrong with it (bad input: exit status 2).
    """
    from switchy.stack.identity import KeyPair, load_or_create_key

    if path is None:
        return KeyPair.generate()
    target = Path(path)
    if target.is_dir():
        raise InvalidConfiguration(
            f"key file {target} is a directory; give the path of a key file "
            "(switchy id --key FILE creates one)"
        )
    if not create and not target.exists():
        raise InvalidConfiguration(
            f"no key file at {target} (create one with: switchy id --key {target})"
        )
    try:
        if create:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return load_or_create_key(target)
        return KeyPair.load(target)
    except OSError as exc:
        raise InvalidConfiguration(f"cannot use key file {target}: {exc.strerror or exc}") from None
    except P2PError as exc:  # group/world-readable, or not a key
        text = str(exc)
        raise InvalidConfiguration(
            text if str(target) in text else f"key file {target} is not a usable key: {text}"
        ) from None


async def _cmd_id(args: argparse.Namespace) -> int:
    path = Path(args.key) if args.key else default_key_path()
    existed = path.exists()
    key = _load_key(path, create=True)
    if args.json:
        print(
            json.dumps(
                {
                    "peer_id": str(key.peer_id),
                    "public_key": key.public_bytes.hex(),
                    "key_file": str(path),
                    "created": not existed,
                }
            )
        )
    else:
        print(key.peer_id)
        print(f"{'created' if not existed else 'key file'}: {path}", file=sys.stderr)
    return 0


def _stop_signal() -> asyncio.Event:
    """An event that SIGINT and SIGTERM set from now on (the handlers go with the loop).

    Serving commands call it first, so a Ctrl-C at any point after they printed
    their addresses is a clean shutdown (exit status 0), not an interruption.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _node(
    args: argparse.Namespace,
    *,
    key: Any = None,
    services: Sequence[Any] = (),
    config: Any = None,
) -> Any:
    """The node of a command: :func:`~switchy.presets.default_node` with the command's
    network configuration (``SWITCHY_*``, ``--limit`` and the other limit options, read by
    :func:`main`) unless ``config`` (derived from it) is given.  Every command that starts
    a node starts it here."""
    from switchy.presets import default_node

    return default_node(
        key=key, services=services, config=args.config if config is None else config
    )


def _print_addrs(node: Any) -> None:
    """The node's listen addresses (with its peer id) on stdout, one a line."""
    for addr in node.full_addrs:
        print(addr)
    sys.stdout.flush()


async def _until_stopped(stop: asyncio.Event, doing: str) -> None:
    """Say what is served (stderr) and wait for Ctrl-C or SIGTERM."""
    print(f"{doing}; Ctrl-C to stop", file=sys.stderr)
    await stop.wait()
    print("shutting down", file=sys.stderr)


async def _serve_one_service(args: argparse.Namespace, service: Any, doing: str) -> int:
    """``relay``, ``registry``, ``serve``: a node (the key file ``--key``, else a fresh
    identity) with ``service`` on ``args.addrs``, with ``--metrics``, until stopped."""
    stop = _stop_signal()
    key = _load_key(args.key, create=True)
    async with _node(args, key=key, services=[service]) as node, _metrics_server(node, args):
        await node.listen(*(args.addrs or [DEFAULT_LISTEN]))
        _print_addrs(node)
        await _until_stopped(stop, doing)
    return 0


async def _cmd_listen(args: argparse.Namespace) -> int:
    """``switchy listen``: serve the default protocols; optionally also through relays
    (``--relay``) and under a name at registries (``--register NAME --registry ADDR``)."""
    stop = _stop_signal()
    from switchy.presets import listen_with_relays, relay_client

    if args.register is not None and not args.registry:
        raise InvalidConfiguration("--register needs --registry MULTIADDR")
    if args.ephemeral and args.key:
        raise InvalidConfiguration("--ephemeral and --key exclude each other")
    # the identity `switchy id` made (same default file), so names and peers stay valid
    key_file = None if args.ephemeral else Path(args.key) if args.key else default_key_path()
    key = _load_key(key_file, create=True)
    services: list[Any] = []
    backend = None
    if args.relay:
        services.append(relay_client(args.relay))
    if args.register is not None:
        from switchy.protocols.discovery.backends import RegistryBackend, register_name

        backend = RegistryBackend(args.registry)
        services.append(backend)
    config = _punch_config(args, _reach_config(args))
    async with (
        _node(args, key=key, services=services, config=config) as node,
        _metrics_server(node, args),
    ):
        addrs = args.addrs or ([] if args.relay else [DEFAULT_LISTEN])
        await listen_with_relays(node, addrs, args.relay)
        _print_addrs(node)
        _report_reachability(node)
        if backend is not None:
            await register_name(node, args.register)
            print(f"registered {args.register!r} with {backend.label}", file=sys.stderr)
        who = f"key file {key_file}" if key_file else "an ephemeral identity"
        await _until_stopped(stop, f"serving {', '.join(node.protocols)} as {node.peer_id} ({who})")
    return 0


def _reach_config(args: argparse.Namespace) -> Any:
    """The node config of a command with ``--public-network`` options."""
    import attrs

    config = args.config  # NetworkConfig.from_env(), read (and checked) by main()
    if args.public_network:
        config = attrs.evolve(config, public_networks=tuple(args.public_network))
    return config


def _report_reachability(node: Any) -> None:
    """Print (stdout, one line each, after the listen addresses) the reachability as it is
    learned and each confirmed external or relay address as it appears or goes."""
    from switchy.stack.addresses import with_peer
    from switchy.transports.relay.autorelay import AutoRelay

    relay = next((s for s in node.services if isinstance(s, AutoRelay)), None)
    shown: dict[str, set[str]] = {"external": set(), "relay": set()}

    def addresses_changed() -> None:
        current = {
            "external": {str(with_peer(a, node.peer_id)) for a in node.addresses.confirmed()},
            "relay": {
                str(with_peer(a, node.peer_id))
                for a in node.announced_addrs
                if "/p2p-circuit" in str(a)
            },
        }
        for kind in ("external", "relay"):
            for a in sorted(current[kind] - shown[kind]):
                print(f"{kind}: {a}", flush=True)
            for a in sorted(shown[kind] - current[kind]):
                print(f"{kind} gone: {a}", flush=True)
            shown[kind] = current[kind]

    def reachability_changed(_old: Any, new: Any) -> None:
        print(f"reachability: {new.value}", flush=True)

    node.addresses.on_changed(addresses_changed)
    node.addresses.on_reachability_changed(reachability_changed)
    if relay is not None:
        print(f"reachability: {node.reachability.value}", flush=True)


async def _cmd_nat_status(args: argparse.Namespace) -> int:
    """``switchy nat-status SERVER...``: ask AutoNAT servers whether our addresses are
    reachable; one line (or JSON object) per server and address."""
    from switchy.protocols.autonat import AutoNATService, Verdict, probe
    from switchy.protocols.identify import IdentifyService

    autonat = AutoNATService(server=False, probe_automatically=False)
    key = _load_key(args.key, create=False)
    async with _node(args, key=key, services=[autonat], config=_reach_config(args)) as node:
        await node.listen(*(args.listen or ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]))
        ident = next(s for s in node.services if isinstance(s, IdentifyService))
        for server in args.servers:  # connect and identify: our observed addresses
            conn = await node.connect(server)
            with contextlib.suppress(TimeoutError):
                await ident.wait_identified(conn.remote_peer, timeout=10)
        addrs = args.addr or autonat.candidate_addrs()
        if not addrs:
            raise InvalidConfiguration(
                "none of our addresses is public "
                f"({', '.join(map(str, node.announced_addrs))}); "
                "give --addr, or --public-network for a private network"
            )
        results = await probe(node, args.servers, addrs)
    rows = [
        {
            "addr": str(r.addr),
            "server": str(r.server),
            "version": r.version,
            "verdict": r.verdict.value,
            "detail": r.detail,
        }
        for r in results
    ]
    if args.json:
        print(json.dumps({"results": rows, "reachability": autonat.reachability.value}))
    else:
        for row in rows:
            detail = f" ({row['detail']})" if row["detail"] else ""
            print(f"{row['addr']}: {row['verdict']} by {row['server']} (v{row['version']}){detail}")
        print(f"reachability: {autonat.reachability.value}")
    conclusive = any(r.verdict in (Verdict.REACHABLE, Verdict.UNREACHABLE) for r in results)
    return 0 if conclusive else 1


class _DirectWatch:
    """``switchy ping`` through a relay: when a direct connection to the peer came up
    (hole punching), measured from the relayed connection."""

    def __init__(self, node: Any, conn: Any) -> None:
        self.peer = conn.remote_peer
        self.relayed = bool(conn.is_limited)
        self.start = time.monotonic()
        self.after: float | None = None
        self.addr: str | None = None
        node.on_connection_event(self._event)

    def _event(self, event: Any) -> None:
        conn = event.connection
        first = self.relayed and self.after is None
        if first and event.kind == "connected" and event.peer == self.peer and not conn.is_limited:
            self.after = time.monotonic() - self.start
            self.addr = str(conn.remote_addr)

    @property
    def direct(self) -> bool:
        """Whether pings now go over a direct connection."""
        return not self.relayed or self.after is not None


def _ms_summary(label: str, ms: Sequence[float]) -> str:
    if not ms:
        return f"{label}: none"
    return f"{label}: min {min(ms):.3f} / median {statistics.median(ms):.3f} ms"


async def _cmd_ping(args: argparse.Namespace) -> int:
    from switchy.protocols.ping import ping

    config = _punch_config(args, args.config)
    async with _node(args, key=_load_key(args.key, create=False), config=config) as node:
        relayed_target = "/p2p-circuit" in args.addr
        if relayed_target and config.hole_punching:
            # a listening port to dial from and to punch (the peer's dials meet ours)
            await node.listen("/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0")
        conn = await node.connect(args.addr)
        watch = _DirectWatch(node, conn)
        interval = args.interval if args.interval is not None else (1.0 if conn.is_limited else 0)
        rtts: list[float] = []
        paths: list[str] = []
        shown = False
        for i in range(args.count):
            if i and interval:
                await asyncio.sleep(interval)
            path = "direct" if watch.direct else "relayed"
            rtt = (await ping(node, conn.remote_peer, 1))[0]
            rtts.append(rtt)
            paths.append(path)
            if watch.after is not None and not shown and not args.json:
                shown = True
                print(f"connection became direct after {watch.after * 1e3:.0f} ms ({watch.addr})")
            if not args.json:
                via = f" ({path})" if watch.relayed else ""
                print(
                    f"pong from {conn.remote_peer.fmt_short()}: seq={i} "
                    f"time={rtt * 1e3:.3f} ms{via}"
                )
        ms = [r * 1e3 for r in rtts]
        split = {
            "relayed_rtts_ms": [m for m, p in zip(ms, paths, strict=True) if p == "relayed"],
            "direct_rtts_ms": [m for m, p in zip(ms, paths, strict=True) if p == "direct"],
        }
        if args.json:
            out: dict[str, Any] = {
                "peer_id": str(conn.remote_peer),
                "count": len(ms),
                "rtts_ms": ms,
                "min_ms": min(ms),
                "median_ms": statistics.median(ms),
                "max_ms": max(ms),
            }
            if watch.relayed:
                out["direct_after_ms"] = None if watch.after is None else watch.after * 1e3
                out["direct_addr"] = watch.addr
                out.update(split)
            print(json.dumps(out))
        else:
            print(
                f"{len(ms)} pings: min {min(ms):.3f} / median {statistics.median(ms):.3f} "
                f"/ max {max(ms):.3f} ms"
            )
            if watch.relayed:
                print(
                    f"{_ms_summary('relayed', split['relayed_rtts_ms'])}; "
                    f"{_ms_summary('direct', split['direct_rtts_ms'])}"
                )
                if watch.after is None:
                    print("the connection stayed relayed")
    return 0


def _punch_config(args: argparse.Namespace, config: Any) -> Any:
    """``config`` with hole punching off when ``--no-hole-punching`` was given."""
    import attrs

    if getattr(args, "no_hole_punching", False):
        return attrs.evolve(config, hole_punching=False)
    return config


def _add_hole_punching_option(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--no-hole-punching",
        action="store_true",
        help="keep relayed connections relayed (no DCUtR; also SWITCHY_HOLE_PUNCHING=0)",
    )


async def _cmd_perf(args: argparse.Namespace) -> int:
    from switchy.protocols.perf import perf

    if not args.upload and not args.download:
        raise InvalidConfiguration(
            "perf needs --upload SIZE and/or --download SIZE (e.g. --download 10M)"
        )
    async with _node(args, key=_load_key(args.key, create=False)) as node:
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
    from switchy.transports.relay import RelayConfig, RelayService

    config = RelayConfig(
        limit_data=args.limit_data,
        limit_duration=args.limit_duration,
        max_reservations=args.max_reservations,
    )
    limits = f"{config.limit_data or 'unlimited'} bytes, {config.limit_duration or 'no'} s"
    return await _serve_one_service(
        args, RelayService(config), f"relaying (circuit v2, limits per circuit: {limits})"
    )


async def _cmd_demo(args: argparse.Namespace) -> int:
    from switchy.demo import run_demo

    await run_demo(nodes=args.nodes, config=args.config)
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

    report = getattr(args, "report", None)
    buffer = io.StringIO() if report else None  # the report is made from the whole trace
    with contextlib.ExitStack() as files:
        sink = (
            buffer
            if buffer is not None
            else files.enter_context(open(args.trace, "w", encoding="utf-8"))
            if args.trace
            else None
        )
        result = run_scenario(args.scenario, seed=args.seed, nodes=args.nodes, trace_sink=sink)
    if buffer is not None:
        _write_sim_report(args, result, buffer.getvalue())
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


def _write_sim_report(args: argparse.Namespace, result: Any, trace: str) -> None:
    """``switchy sim --report FILE`` (and ``--trace FILE`` with it): write them."""
    from switchy.transports.sim.report import parse_trace, write_report

    if args.trace:
        Path(args.trace).write_text(trace, encoding="utf-8")
    summary = {
        "scenario": result.scenario,
        "seed": result.seed,
        "nodes": result.nodes,
        "events": result.events,
        "result": "ok" if result.ok else "FAILED: " + "; ".join(result.problems),
        "digest": result.digest[:16],
    }
    write_report(
        args.report,
        parse_trace(trace.splitlines()),
        title=f"switchy sim: {result.scenario}, seed {result.seed}",
        summary=summary,
    )
    print(f"report: {args.report}", file=sys.stderr)


async def _cmd_registry(args: argparse.Namespace) -> int:
    from switchy.protocols.discovery.registry import RegistryService

    return await _serve_one_service(args, RegistryService(), "serving the name registry")


async def _cmd_ping_by_name(args: argparse.Namespace) -> int:
    """``switchy ping``: with ``--registry``, a non-multiaddr target is a name to resolve first."""
    from switchy.protocols.discovery.backends import RegistryBackend, discover
    from switchy.stack.addresses import with_peer

    if args.addr.startswith("/"):
        return await _cmd_ping(args)
    if not args.registry:
        raise InvalidConfiguration(
            f"invalid multiaddr {args.addr!r}: a multiaddr starts with / "
            "(/ip4/192.0.2.1/tcp/4001/p2p/<peer id>); to ping it as a name, give --registry"
        )
    services = [RegistryBackend(args.registry)]
    async with _node(args, services=services) as resolver:
        found = await discover(resolver, args.addr)
        peer, addrs = found.peer_id, list(found.addrs)
    if not addrs:
        print(f"switchy: error: {args.addr!r} resolved to {peer} with no address", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        print(f"{args.addr} is {peer}", file=sys.stderr)
    # The resolved address carries the peer id: the connection authenticates it.
    args.addr = str(with_peer(addrs[0], peer))
    return await _cmd_ping(args)


async def _cmd_serve(args: argparse.Namespace) -> int:
    from switchy.protocols.router import Router
    from switchy.protocols.router.static import StaticFiles

    router = Router().with_service(StaticFiles(args.static))
    doing = f"serving {args.static} at GET /files and /files/{{name}}"
    return await _serve_one_service(args, router, doing)


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
            left = (self.total - self.done) / (rate * 1e6) if rate > 0 else 0.0
            eta = f" ETA {int(left) // 60}:{int(left) % 60:02d}" if self.done < self.total else ""
            text = f"[{bar:<30}] {frac:6.1%} {self.done}/{self.total} B {rate:.1f} MB/s{eta}"
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
    from switchy.protocols.router import request

    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise InvalidConfiguration(f"--header needs NAME:VALUE, got {h!r}")
        headers[name.strip()] = value.strip()
    body: Any = None
    if args.data is not None:
        if args.data.startswith("@"):
            path = args.data[1:]
            if not os.path.isfile(path):
                raise InvalidConfiguration(f"--data @{path}: no such file")
            body = _file_body(path)
        else:
            body = args.data.encode()
    async with _node(args, key=_load_key(args.key, create=False)) as node:
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
                return EXIT_FAILURE
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


def _seconds(*, zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, greater than 0 (or 0 too, ``zero``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= 0 if zero else value > 0) or value == float("inf"):
            want = "0 or more seconds" if zero else "a positive number of seconds"
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    return parse


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer within ``low``..``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            within = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {within}, got {value}")
        return value

    return parse


def _log_level(text: str) -> str:
    """An argparse type: one of :data:`LOG_LEVELS` (any case)."""
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (use {', '.join(LOG_LEVELS)})"
        )
    return level


def _add_common_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Options accepted before and after the subcommand.

    On subcommands their defaults are suppressed, so a value given before the
    subcommand is not overwritten by the subcommand's default.
    """
    default: Any = None if top else argparse.SUPPRESS
    g = parser.add_argument_group("logging (before or after the subcommand)")
    g.add_argument(
        "--log-level",
        type=_log_level,
        default=default,
        metavar="LEVEL",
        help="switchy's own log messages on stderr from LEVEL up: debug, info (listening, "
        "connections, reservations, refusals), warning (default), error; other libraries "
        "log warnings only.  Default: SWITCHY_LOG_LEVEL, else warning",
    )
    g.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=default,
        help="text (default) or json: one JSON object per line",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="-v: --log-level info, -vv: --log-level debug",
    )
    _add_limit_options(parser, default)


# --- resource limits (switchy.stack.limits) -----------------------------------------------


def _add_limit_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """``--limit`` and the per-IP options, before or after the subcommand."""
    g = parser.add_argument_group("resource limits (before or after the subcommand)")
    g.add_argument(
        "--limit",
        action="append",
        default=default,
        metavar="SCOPE.RESOURCE=VALUE",
        help="override a resource limit, e.g. system.conns=2000, peer.memory=32MiB, "
        "protocol:/ipfs/ping/1.0.0.streams=8 (repeat; added to SWITCHY_LIMITS); "
        "`switchy limits` shows them",
    )
    g.add_argument(
        "--max-inbound-per-ip",
        type=int,
        default=default,
        metavar="N",
        help="most inbound connections from one IP (default 64; SWITCHY_MAX_INBOUND_PER_IP)",
    )
    g.add_argument(
        "--max-outbound-per-ip",
        type=int,
        default=default,
        metavar="N",
        help="most outbound connections to one IP (default 64; SWITCHY_MAX_OUTBOUND_PER_IP)",
    )
    g.add_argument(
        "--limits-allow",
        dest="limits_allow",
        action="append",
        default=default,
        metavar="CIDR_OR_PEER",
        help="never refuse connections from this network or peer id (repeat)",
    )


def _limit_overrides(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, Any]:
    """The :class:`NetworkConfig` fields the limit options set (on top of the environment)."""
    from switchy.stack.config import ENV_PREFIX

    out: dict[str, Any] = {}
    if getattr(args, "limit", None):
        env = environ.get(ENV_PREFIX + "LIMITS", "")
        out["limits"] = (*(x for x in env.split(",") if x.strip()), *args.limit)
    if getattr(args, "max_inbound_per_ip", None) is not None:
        out["max_inbound_per_ip"] = args.max_inbound_per_ip
    if getattr(args, "max_outbound_per_ip", None) is not None:
        out["max_outbound_per_ip"] = args.max_outbound_per_ip
    if getattr(args, "limits_allow", None):
        env = environ.get(ENV_PREFIX + "LIMITS_ALLOWLIST", "")
        out["limits_allowlist"] = (*(x for x in env.split(",") if x.strip()), *args.limits_allow)
    return out


def _cmd_limits(args: argparse.Namespace) -> int:
    """``switchy limits``: the resource limits a node started now would have."""
    import attrs

    from switchy.stack.limits import UNLIMITED, LimitConfig

    lc = LimitConfig.from_network_config(args.config)

    def show(v: int) -> int | str:
        return "unlimited" if v >= UNLIMITED else v

    table = {k: {r: show(v) for r, v in attrs.asdict(lim).items()} for k, lim in lc.scopes.items()}
    info = {
        "scopes": table,
        "max_inbound_per_ip": lc.max_inbound_per_ip,
        "max_outbound_per_ip": lc.max_outbound_per_ip,
        "inbound_rate_per_ip": lc.inbound_rate_per_ip,
        "inbound_burst_per_ip": lc.inbound_burst_per_ip,
        "exempt_loopback": lc.exempt_loopback,
        "allowlist": list(lc.allowlist),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for kind, row in table.items():
        print(f"{kind:10} " + " ".join(f"{r}={v}" for r, v in row.items()))
    print(
        f"per IP: {lc.max_inbound_per_ip} inbound connections, "
        f"{lc.max_outbound_per_ip} outbound, "
        f"{lc.inbound_rate_per_ip:g}/s (burst {lc.inbound_burst_per_ip})"
        + (", loopback exempt" if lc.exempt_loopback else "")
    )
    if lc.allowlist:
        print("allowlist: " + ", ".join(lc.allowlist))
    return 0


# --- switchy dht --------------------------------------------------------------------------


def _dht_bytes(text: str) -> bytes:
    """A key or value on the command line: ``hex:...`` for bytes, else UTF-8 text."""
    return bytes.fromhex(text[4:]) if text.startswith("hex:") else text.encode()


def _dht_print(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result) if args.json else text)


async def _cmd_dht(args: argparse.Namespace) -> int:
    """``switchy dht``: a DHT server (``serve``) or one client operation through bootstrap
    peers (put, get, find-peer, provide, find-providers)."""
    stop = _stop_signal()
    from switchy.protocols.kad.service import KadDHT
    from switchy.stack.identity import PeerId

    if args.dht_cmd != "serve" and not args.bootstrap:
        raise InvalidConfiguration("give --bootstrap MULTIADDR (a DHT server)")
    key = _load_key(args.key, create=True)
    serve = args.dht_cmd in ("serve", "provide")  # a provider must be reachable as a server
    dht = KadDHT(mode="server" if serve else "client", bootstrap=args.bootstrap)
    async with _node(args, key=key, services=[dht]) as node:
        await node.listen(*(getattr(args, "addrs", None) or [DEFAULT_LISTEN]))
        await dht.bootstrap()
        if args.dht_cmd == "serve":
            _print_addrs(node)
            await _until_stopped(stop, f"serving the DHT ({len(dht.table or [])} peers known)")
            return 0
        if args.dht_cmd == "put":
            stored = await dht.put_value(_dht_bytes(args.record_key), _dht_bytes(args.value))
            _dht_print(args, {"stored_at": stored}, f"stored at {stored} peers")
        elif args.dht_cmd == "get":
            value = await dht.get_value(_dht_bytes(args.record_key))
            _dht_print(args, {"value_hex": value.hex()}, value.decode(errors="replace"))
        elif args.dht_cmd == "find-peer":
            addrs = [str(a) for a in await dht.find_peer(PeerId.from_string(args.peer))]
            _dht_print(args, {"peer_id": args.peer, "addrs": addrs}, "\n".join(addrs))
        elif args.dht_cmd == "provide":
            told = await dht.provide(_dht_bytes(args.record_key))
            _dht_print(args, {"told": told}, f"announced to {told} peers")
        else:
            found = await dht.find_providers(_dht_bytes(args.record_key))
            rows = [{"peer_id": str(p), "addrs": [str(a) for a in addrs]} for p, addrs in found]
            _dht_print(args, {"providers": rows}, "\n".join(str(p) for p, _ in found))
    return 0


#: ``--key`` of the commands that keep their identity (``switchy id``'s key file).
_STABLE_KEY_HELP = f"key file (created if missing); default {default_key_path()}, as for switchy id"


def _add_client_options(s: argparse.ArgumentParser, *, json_help: str | None) -> None:
    """``--key`` (a throwaway identity without it) and, with ``json_help``, ``--json``."""
    s.add_argument("--key", help="key file to use (default: a fresh identity)")
    if json_help is not None:
        s.add_argument("--json", action="store_true", help=json_help)


def _add_server_options(s: argparse.ArgumentParser) -> None:
    """``relay``, ``registry``, ``serve``: listen addresses, ``--key``, ``--metrics``."""
    s.add_argument("addrs", nargs="*", metavar="MULTIADDR", help=f"default {DEFAULT_LISTEN}")
    s.add_argument("--key", help="key file (created if missing); default: a fresh identity")
    _add_metrics_option(s)


def _add_list_option(
    s: argparse.ArgumentParser, flag: str, help_text: str, metavar: str = "MULTIADDR"
) -> None:
    """A repeatable option (``action="append"``) whose value is a list, empty by default."""
    s.add_argument(flag, action="append", default=[], metavar=metavar, help=help_text)


def _add_registry_option(s: argparse.ArgumentParser, help_text: str) -> None:
    """``--registry MULTIADDR`` (repeatable): a name registry."""
    s.add_argument("--registry", metavar="MULTIADDR", action="append", help=help_text)


def _add_dht_parser(sub: Any) -> None:
    s = sub.add_parser("dht", help="the Kademlia DHT: serve, put/get, find peers and providers")
    dsub = s.add_subparsers(dest="dht_cmd", required=True)
    for name, help_text in (
        ("serve", "run a DHT server (a bootstrap node for others)"),
        ("put", "store a record (KEY VALUE; validated: /pk/ and /switchy-name/ records)"),
        ("get", "fetch a record's best value"),
        ("find-peer", "find a peer's addresses"),
        ("provide", "announce that this node provides KEY"),
        ("find-providers", "find who provides KEY"),
    ):
        # the common options (--limit, --log-level, ...) after `serve` etc. as well
        d = dsub.add_parser(name, help=help_text, parents=sub.parents)
        if name == "serve":
            d.add_argument("addrs", nargs="*", help=f"listen addresses (default {DEFAULT_LISTEN})")
        elif name == "find-peer":
            d.add_argument("peer", help="peer id")
        else:
            d.add_argument("record_key", metavar="KEY", help="text, or hex:... for bytes")
        if name == "put":
            d.add_argument("value", metavar="VALUE", help="text, or hex:... for bytes")
        _add_list_option(d, "--bootstrap", "a DHT server to join through (repeatable)")
        _add_client_options(d, json_help="print one JSON object")
        d.set_defaults(func=_cmd_dht)


def _metrics_address(text: str) -> tuple[str, int]:
    """``--metrics HOST:PORT``, checked by argparse (a usage error when malformed)."""
    from switchy.monitoring import parse_host_port

    try:
        return parse_host_port(text)
    except InvalidConfiguration as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_metrics_option(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--metrics",
        type=_metrics_address,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and /healthz here, e.g. 127.0.0.1:9464 "
        "(needs the metrics extra: pip install 'switchy-p2p[metrics]')",
    )


@contextlib.asynccontextmanager
async def _metrics_server(node: Any, args: argparse.Namespace) -> Any:
    """While inside, serve ``node``'s metrics at ``--metrics`` (nothing without it)."""
    if getattr(args, "metrics", None) is None:
        yield None
        return
    from switchy.monitoring import MetricsServer

    host, port = args.metrics
    async with MetricsServer(node, host, port) as server:
        print(f"metrics: {server.url}", file=sys.stderr, flush=True)
        yield server


def _add_public_network(s: argparse.ArgumentParser) -> None:
    _add_list_option(
        s,
        "--public-network",
        "count this IP network as public (AutoNAT, announced addresses); repeatable",
        "CIDR",
    )


def _add_nat_status_parser(sub: Any) -> None:
    s = sub.add_parser(
        "nat-status", help="ask peers' AutoNAT servers whether our addresses are reachable"
    )
    s.add_argument("servers", nargs="+", metavar="SERVER", help="…/p2p/<id> of an AutoNAT server")
    s.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="listen here (default: TCP and QUIC on 0.0.0.0, free ports); repeatable",
    )
    s.add_argument(
        "--addr",
        action="append",
        metavar="MULTIADDR",
        help="the address to test (default: our public listen and observed ones); repeatable",
    )
    _add_client_options(s, json_help="print one JSON object")
    _add_public_network(s)
    s.set_defaults(func=_cmd_nat_status)


# --- HTTP and TCP over switchy: expose, gateway, forward -----------------------------------

#: Loopback hosts: the gateway and forward listen on them unless told otherwise.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _peer_ids(texts: Sequence[str]) -> Any:
    from switchy.stack.identity import PeerId

    return [PeerId.from_string(t) for t in texts]


def _stable_key(path: str | None) -> Any:
    """The stored identity (``switchy id``'s key file unless ``--key``): addresses handed
    out keep working after a restart."""
    path = path or str(default_key_path())
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return _load_key(path, create=True)


def _show_refusals() -> None:
    """Refused peers and bad requests are logged at INFO by the HTTP modules: show them."""
    logging.getLogger("switchy.protocols.http").setLevel(logging.INFO)


async def _cmd_expose(args: argparse.Namespace) -> int:
    """``switchy expose http://HOST:PORT[/PREFIX]`` or ``switchy expose tcp HOST:PORT``."""
    stop = _stop_signal()
    from switchy.presets import listen_with_relays, relay_client
    from switchy.protocols.http.proxy import HttpProxyService
    from switchy.protocols.http.tcp import TcpExposeService

    spec = list(args.target)
    service: Any
    if len(spec) == 2 and spec[0] == "tcp":
        try:
            host, port = _host_port(spec[1])
        except argparse.ArgumentTypeError as exc:
            raise InvalidConfiguration(str(exc)) from None
        kind = f"TCP service {host}:{port}"
        service = TcpExposeService(host, port, allow=_peer_ids(args.allow) if args.allow else None)
    elif len(spec) == 1 and spec[0].startswith("http://"):
        kind = f"HTTP server {spec[0]}"
        allow = _peer_ids(args.allow) if args.allow else None
        service = HttpProxyService(spec[0], allow=allow, limits=_http_limits(args))
    else:
        raise InvalidConfiguration("expose http://HOST:PORT[/PREFIX] or expose tcp HOST:PORT")
    _show_refusals()
    if args.register is not None and not (args.registry or args.mdns):
        raise InvalidConfiguration("--register needs --registry MULTIADDR or --mdns")
    services: list[Any] = [service]
    if args.relay:
        services.append(relay_client(args.relay))
    if args.register is not None:
        from switchy.protocols.discovery.backends import register_name

        services += _name_backends(args)
    async with _node(args, key=_stable_key(args.key), services=services) as node:
        addrs = args.listen or ([] if args.relay else [DEFAULT_LISTEN])
        await listen_with_relays(node, addrs, args.relay)
        if args.register is not None:  # before the addresses: they tell the name is found
            await register_name(node, args.register)
            print(f"registered {args.register!r}", file=sys.stderr)
        _print_addrs(node)
        who = f"{len(args.allow)} allowed peer(s)" if args.allow else "every peer (no --allow)"
        await _until_stopped(stop, f"exposing the {kind} to {who}")
    return 0


def _name_backends(args: argparse.Namespace) -> list[Any]:
    """The discovery backends of ``expose``/``gateway``: ``--registry`` and ``--mdns``."""
    backends: list[Any] = []
    if args.registry:
        from switchy.protocols.discovery.backends import RegistryBackend

        backends.append(RegistryBackend(args.registry))
    if args.mdns:
        from switchy.protocols.discovery.mdns import MdnsService

        backends.append(MdnsService())
    return backends


def _http_limits(args: argparse.Namespace) -> Any:
    """The HTTP limits of ``expose``/``gateway`` (``--max-upload``)."""
    from switchy.protocols.http.core import HttpLimits

    return HttpLimits(max_request_body=args.max_upload)


def _loopback_note(host: str, what: str) -> None:
    if host in _LOOPBACK_HOSTS:
        print(f"{what} listens on loopback only ({host})", file=sys.stderr)
    else:
        print(
            f"warning: {what} listens on {host}: anyone who can reach it can use it",
            file=sys.stderr,
        )


def _peer_addr(text: str, what: str) -> tuple[Any, Any]:
    """``text`` as a multiaddr and the peer id it ends in; :class:`InvalidConfiguration`
    (naming ``what``, the option or argument) when it has none."""
    from switchy.stack.addresses import parse_multiaddr, split_peer

    addr = parse_multiaddr(text)
    _, peer = split_peer(addr)
    if peer is None:
        raise InvalidConfiguration(f"{what}{text} has no /p2p/<peer-id>")
    return addr, peer


async def _serve_local_port(
    stop: asyncio.Event, port: Any, listen: tuple[str, int], shown: str, what: str, doing: str
) -> int:
    """``gateway``, ``forward``: listen on the local TCP ``port`` object (``listen``:
    host and port), print ``shown`` (formatted with ``host`` and ``port`` bound) and serve
    until stopped."""
    bound_host, bound_port = await port.listen(*listen)
    print(shown.format(host=bound_host, port=bound_port))
    sys.stdout.flush()
    _loopback_note(bound_host, what)
    try:
        await _until_stopped(stop, doing)
    finally:
        await port.close()
    return 0


async def _cmd_gateway(args: argparse.Namespace) -> int:
    """``switchy gateway``: HTTP clients reach peers at ``/p2p/<peer-id>/path``."""
    stop = _stop_signal()
    from switchy.protocols.http.proxy import Gateway

    peers = [_peer_addr(text, "--peer ") for text in args.peer]
    services: list[Any] = _name_backends(args)
    resolve = None
    async with _node(args, key=_stable_key(args.key), services=services) as node:
        for addr, peer in peers:
            node.peerstore.add_addrs(peer, [addr])
        if services:
            from switchy.protocols.discovery.backends import discover

            async def resolve(name: str) -> Any:
                found = await discover(node, name)
                node.peerstore.add_addrs(found.peer_id, list(found.addrs))
                return found.peer_id

        gateway = Gateway(node, resolve=resolve, limits=_http_limits(args))
        return await _serve_local_port(
            stop,
            gateway,
            args.listen,
            "http://{host}:{port}/p2p/<peer-id>/",
            "the gateway",
            "it reaches peers over switchy only, never other hosts",
        )


async def _cmd_forward(args: argparse.Namespace) -> int:
    """``switchy forward HOST:PORT PEER-ADDR``: a local port to a peer's exposed TCP service."""
    stop = _stop_signal()
    from switchy.protocols.http.tcp import TcpForwarder

    addr, peer = _peer_addr(args.peer, "")
    async with _node(args, key=_stable_key(args.key)) as node:
        node.peerstore.add_addrs(peer, [addr])
        return await _serve_local_port(
            stop,
            TcpForwarder(node, peer),
            args.local,
            "{host}:{port}",
            "the forwarded port",
            f"each connection opens a stream to {peer}",
        )


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
        relays=args.relay,
        plain=args.plain,
        config=args.config,
    )


async def _cmd_send(args: argparse.Namespace) -> int:
    """``switchy send FILE``: print the file's ticket and serve it until interrupted."""
    stop = _stop_signal()
    from switchy.presets import listen_with_relays, relay_client
    from switchy.protocols.blobs import BlobService

    blobs = BlobService()
    services: list[Any] = [blobs]
    if args.relay:
        services.append(relay_client(args.relay))
    async with _node(args, services=services) as node:
        # the ticket takes the addresses of this moment: the circuit ones included
        await listen_with_relays(node, args.listen or [DEFAULT_LISTEN], args.relay)
        is_dir = Path(args.file).is_dir()
        ticket = blobs.add_dir(args.file) if is_dir else blobs.add_file(args.file)
        print(ticket, flush=True)
        await _until_stopped(stop, f"serving {args.file} as {node.peer_id}")
    return 0


async def _cmd_receive(args: argparse.Namespace) -> int:
    """``switchy receive TICKET``: fetch, verify and save the file (resumes a .part file)."""
    import json as _json

    from switchy.protocols.blobs import Progress, Ticket, fetch

    ticket = Ticket.parse(args.ticket)
    bar = _Progress(None, enabled=not args.json and sys.stderr.isatty())

    def show(p: Progress) -> None:
        if args.json:
            print(
                _json.dumps({"done": p.done, "total": p.total, "resumed": p.resumed}),
                file=sys.stderr,
                flush=True,
            )
        else:
            bar.total = p.total
            bar.update(p.done - bar.done)

    async with _node(args) as node:
        path = await fetch(node, ticket, args.out, progress=show)
        route = _route(node, ticket.peer)
    bar.finish()
    if args.json:
        print(_json.dumps({"route": route}), file=sys.stderr, flush=True)
    else:
        print(f"received {route}", file=sys.stderr)
    print(path)
    return 0


def _route(node: Any, peer: Any) -> str:
    """``"direct"`` or ``"relayed"``: how ``node`` is connected to ``peer`` (``"closed"``)."""
    conns = node.connections(peer)
    if not conns:
        return "closed"
    direct = any("/p2p-circuit" not in str(c.remote_addr) for c in conns)
    return "direct" if direct else "relayed"


def _add_transfer_parsers(sub: Any) -> None:
    s = sub.add_parser("send", help="serve a file and print its ticket (/switchy/blobs/1.0.0)")
    s.add_argument("file", help="the file or directory to send")
    s.add_argument("--listen", action="append", metavar="ADDR", help="listen address(es)")
    _add_relay_listen_option(s)
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
    s.add_argument("--registry", metavar="MULTIADDR", help="a name registry to register with")
    s.add_argument("--join", metavar="NICK", help="with --registry: dial this member")
    s.add_argument(
        "--plain",
        action="store_true",
        help="read plain lines from stdin even on a terminal (no line editor)",
    )
    _add_relay_listen_option(s)
    s.set_defaults(func=_cmd_chat)


def _add_relay_listen_option(s: Any) -> None:
    """``--relay MULTIADDR`` of ``listen``, ``expose``, ``chat`` and ``send``: listen
    through relays as well."""
    _add_list_option(
        s,
        "--relay",
        "also listen through this relay (…/p2p/<relay id>; repeatable): the listening "
        "addresses (and send's ticket) then carry a /p2p-circuit address",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``switchy``."""
    p = argparse.ArgumentParser(
        prog="switchy",
        description="switchy-p2p: direct, encrypted peer-to-peer connections (libp2p-compatible)",
        epilog=_EXIT_HELP,
    )
    p.add_argument("--version", action="version", version=f"switchy-p2p {__version__}")
    _add_common_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, top=False)

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], epilog=_EXIT_HELP, **kw)

    class _Commands:
        """What the ``_add_*`` helpers get: their subcommands take the common options too."""

        add_parser = staticmethod(command)
        #: For nested subcommands (``switchy dht serve``): they take the common options too.
        parents = [common]

    commands = _Commands()

    s = command("limits", help="show the resource limits a node would have on this machine")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_limits)

    s = command("id", help="create or show this machine's identity")
    s.add_argument("--key", help=f"key file (default {default_key_path()})")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_cmd_id)

    s = command("listen", help="serve ping, identify, echo and perf")
    s.add_argument(
        "addrs",
        nargs="*",
        metavar="MULTIADDR",
        help=f"TCP (/ip4/…/tcp/N) or QUIC (/ip4/…/udp/N/quic-v1); default {DEFAULT_LISTEN}",
    )
    s.add_argument("--key", help=_STABLE_KEY_HELP)
    s.add_argument(
        "--ephemeral", action="store_true", help="use a fresh throwaway identity, not a key file"
    )
    s.add_argument("--register", metavar="NAME", help="register NAME with --registry")
    _add_registry_option(s, "a name registry")
    _add_relay_listen_option(s)
    _add_public_network(s)
    _add_metrics_option(s)
    _add_hole_punching_option(s)
    s.set_defaults(func=_cmd_listen)
    _add_nat_status_parser(commands)

    from switchy.demo import MAX_DEMO_NODES, MIN_DEMO_NODES
    from switchy.transports.relay.config import RelayConfig

    relay_defaults = RelayConfig()
    s = command("relay", help="run a circuit relay (v2) for peers that cannot be reached")
    _add_server_options(s)
    s.add_argument(
        "--limit-data",
        type=parse_size,
        default=relay_defaults.limit_data,
        help="bytes per direction of a relayed connection, 0: none (default %(default)s)",
    )
    s.add_argument(
        "--limit-duration",
        type=_int_at_least(0),
        default=relay_defaults.limit_duration,
        help="seconds a relayed connection may last, 0: no limit (default %(default)s)",
    )
    s.add_argument(
        "--max-reservations",
        type=_int_at_least(1),
        default=relay_defaults.max_reservations,
        help="reservations held at once (default %(default)s)",
    )
    s.set_defaults(func=_cmd_relay)

    s = command(
        "ping", help="ping a peer (a multiaddr, a …/p2p-circuit/p2p/<id> address, or a name)"
    )
    s.add_argument("addr", metavar="MULTIADDR|NAME")
    s.add_argument(
        "-c", "--count", type=_int_at_least(1), default=5, help="number of pings (default 5)"
    )
    _add_client_options(s, json_help="print one JSON object")
    _add_registry_option(s, "resolve NAME here")
    s.add_argument(
        "-i",
        "--interval",
        type=_seconds(zero=True),
        default=None,
        metavar="S",
        help="seconds between pings (default 1 through a relay, to see it become direct; else 0)",
    )
    _add_hole_punching_option(s)
    s.set_defaults(func=_cmd_ping_by_name)

    s = command("registry", help="run a name registry (/switchy/discovery/1.0.0)")
    _add_server_options(s)
    s.set_defaults(func=_cmd_registry)

    s = command("perf", help="measure throughput to a peer (libp2p perf)")
    s.add_argument("addr", metavar="MULTIADDR")
    s.add_argument(
        "--upload", type=parse_size, default=0, help="bytes to send (e.g. 100M); default 0"
    )
    s.add_argument(
        "--download",
        type=parse_size,
        default=0,
        help="bytes to receive; default 0 (give at least one of --upload, --download)",
    )
    _add_client_options(s, json_help="print one JSON object")
    s.set_defaults(func=_cmd_perf)

    s = command("serve", help="serve a folder's files over the request router")
    s.add_argument("--static", required=True, metavar="DIR", help="folder to serve")
    _add_server_options(s)
    s.set_defaults(func=_cmd_serve)

    s = command("request", help="send a request to a peer's router")
    s.add_argument("addr", metavar="MULTIADDR")
    s.add_argument("method", metavar="METHOD", help="GET, POST, PUT, DELETE or PATCH")
    s.add_argument("path", metavar="PATH", help="e.g. /files/song.ogg or /tracks?limit=5")
    s.add_argument("--header", action="append", default=[], metavar="K:V", help="repeatable")
    s.add_argument("--data", metavar="@FILE|TEXT", help="request body: text, or @file")
    s.add_argument("--output", metavar="FILE", help="write the body here (default stdout)")
    s.add_argument(
        "--timeout",
        type=_seconds(zero=False),
        default=None,
        help="seconds to wait for the answer (> 0; default SWITCHY_REQUEST_TIMEOUT, else 30)",
    )
    _add_client_options(s, json_help=None)
    s.set_defaults(func=_cmd_request)

    s = command("demo", help="run several nodes in this process and show them talking")
    s.add_argument(
        "--nodes",
        type=_int_at_least(MIN_DEMO_NODES, MAX_DEMO_NODES),
        default=3,
        help=f"number of nodes, {MIN_DEMO_NODES} to {MAX_DEMO_NODES} (default 3)",
    )
    s.set_defaults(func=_cmd_demo)

    from switchy.scenarios import SCENARIOS

    _add_http_commands(commands)

    s = command("sim", help="run a scenario on the deterministic network simulator")
    s.add_argument("--scenario", choices=sorted(SCENARIOS), default="mesh")
    s.add_argument("--seed", type=_parse_seed, default=1, help="same seed, same run (default 1)")
    s.add_argument(
        "--nodes", type=_int_at_least(1), default=10, help="number of nodes (default 10)"
    )
    s.add_argument("--trace", metavar="FILE", help="write the event trace as JSON lines")
    s.add_argument(
        "--report",
        metavar="FILE",
        help="write a self-contained HTML page of the run (topology, connections, flows, faults)",
    )
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_sim)

    _add_dht_parser(commands)
    _add_chat_parser(commands)
    _add_transfer_parsers(commands)
    return p


class _JsonLines(logging.Formatter):
    """One JSON object per log record: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(args: argparse.Namespace, environ: Mapping[str, str]) -> Callable[[], None]:
    """switchy's loggers at the chosen level, every other library's at WARNING, on stderr.

    Returns what undoes it (for :func:`main` called in a process that goes on).
    """
    level = args.log_level
    if level is None and args.verbose:
        level = "info" if args.verbose == 1 else "debug"
    if level is None:
        raw = environ.get("SWITCHY_LOG_LEVEL")
        if raw is not None:
            try:
                level = _log_level(raw)
            except argparse.ArgumentTypeError as exc:
                raise InvalidConfiguration(f"SWITCHY_LOG_LEVEL: {exc}") from None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonLines()
        if args.log_format == "json"
        else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root, ours = logging.getLogger(), logging.getLogger("switchy")
    saved = root.level, ours.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # third-party libraries (multiaddr, aioquic, ...)
    ours.setLevel((level or "warning").upper())

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        ours.setLevel(saved[1])

    return undo


def _add_http_commands(sub: Any) -> None:
    """The parser entries of ``expose``, ``gateway`` and ``forward``."""
    max_upload_help = "refuse request bodies larger than this with 413 (default: no limit)"
    s = sub.add_parser(
        "expose", help="serve a local HTTP server (http://HOST:PORT) or TCP service to peers"
    )
    s.add_argument("target", nargs="+", metavar="http://HOST:PORT | tcp HOST:PORT")
    _add_list_option(s, "--listen", f"listen address (repeatable; default {DEFAULT_LISTEN})")
    _add_list_option(
        s, "--allow", "serve only this peer id (repeatable; default: every peer)", "PEER"
    )
    _add_relay_listen_option(s)
    s.add_argument("--key", help=_STABLE_KEY_HELP)
    s.add_argument("--register", metavar="NAME", help="register NAME (--registry, --mdns)")
    _add_registry_option(s, "a name registry")
    s.add_argument("--mdns", action="store_true", help="announce NAME on the LAN by mDNS")
    s.add_argument("--max-upload", type=int, metavar="BYTES", help=max_upload_help)
    s.set_defaults(func=_cmd_expose)

    s = sub.add_parser("gateway", help="a local HTTP server reaching peers at /p2p/<peer-id>/")
    s.add_argument(
        "--listen",
        type=_host_port,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:8080: loopback only)",
    )
    _add_list_option(s, "--peer", "a peer's address …/p2p/<peer-id> (repeatable)")
    _add_registry_option(s, "resolve /p2p/<name>/ at this registry")
    s.add_argument("--mdns", action="store_true", help="resolve /p2p/<name>/ by mDNS on the LAN")
    s.add_argument("--key", help=_STABLE_KEY_HELP)
    s.add_argument("--max-upload", type=int, metavar="BYTES", help=max_upload_help)
    s.set_defaults(func=_cmd_gateway)

    s = sub.add_parser("forward", help="a local TCP port leading to a peer's exposed TCP service")
    s.add_argument("local", type=_host_port, metavar="HOST:PORT")
    s.add_argument("peer", metavar="PEER-ADDR", help="the peer's address …/p2p/<peer-id>")
    s.add_argument("--key", help=_STABLE_KEY_HELP)
    s.set_defaults(func=_cmd_forward)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``switchy`` console script; returns the exit status
    (0 success, 1 runtime or network failure, 2 usage error or bad input, 130 interrupted)."""
    from switchy.stack.config import NetworkConfig

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int] | int] = args.func
    undo_logging: Callable[[], None] | None = None
    try:
        undo_logging = _setup_logging(args, os.environ)
        args.config = NetworkConfig.from_env(**_limit_overrides(args, os.environ))
        result = func(args)
        return result if isinstance(result, int) else asyncio.run(result)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _BAD_INPUT as exc:
        print(f"switchy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (P2PError, OSError) as exc:
        print(f"switchy: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if undo_logging is not None:
            undo_logging()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
