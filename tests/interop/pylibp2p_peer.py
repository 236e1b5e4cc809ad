"""A py-libp2p peer for interop tests.  Runs under the interop venv's Python only.

Modes (TCP + Noise + yamux, or QUIC-v1 with ``--quic``; Ed25519 identity):

  listen [--seed HEX] [--relay] [--autonat]
                                      serve ping, identify (+push), echo, perf (and with
                                      --relay the circuit relay v2 hop service, with
                                      --autonat the AutoNAT v1 server); print one
                                      JSON line {"peer_id", "addrs"}; run until stdin closes
  ping ADDR [-c N]                    {"ok", "rtts_us"}
  circuit-ping ADDR [-c N]            ping through a circuit relay v2
                                      (ADDR = …/p2p/<relay>/p2p-circuit/p2p/<peer>)
  dcutr ADDR [--wait S] [--ip IP --port P]
                                      listen on IP:P (default 127.0.0.1, any port), dial a
                                      circuit address with DCUtR running; wait up to S seconds
                                      for a direct connection; {"ok", "direct", "direct_addr",
                                      "rtts_us"}
  dcutr-listen RELAY [--ip IP --port P]
                                      reserve on RELAY with DCUtR running (py-libp2p is B for
                                      whoever dials it through RELAY); print {"peer_id", "addrs":
                                      [circuit]}, then {"direct": PEER} for each peer it has a
                                      direct connection with; run until stdin closes
  identify ADDR                       {"ok", "protocol_version", "agent_version", ...}
  echo ADDR --size N                  {"ok", "echoed", "match"}
  perf ADDR --upload N --download N   {"ok", "upload_bytes", "download_bytes", "seconds"}
  autonat ADDR --ask A [--ask A ...]  ask ADDR's AutoNAT v1 server about each address A, one
                                      request per address (A = "self": our listen address);
                                      {"ok", "listen_addrs", "answers": [{"status", "addr"}]}

  dht [--port P]                      a Kademlia DHT server (TCP) accepting any value under
                                      /interop/; prints {"peer_id", "addrs"}, then runs one
                                      JSON command per stdin line and prints one JSON line
                                      each: connect ADDR, put KEY VALUE_HEX, get KEY,
                                      provide KEY_HEX, providers KEY_HEX, find_peer ID, table

Every mode prints exactly one JSON result line (``"ok": false`` with ``"error"`` on
failure, exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
from libp2p.custom_types import TProtocol
from libp2p.identity.identify.identify import ID as IDENTIFY_ID
from libp2p.identity.identify.identify import parse_identify_response
from libp2p.network.stream.exceptions import StreamReset
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

PING = TProtocol("/ipfs/ping/1.0.0")
ECHO = TProtocol("/echo/1.0.0")
PERF = TProtocol("/perf/1.0.0")


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def local_addr(quic: bool, port: int = 0, ip: str = "127.0.0.1") -> multiaddr.Multiaddr:
    if quic:
        return multiaddr.Multiaddr(f"/ip4/{ip}/udp/{port}/quic-v1")
    return multiaddr.Multiaddr(f"/ip4/{ip}/tcp/{port}")


def make_host(seed: bytes | None, quic: bool = False) -> Any:
    key_pair = create_new_key_pair(seed)
    if quic:
        return new_host(key_pair=key_pair, listen_addrs=[local_addr(True)], enable_quic=True)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
    )


async def read_some(stream: Any, n: int) -> bytes:
    """One read; b"" at end of stream (py-libp2p raises StreamEOF there)."""
    try:
        return bytes(await stream.read(n))
    except EOFError:
        # py-libp2p 0.8.1 QUIC race: a read that finds the buffer empty, then waits for the
        # state lock while the last data and the FIN arrive, reports end-of-stream with
        # those bytes still buffered.  Take them before calling it the end.
        quic_stream = getattr(stream, "muxed_stream", None)
        if getattr(quic_stream, "_receive_buffer", None):
            return bytes(await stream.read(n))
        return b""
    except StreamReset:
        # py-libp2p 0.8.1 QUIC: once a stream is closed in both directions (our FIN sent,
        # the peer's FIN received) a read of the empty buffer raises "Stream N is closed"
        # (surfacing as StreamReset) instead of end-of-stream.  A FIN really received and
        # no reset is the end of the stream.
        quic_stream = getattr(stream, "muxed_stream", None)
        if getattr(quic_stream, "_read_closed", False) and not quic_stream.is_reset():
            return b""
        raise


async def read_all(stream: Any) -> bytes:
    buf = bytearray()
    while True:
        chunk = await read_some(stream, 65536)
        if not chunk:
            return bytes(buf)
        buf += chunk


async def echo_handler(stream: Any) -> None:
    total = 0
    try:
        while True:
            chunk = await read_some(stream, 65536)
            if not chunk:
                break
            total += len(chunk)
            await stream.write(chunk)
    finally:
        emit({"event": "echo", "bytes": total})
        await stream.close()


async def perf_handler(stream: Any) -> None:
    header = b""
    while len(header) < 8:
        chunk = await read_some(stream, 8 - len(header))
        if not chunk:
            await stream.reset()
            return
        header += chunk
    (to_send,) = struct.unpack(">Q", header)
    received = 0
    while True:
        chunk = await read_some(stream, 65536)
        if not chunk:
            break
        received += len(chunk)
    block = bytes(65536)
    while to_send > 0:
        n = min(to_send, len(block))
        await stream.write(block[:n])
        to_send -= n
    emit({"event": "perf", "received": received})
    await stream.close()


async def listen(args: argparse.Namespace) -> int:
    host = make_host(bytes.fromhex(args.seed) if args.seed else None, args.quic)
    host.set_stream_handler(ECHO, echo_handler)
    host.set_stream_handler(PERF, perf_handler)
    addr = local_addr(args.quic, args.port, args.ip)
    if args.autonat:
        from libp2p.host.autonat import AutoNATService

        AutoNATService(host, serve=True)
    async with host.run(listen_addrs=[addr]):
        if args.relay:
            from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
            from libp2p.relay.circuit_v2.resources import RelayLimits
            from libp2p.tools.anyio_service import background_trio_service

            limits = RelayLimits(
                duration=3600, data=1 << 30, max_circuit_conns=8, max_reservations=8
            )
            relay = CircuitV2Protocol(host, limits, allow_hop=True)
            async with background_trio_service(relay):
                await relay.event_started.wait()
                await serve(host)
        else:
            await serve(host)
    return 0


async def serve(host: Any) -> None:
    addrs = [str(a) for a in host.get_addrs()]
    emit({"peer_id": host.get_id().to_base58(), "addrs": addrs})
    # Serve until our parent closes stdin.
    await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


async def with_connection(args: argparse.Namespace, body: Any) -> int:
    host = make_host(None, args.quic)
    async with host.run(listen_addrs=[local_addr(args.quic)]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(args.addr))
        with trio.fail_after(args.timeout):
            await host.connect(info)
            result = await body(host, info.peer_id)
        emit({"ok": True, **result})
    return 0


async def do_ping(host: Any, peer: Any, args: argparse.Namespace) -> dict[str, Any]:
    stream = await host.new_stream(peer, [PING])
    rtts = []
    for _ in range(args.count):
        payload = os.urandom(32)
        start = time.perf_counter()
        await stream.write(payload)
        got = b""
        while len(got) < 32:
            chunk = await read_some(stream, 32 - len(got))
            if not chunk:
                raise RuntimeError("ping stream closed early")
            got += chunk
        if got != payload:
            raise RuntimeError("ping payload mismatch")
        rtts.append((time.perf_counter() - start) * 1e6)
    await stream.close()
    return {"rtts_us": rtts}


async def do_identify(host: Any, peer: Any, args: argparse.Namespace) -> dict[str, Any]:
    stream = await host.new_stream(peer, [IDENTIFY_ID])
    data = await read_all(stream)
    msg = parse_identify_response(data)
    record: dict[str, Any] | None = None
    if msg.HasField("signedPeerRecord"):
        from libp2p.peer.envelope import consume_envelope

        _env, rec = consume_envelope(msg.signedPeerRecord, "libp2p-peer-record")
        record = {
            "peer_id": str(rec.peer_id),
            "seq": rec.seq,
            "addrs": [str(a) for a in rec.addrs],
        }
    return {
        "signed_peer_record": record,
        "protocol_version": msg.protocol_version,
        "agent_version": msg.agent_version,
        "public_key": msg.public_key.hex(),
        "listen_addrs": [str(multiaddr.Multiaddr(a)) for a in msg.listen_addrs],
        "observed_addr": str(multiaddr.Multiaddr(msg.observed_addr)) if msg.observed_addr else None,
        "protocols": list(msg.protocols),
    }


async def do_echo(host: Any, peer: Any, args: argparse.Namespace) -> dict[str, Any]:
    stream = await host.new_stream(peer, [ECHO])
    data = bytes(i % 251 for i in range(args.size))
    got = bytearray()

    async def reader() -> None:
        got.extend(await read_all(stream))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        view = memoryview(data)
        for off in range(0, len(data), 65536):
            await stream.write(bytes(view[off : off + 65536]))
        await stream.close_write() if hasattr(stream, "close_write") else await stream.close()
    return {"echoed": len(got), "match": bytes(got) == data}


async def do_perf(host: Any, peer: Any, args: argparse.Namespace) -> dict[str, Any]:
    stream = await host.new_stream(peer, [PERF])
    start = time.perf_counter()
    await stream.write(struct.pack(">Q", args.download))
    block = bytes(65536)
    remaining = args.upload
    while remaining > 0:
        n = min(remaining, len(block))
        await stream.write(block[:n])
        remaining -= n
    await stream.close_write() if hasattr(stream, "close_write") else await stream.close()
    got = len(await read_all(stream))
    return {
        "upload_bytes": args.upload,
        "download_bytes": got,
        "seconds": time.perf_counter() - start,
    }


async def do_autonat(host: Any, peer: Any, args: argparse.Namespace) -> dict[str, Any]:
    from libp2p.host.autonat import AutoNATService

    client = AutoNATService(host, serve=False)
    mine = [str(a) for a in host.get_addrs()]
    answers = []
    for ask in args.ask:
        # py-libp2p may list its addresses with /p2p/<id>: ask about the bare address
        text = (mine[0] if ask == "self" else ask).split("/p2p/")[0]
        target = multiaddr.Multiaddr(text)
        status, addr = await client.query_server(peer, [target.to_bytes()])
        dialed = str(multiaddr.Multiaddr(addr)) if addr else None
        answers.append({"asked": text, "status": status, "addr": dialed})
    return {"listen_addrs": mine, "answers": answers}


async def dht_peer(args: argparse.Namespace) -> int:
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.records.validator import Validator
    from libp2p.tools.anyio_service import background_trio_service

    class AnyValue(Validator):  # type: ignore[misc]
        def validate(self, key: str, value: bytes) -> None:
            return None

        def select(self, key: str, values: list[bytes]) -> int:
            return 0

    host = make_host(None)
    async with host.run(listen_addrs=[local_addr(False, args.port)]):
        dht = KadDHT(host, DHTMode.SERVER)
        dht.register_validator("interop", AnyValue())
        async with background_trio_service(dht):
            emit(
                {"peer_id": host.get_id().to_base58(), "addrs": [str(a) for a in host.get_addrs()]}
            )
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line:
                    return 0
                cmd = json.loads(line)
                try:
                    with trio.fail_after(30):
                        result = await dht_command(host, dht, cmd)
                    emit({"ok": True, **result})
                except BaseException as exc:  # report and keep serving
                    emit({"ok": False, "error": describe(exc)})


async def dht_command(host: Any, dht: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    from libp2p.peer.id import ID

    op = cmd["op"]
    if op == "connect":
        info = info_from_p2p_addr(multiaddr.Multiaddr(cmd["addr"]))
        await host.connect(info)
        added = await dht.add_peer(info.peer_id)
        return {"added": bool(added)}
    if op == "put":
        await dht.put_value(cmd["key"], bytes.fromhex(cmd["value"]))
        return {}
    if op == "get":
        value = await dht.get_value(cmd["key"])
        return {"value": None if value is None else value.hex()}
    if op == "provide":
        return {"provided": bool(await dht.provide(cmd["key"]))}
    if op == "providers":
        found = await dht.find_providers(cmd["key"])
        return {"providers": [[p.peer_id.to_base58(), [str(a) for a in p.addrs]] for p in found]}
    if op == "find_peer":
        info = await dht.find_peer(ID.from_base58(cmd["peer"]))
        return {"addrs": None if info is None else [str(a) for a in info.addrs]}
    if op == "table":
        return {"peers": [p.to_base58() for p in dht.routing_table.get_peer_ids()]}
    raise ValueError(f"unknown dht command {op!r}")


async def circuit_ping(args: argparse.Namespace) -> int:
    from libp2p.relay.circuit_v2.config import RelayConfig
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.relay.circuit_v2.transport import CircuitV2Transport
    from libp2p.tools.anyio_service import background_trio_service

    host = make_host(None)
    async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        client = CircuitV2Protocol(host, allow_hop=False)
        async with background_trio_service(client):
            await client.event_started.wait()
            transport = CircuitV2Transport(host, client, RelayConfig())
            target = multiaddr.Multiaddr(args.addr)
            relay_addr, peer = transport.parse_circuit_ma(target)
            with trio.fail_after(args.timeout):
                await host.connect(info_from_p2p_addr(relay_addr))
                await transport.dial(target)
                result = await do_ping(host, peer, args)
            emit({"ok": True, **result})
    return 0


async def dcutr_dial(args: argparse.Namespace) -> int:
    """Dial a circuit address (we are DCUtR's A), run py-libp2p's DCUtR, report whether a
    direct connection came up, then ping over whatever connection the host picks."""
    from libp2p.relay.circuit_v2.config import RelayConfig
    from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.relay.circuit_v2.transport import CircuitV2Transport
    from libp2p.tools.anyio_service import background_trio_service

    host = make_host(None)
    listen = multiaddr.Multiaddr(f"/ip4/{args.ip}/tcp/{args.port}")
    async with host.run(listen_addrs=[listen]):
        client = CircuitV2Protocol(host, allow_hop=False)
        dcutr = DCUtRProtocol(host)
        async with background_trio_service(client), background_trio_service(dcutr):
            await client.event_started.wait()
            await dcutr.event_started.wait()
            transport = CircuitV2Transport(host, client, RelayConfig())
            target = multiaddr.Multiaddr(args.addr)
            relay_addr, peer = transport.parse_circuit_ma(target)
            with trio.fail_after(args.timeout):
                await host.connect(info_from_p2p_addr(relay_addr))
                await transport.dial(target)
                direct = False
                with trio.move_on_after(args.wait):
                    while not direct:
                        direct = await dcutr._have_direct_connection(peer)
                        if not direct:
                            await trio.sleep(0.1)
                result = await do_ping(host, peer, args)
            emit({"ok": True, "direct": direct, "direct_addr": _direct_addr(host, peer), **result})
    return 0


def _direct_addr(host: Any, peer: Any) -> str | None:
    """The remote address of a non-relayed connection to ``peer``, if any."""
    conns = host.get_network().connections.get(peer) or []
    for conn in conns if isinstance(conns, list) else [conns]:
        for addr in conn.get_transport_addresses():
            if "/p2p-circuit" not in str(addr):
                return str(addr)
    return None


async def dcutr_listen(args: argparse.Namespace) -> int:
    """Reserve on a relay and let py-libp2p's DCUtR (its auto-drive loop: B, the side that
    accepted the relayed connection, sends CONNECT) upgrade whoever dials us through it."""
    from libp2p.relay.circuit_v2.config import RelayConfig
    from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.relay.circuit_v2.transport import CircuitV2Transport
    from libp2p.tools.anyio_service import background_trio_service

    host = make_host(None)
    listen = multiaddr.Multiaddr(f"/ip4/{args.ip}/tcp/{args.port}")
    async with host.run(listen_addrs=[listen]):
        client = CircuitV2Protocol(host, allow_hop=False)
        dcutr = DCUtRProtocol(host)
        async with background_trio_service(client), background_trio_service(dcutr):
            await client.event_started.wait()
            await dcutr.event_started.wait()
            transport = CircuitV2Transport(host, client, RelayConfig())
            relay = info_from_p2p_addr(multiaddr.Multiaddr(args.addr))
            async with trio.open_nursery() as nursery:
                with trio.fail_after(args.timeout):
                    await host.connect(relay)
                    stream = await host.new_stream(relay.peer_id, [HOP])
                    if not await transport.reserve(stream, relay.peer_id, nursery):
                        raise RuntimeError("the relay refused the reservation")
                me = host.get_id().to_base58()
                emit({"peer_id": me, "addrs": [f"{args.addr}/p2p-circuit/p2p/{me}"]})

                async def watch() -> None:
                    seen: set[Any] = {relay.peer_id}
                    while True:
                        for peer in list(host.get_network().connections):
                            if peer not in seen and await dcutr._have_direct_connection(peer):
                                seen.add(peer)
                                emit({"direct": peer.to_base58()})
                        await trio.sleep(0.1)

                nursery.start_soon(watch)
                await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
                nursery.cancel_scope.cancel()
    return 0


def describe(exc: BaseException) -> str:
    """The innermost errors of an exception (group), as text."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def main() -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("listen")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--ip", default="127.0.0.1", help="IPv4 address to listen on")
    s.add_argument("--seed")
    s.add_argument("--relay", action="store_true", help="also run the circuit relay v2 hop service")
    s.add_argument("--quic", action="store_true")
    s.add_argument("--autonat", action="store_true", help="also run the AutoNAT v1 server")
    s = sub.add_parser("dht")
    s.add_argument("--port", type=int, default=0)
    for name in (
        "ping",
        "identify",
        "echo",
        "perf",
        "circuit-ping",
        "autonat",
        "dcutr",
        "dcutr-listen",
    ):
        s = sub.add_parser(name)
        s.add_argument("addr")
        s.add_argument("--timeout", type=float, default=30)
        s.add_argument("--quic", action="store_true")
        if name in ("ping", "circuit-ping", "dcutr"):
            s.add_argument("-c", "--count", type=int, default=3)
        if name == "dcutr":
            s.add_argument("--wait", type=float, default=15)
        if name in ("dcutr", "dcutr-listen"):
            s.add_argument("--ip", default="127.0.0.1", help="IPv4 address to listen on")
            s.add_argument("--port", type=int, default=0)
        if name == "echo":
            s.add_argument("--size", type=int, default=100_000)
        if name == "autonat":
            s.add_argument("--ask", action="append", default=[])
        if name == "perf":
            s.add_argument("--upload", type=int, default=1_000_000)
            s.add_argument("--download", type=int, default=1_000_000)
    args = p.parse_args()
    try:
        if args.mode == "listen":
            return trio.run(listen, args)
        if args.mode == "dht":
            return trio.run(dht_peer, args)
        if args.mode == "circuit-ping":
            return trio.run(circuit_ping, args)
        if args.mode == "dcutr":
            return trio.run(dcutr_dial, args)
        if args.mode == "dcutr-listen":
            return trio.run(dcutr_listen, args)
        body = {
            "ping": do_ping,
            "identify": do_identify,
            "echo": do_echo,
            "perf": do_perf,
            "autonat": do_autonat,
        }[args.mode]
        return trio.run(with_connection, args, lambda h, peer: body(h, peer, args))
    except BaseException as exc:  # report every failure as one JSON line
        emit({"ok": False, "error": describe(exc)})
        if os.environ.get("PEER_DEBUG"):
            import traceback

            traceback.print_exception(exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
