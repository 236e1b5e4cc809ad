"""The iroh transport (transports/iroh) on loopback: conformance suites, nodes over iroh,
a plain iroh endpoint talking to switchy, and each sharp edge of the bindings.

Every endpoint uses iroh's minimal preset with relays disabled: nothing goes online.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

iroh = pytest.importorskip(
    "iroh", reason="the iroh wheel (extra switchy-p2p[iroh]) is not installed"
)

from multiaddr import Multiaddr  # noqa: E402

from switchy.protocols.blobs import BlobService, fetch  # noqa: E402
from switchy.protocols.echo import ECHO_PROTOCOL, EchoService  # noqa: E402
from switchy.protocols.ping import PingService, ping  # noqa: E402
from switchy.protocols.router import Request, Response, Router, request  # noqa: E402
from switchy.stack.codec import encode_uvarint  # noqa: E402
from switchy.stack.config import NetworkConfig  # noqa: E402
from switchy.stack.errors import (  # noqa: E402
    ConnectionFailed,
    InvalidConfiguration,
    InvalidPeerId,
    P2PError,
    StreamReset,
)
from switchy.stack.identity import KeyPair  # noqa: E402
from switchy.stack.mux import MuxedConnection  # noqa: E402
from switchy.stack.node import Node  # noqa: E402
from switchy.stack.stream import Connection, MuxedStream  # noqa: E402
from switchy.transports.iroh import ALPN, IrohTransport, endpoint_id_of, ffi, peer_id_of  # noqa: E402

pytest_plugins = ["pytester"]

LISTEN = "/ip4/127.0.0.1/udp/0/iroh"
LOCAL_IROH = "/ip4/127.0.0.1/udp/1/iroh"


def _config(**kw: Any) -> NetworkConfig:
    return NetworkConfig(keepalive_interval=0, close_timeout=0.5, **kw)


def _run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())  # type: ignore[arg-type]


def _plain_options(alpns: list[bytes]) -> Any:
    return iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr="127.0.0.1:0",
        alpns=alpns,
        relay_mode=iroh.RelayMode.disabled(),
    )


# --- conformance ---------------------------------------------------------------------------


def test_conformance_transport_muxer_and_node_suites_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        my_fixtures=textwrap.dedent(
            """
            import pytest
            from switchy.transports.iroh.harness import (
                IrohMuxerHarness, IrohNodeHarness, IrohTransportHarness,
            )

            @pytest.fixture
            def transport_harness(): return IrohTransportHarness()
            @pytest.fixture
            def muxer_harness(): return IrohMuxerHarness()
            @pytest.fixture
            def node_harness(): return IrohNodeHarness()
            """
        )
    )
    pytester.syspathinsert()
    suites = [f"switchy.stack.conformance.test_{s}" for s in ("transport", "muxer", "node")]
    result = pytester.runpytest_inprocess(
        "--pyargs", *suites, "-p", "my_fixtures", "-p", "no:cacheprovider", "-q", "--tb=native"
    )
    # 18 transport + 21 muxer + 8 node contracts; the partition one needs a harness that
    # can cut the network (real loopback cannot).
    result.assert_outcomes(passed=18 + 21 + 8 - 1, skipped=1)


# --- nodes over iroh -----------------------------------------------------------------------


def _node(**kw: Any) -> Node:
    config = kw.pop("config", None) or _config()
    return Node(transports=[IrohTransport(config)], listen=[LISTEN], config=config, **kw)


def test_nodes_ping_request_and_transfer_over_iroh(tmp_path: Path) -> None:
    router = Router()

    @router.get("/hello/{name}")
    def hello(req: Request) -> Response:
        return Response.from_json({"hello": req.params["name"], "peer": str(req.remote_peer)})

    blobs = BlobService()
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 7)  # ~3 MiB
    src = tmp_path / "payload.bin"
    src.write_bytes(data)

    async def main() -> None:
        server = _node(services=[PingService(), router, blobs])
        client = _node(services=[PingService(), BlobService()])
        async with server, client:
            addr = server.full_addrs[0]
            assert "/iroh/p2p/" in str(addr)
            rtts = await ping(client, addr, count=3)
            assert len(rtts) == 3 and all(r >= 0 for r in rtts)
            conn = await client.connect(server.peer_id)
            assert conn.security_protocol == "iroh-tls" and conn.remote_peer == server.peer_id
            resp = await request(client, server.peer_id, "GET", "/hello/iroh")
            assert resp.status == 200
            assert resp.json() == {"hello": "iroh", "peer": str(client.peer_id)}
            ticket = blobs.add_file(src)
            (tmp_path / "out").mkdir()
            out = await fetch(client, ticket, tmp_path / "out")
            assert out.read_bytes() == data
        # node close shut the endpoints down and gave the bindings their loop setting back
        for n in (server, client):
            t = n.transports[0]
            assert isinstance(t, IrohTransport) and t.endpoint is None
        assert iroh.iroh_ffi._UNIFFI_GLOBAL_EVENT_LOOP is None

    _run(main)


def test_the_endpoint_id_is_the_node_key() -> None:
    key = KeyPair.generate()

    async def main() -> None:
        node = _node(key=key)
        async with node:
            t = node.transports[0]
            assert isinstance(t, IrohTransport)
            assert t.endpoint.id().to_bytes() == key.public_bytes == endpoint_id_of(key.peer_id)
            assert peer_id_of(bytes.fromhex(str(t.endpoint.id()))) == node.peer_id

    _run(main)


def test_iroh_streams_are_counted_and_charged_like_other_streams() -> None:
    """Bytes written on an iroh stream count in the protocol's stream byte metric (both
    directions, both ends), and each stream is charged to its connection's resource scope
    (what the connection manager counts) while open and released once it has ended.
    (Before: sent bytes were not counted, and iroh streams were never charged.)"""
    data = b"switchy" * 20_000

    async def main() -> None:
        server = _node(services=[EchoService()])
        client = _node()
        async with server, client:
            for _ in range(3):  # released each time: the scope does not fill up
                stream = await client.open_stream(server.full_addrs[0], ECHO_PROTOCOL)
                scope = stream.muxed_conn.resource_scope
                assert scope is not None
                assert len(scope.streams) == 1
                assert stream.resource_scope is not None
                await stream.write(data)
                await stream.close_write()
                assert await stream.read_all(2 * len(data)) == data
                await stream.close()
                tasks = [t for t in (stream._reader, stream._writer) if t is not None]  # type: ignore[attr-defined]
                await asyncio.wait(tasks)
                assert len(scope.streams) == 0
                assert stream not in stream.muxed_conn._streams  # type: ignore[attr-defined]
            for node in (client, server):
                counted = node._swarm_metrics.stream_bytes
                assert counted.value(ECHO_PROTOCOL, "out") == 3 * len(data)
            served = server._swarm_metrics.stream_bytes.value(ECHO_PROTOCOL, "in")
            assert served == 3 * len(data)
            # the dialer's count also has the listener's lazily read negotiation answers
            got = client._swarm_metrics.stream_bytes.value(ECHO_PROTOCOL, "in")
            assert 3 * len(data) <= got <= 3 * (len(data) + 64)

    _run(main)


# --- a plain iroh endpoint (what a Rust iroh app does) -------------------------------------


def test_a_plain_iroh_endpoint_accepts_our_alpn_and_exchanges_bytes() -> None:
    async def main() -> None:
        ffi.register_loop()
        plain = await iroh.Endpoint.bind(_plain_options([ALPN]))
        seen: list[bytes] = []

        async def serve() -> None:
            incoming = await plain.accept_next()
            conn = await (await incoming.accept()).connect()
            seen.append(conn.alpn())
            bi = await conn.accept_bi()
            got = await bi.recv().read_to_end(1 << 20)
            await bi.send().write_all(got[::-1])
            await bi.send().finish()
            await conn.closed()

        server = asyncio.create_task(serve())
        t = IrohTransport(_config(), key=KeyPair.generate())
        try:
            addr = Multiaddr(
                f"/ip4/127.0.0.1/udp/{plain.addr().direct_addresses()[0].rpartition(':')[2]}"
                f"/iroh/p2p/{peer_id_of(plain.id().to_bytes())}"
            )
            conn = await t.dial(addr)
            assert isinstance(conn, MuxedConnection)
            s = await conn.open_stream()
            payload = bytes(range(256)) * 300
            await s.write_last(payload)
            assert await s.read_all() == payload[::-1]
            assert seen == [ALPN]
            await conn.close()
        finally:
            await t.shutdown()
            server.cancel()
            await plain.close()

    _run(main)


def test_a_plain_iroh_endpoint_dials_a_switchy_node_and_negotiates_echo() -> None:
    def msg(text: str) -> bytes:
        return encode_uvarint(len(text) + 1) + text.encode() + b"\n"

    async def main() -> None:
        node = _node(services=[EchoService()])
        async with node:
            ffi.register_loop()
            plain = await iroh.Endpoint.bind(_plain_options([]))
            try:
                listen = str(node.listen_addrs[0])
                port = listen.split("/udp/")[1].split("/")[0]
                target = iroh.EndpointAddr(
                    iroh.EndpointId.from_bytes(node.key.public_bytes), None, [f"127.0.0.1:{port}"]
                )
                conn = await plain.connect(target, ALPN)
                bi = await conn.open_bi()
                send, recv = bi.send(), bi.recv()
                hello = msg("/multistream/1.0.0") + msg(ECHO_PROTOCOL)
                await send.write_all(hello + b"ping over iroh")
                await send.finish()
                got = await recv.read_to_end(1 << 16)
                assert got == hello + b"ping over iroh"
                conn.close(0, b"done")
            finally:
                await plain.close()

    _run(main)


# --- sharp edges ---------------------------------------------------------------------------


def test_fast_lowering_builds_the_same_buffer_as_the_bindings() -> None:
    lib = iroh.iroh_ffi
    assert ffi.fast_write_available()
    for data in (b"", b"x", bytes(range(256)) * 1000):
        ours = ffi.lower_bytes(data)
        theirs = lib._UniffiFfiConverterBytes.lower(data)
        try:
            assert ours.len == theirs.len == len(data) + 4
            assert ours.data[: ours.len] == theirs.data[: theirs.len]
        finally:
            ours.free()
            theirs.free()


def test_iroh_errors_map_to_ours_with_kind_and_message() -> None:
    with pytest.raises(iroh.IrohError) as info:
        iroh.EndpointId.from_string("not-an-id")
    assert str(info.value) == ""  # the bindings' own text is empty: why we map it
    err = ffi.map_error(info.value, "parsing an endpoint id")
    assert isinstance(err, InvalidPeerId)
    assert err.iroh_kind == "KEY_PARSING"  # type: ignore[attr-defined]
    assert str(err).startswith("parsing an endpoint id: iroh key_parsing error: ")
    assert len(str(err)) > len("parsing an endpoint id: iroh key_parsing error: ")
    assert err.__cause__ is info.value


def test_an_iroh_stream_over_its_memory_budget_is_reset_and_releases_it() -> None:
    """A peer that sends more than the stream's memory limit while the application does not
    read gets the stream reset (named so), and the memory held is given back."""
    flood_protocol = "/switchy-test/flood/1.0.0"
    limited = _config(limits=("stream.memory=256KiB",))

    async def flood(stream: MuxedStream) -> None:
        with contextlib.suppress(P2PError):
            await stream.write(b"x" * (2 * 1024 * 1024))
            await stream.close()

    async def main() -> None:
        server = _node()
        server.handle(flood_protocol, flood)
        client = _node(config=limited)
        async with server, client, asyncio.timeout(60):
            stream = await client.open_stream(server.full_addrs[0], flood_protocol)
            await stream.write(b"go")  # the lazy negotiation goes out with it
            await asyncio.wait([stream._reader])  # type: ignore[attr-defined]
            with pytest.raises(StreamReset, match="over its memory budget"):
                await stream.read()
            scope = stream.resource_scope
            assert scope is not None and scope.memory == 0

    _run(main)


def test_a_fresh_connection_failing_at_once_raises_our_mapped_error_and_is_closed() -> None:
    """A connection that is gone by the time we wrap it (its remote id fails) gives the
    dial our error for the iroh error, naming the dial, and is closed; nothing is kept."""
    with pytest.raises(iroh.IrohError) as info:
        iroh.EndpointId.from_string("not-an-id")
    failure = info.value

    class Gone:
        closed: tuple[int, bytes] | None = None

        def remote_id(self) -> Any:
            raise failure

        def close(self, code: int, reason: bytes) -> None:
            self.closed = (code, reason)

    transport = IrohTransport(_config(), key=KeyPair.generate())
    gone = Gone()
    with pytest.raises(InvalidPeerId, match=r"^iroh dial of X: iroh key_parsing error: ") as err:
        transport._wrap(
            gone, is_initiator=True, remote_addr=Multiaddr(LOCAL_IROH), doing="iroh dial of X"
        )
    assert err.value.__cause__ is failure
    assert gone.closed is not None
    assert not transport._connections


def test_an_endpoint_without_our_alpn_fails_the_dial_within_the_dial_timeout() -> None:
    """iroh itself never fails such a connect (it waits until its idle timeout and
    beyond): the node's dial timeout is what ends it."""

    async def main() -> None:
        ffi.register_loop()
        plain = await iroh.Endpoint.bind(_plain_options([b"other/1"]))
        t = IrohTransport(_config(dial_timeout=0.5), key=KeyPair.generate())
        try:
            port = plain.addr().direct_addresses()[0].rpartition(":")[2]
            addr = Multiaddr(
                f"/ip4/127.0.0.1/udp/{port}/iroh/p2p/{peer_id_of(plain.id().to_bytes())}"
            )
            with pytest.raises(ConnectionFailed, match=r"did not connect within 0\.5s"):
                await t.dial(addr)
        finally:
            await t.shutdown()
            await plain.close()

    _run(main)


def test_the_node_dial_timeout_bounds_a_dead_address() -> None:
    async def main() -> None:
        t = IrohTransport(_config(dial_timeout=0.3), key=KeyPair.generate())
        try:
            dead = KeyPair.generate().peer_id
            with pytest.raises(ConnectionFailed, match=r"did not connect within 0\.3s"):
                await t.dial(Multiaddr(f"/ip4/127.0.0.1/udp/9/iroh/p2p/{dead}"))
        finally:
            await t.shutdown()

    _run(main)


def test_a_dial_needs_an_endpoint_id_and_a_consistent_one() -> None:
    async def main() -> None:
        t = IrohTransport(_config(), key=KeyPair.generate())
        try:
            with pytest.raises(InvalidConfiguration, match="needs the endpoint id"):
                await t.dial(Multiaddr("/ip4/127.0.0.1/udp/9/iroh"))
            a, b = KeyPair.generate().peer_id, KeyPair.generate().peer_id
            with pytest.raises(InvalidConfiguration, match="names peer"):
                await t.dial(Multiaddr(f"/ip4/127.0.0.1/udp/9/iroh/p2p/{a}"), remote_peer=b)
        finally:
            await t.shutdown()

    _run(main)


def test_endpoints_left_open_are_closed_by_the_exit_hook() -> None:
    t = IrohTransport(_config(), key=KeyPair.generate())

    async def main() -> Any:
        await t.listen(Multiaddr(LISTEN), lambda c: asyncio.sleep(0))
        return t.endpoint

    ep = _run(main)  # the loop is gone, the endpoint still open
    assert not ep.is_closed()
    ffi._close_at_exit()
    assert ep.is_closed()


def test_a_process_exiting_with_an_open_endpoint_and_connection_exits_cleanly() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from multiaddr import Multiaddr
        from switchy.stack.identity import KeyPair
        from switchy.transports.iroh import IrohTransport

        async def main():
            a = IrohTransport(key=KeyPair.generate())
            b = IrohTransport(key=KeyPair.generate())
            got = asyncio.Event()
            async def on(c): got.set()
            lst = await b.listen(Multiaddr("/ip4/127.0.0.1/udp/0/iroh"), on)
            conn = await a.dial(lst.addrs[0])
            s = await conn.open_stream()
            await s.write(b"x")
            await got.wait()
            print("connected", flush=True)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "connected" in done.stdout


def test_a_failed_bind_names_the_address_and_keeps_iroh_error_as_its_cause() -> None:
    """Binding an endpoint on a UDP port another endpoint holds fails with our error,
    naming the address, and the bindings' error stays its ``__cause__``."""

    async def main() -> None:
        first = IrohTransport(_config(), key=KeyPair.generate())
        listener = await first.listen(Multiaddr("/ip4/127.0.0.1/udp/0/iroh"), _no_connection)
        try:
            port = listener.addrs[0].value_for_protocol("udp")
            second = IrohTransport(_config(), key=KeyPair.generate())
            with pytest.raises(P2PError, match="binding an iroh endpoint on") as err:
                await second.listen(Multiaddr(f"/ip4/127.0.0.1/udp/{port}/iroh"), _no_connection)
            assert isinstance(err.value.__cause__, Exception)
            assert not isinstance(err.value.__cause__, P2PError)
            await second.shutdown()
        finally:
            await listener.close()
            await first.shutdown()

    _run(main)


async def _no_connection(conn: Connection | MuxedConnection) -> None:
    raise AssertionError("no connection expected")
