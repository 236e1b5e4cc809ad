"""Router over real loopback TCP + Noise + yamux and over the simulator (virtual time)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.presets import default_node
from switchy.protocols.ping import PingService
from switchy.protocols.router import ROUTER_PROTOCOL, Next, Request, Response, Router, request
from switchy.protocols.router.core import (
    MessageReader,
    ResponseHead,
    encode_data_frame,
    encode_request_head,
)
from switchy.stack.codec import encode_uvarint
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    ConnectionClosed,
    InvalidConfiguration,
    MessageTooLarge,
    NegotiationFailed,
    P2PTimeout,
    SerializationError,
)
from switchy.stack.node import Node
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
LOOPBACK_QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
QUIET = SimConfig(default_packet_loss=0.0)
KINDS = ["tcp", "quic", "sim"]
Scenario = Callable[[Node, Node], Awaitable[None]]


def run_pair(kind: str, router: Router, scenario: Scenario, server_services: bool = True) -> None:
    """Run ``scenario(client, server)`` with ``router`` served by the server node."""
    services: list[Any] = [router] if server_services else [PingService()]
    if kind in ("tcp", "quic"):

        async def tcp_main() -> None:
            async with (
                default_node(
                    services=services, listen=[LOOPBACK if kind == "tcp" else LOOPBACK_QUIC]
                ) as server,
                default_node() as client,
            ):
                await asyncio.wait_for(scenario(client, server), 30)
                conns = client.connections(server.peer_id)
                assert all(("/quic-v1" in str(c.remote_addr)) == (kind == "quic") for c in conns)

        asyncio.run(tcp_main())
        return

    async def sim_main(sim: Simulation) -> None:
        sim.network.add_hosts(["c", "s"])
        sim.network.add_link("c", "s", latency=0.005)

        def make(host: str, svcs: list[Any]) -> Node:
            return Node(
                transports=[SimTransport(sim.network, host)],
                services=svcs,
                entropy=sim.entropy_source(host),
                listen=["/memory/4001"],
            )

        async with make("s", services) as server, make("c", []) as client:
            await scenario(client, server)

    run_simulation(sim_main, seed=1, config=QUIET)


def app(kind: str = "sim", *, short_timeouts: bool = True) -> Router:
    """The test application.  Its short read and handler timeouts (for the tests that wait
    them out) are 0.2 s of virtual time on the simulator and 1 s on real networks, where
    legitimate requests on a busy machine must stay well inside them; without
    ``short_timeouts`` they are the router's defaults."""
    if short_timeouts:
        t = 0.2 if kind == "sim" else 1.0
        r = Router(max_body_size=1000, read_timeout=t, handler_timeout=t)
    else:
        r = Router(max_body_size=1000)

    @r.get("/info/{name}")
    def info(req: Request) -> Response:
        return Response.from_msgpack(
            {
                "name": req.params["name"],
                "query": req.query,
                "headers": req.headers,
                "peer": str(req.remote_peer),
                "relayed": req.relayed,
            }
        )

    @r.post("/items")
    async def create(req: Request) -> Response:
        return Response.created(req.body, headers={"location": "/items/1"})

    r.delete("/items/{id}")(lambda req: None)

    @r.get("/boom")
    def boom(req: Request) -> Response:
        raise ValueError("private detail")

    @r.get("/slow")
    async def slow(req: Request) -> Response:
        await asyncio.Event().wait()
        return Response.ok()

    @r.post("/echo", stream=True)
    def echo(req: Request) -> Response:
        return Response.ok(req.iter_body())

    @r.post("/count", stream=True, max_body_size=5000)
    async def count(req: Request) -> dict[str, int]:
        n = 0
        async for chunk in req.iter_body():
            n += len(chunk)
        return {"n": n}

    @r.get("/broken-stream")
    def broken(req: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            raise RuntimeError("disk gone")

        return Response.ok(chunks())

    return r


async def raw_exchange(client: Node, server: Node, data: bytes) -> tuple[ResponseHead, bytes]:
    """Send raw bytes as a request; parse the response."""
    stream = await client.open_stream(server.full_addrs[0], ROUTER_PROTOCOL)
    await stream.write(data)
    reader = MessageReader("response")
    events: list[object] = []
    while not reader.done:
        chunk = await stream.read(65536)
        if not chunk:
            reader.receive_eof()
        events.extend(reader.receive_data(chunk))
    await stream.close()
    head = events[0]
    assert isinstance(head, ResponseHead)
    body = b"".join(getattr(e, "data", b"") for e in events[1:])
    return head, body


@pytest.mark.parametrize("kind", KINDS)
def test_status_paths(kind: str) -> None:
    async def scenario(client: Node, server: Node) -> None:
        addr = server.full_addrs[0]
        resp = await request(
            client, addr, "GET", "/info/bob?x=1&y=%20z", headers={"X-Trace": "7"}, query={"w": "2"}
        )
        assert resp.status == 200
        info = resp.msgpack()
        assert info == {
            "name": "bob",
            "query": {"x": "1", "y": " z", "w": "2"},
            "headers": {"x-trace": "7"},
            "peer": str(client.peer_id),
            "relayed": False,
        }
        created = await request(client, addr, "POST", "/items", body=b"thing")
        assert (created.status, created.body, created.headers["location"]) == (
            201,
            b"thing",
            "/items/1",
        )
        assert (await request(client, addr, "DELETE", "/items/1")).status == 204
        missing = await request(client, addr, "GET", "/nothing")
        assert (missing.status, missing.status_line) == (404, "404 Not Found")
        wrong = await request(client, addr, "PUT", "/items")
        assert (wrong.status, wrong.headers["allow"]) == (405, "POST")
        boom = await request(client, addr, "GET", "/boom")
        assert (boom.status, boom.text()) == (500, "internal server error")
        slow = await request(client, addr, "GET", "/slow")
        assert slow.status == 503
        too_big = await request(client, addr, "POST", "/items", body=bytes(1001))
        assert too_big.status == 413 and "declared body of 1001" in too_big.text()

        async def chunks(n: int, size: int) -> AsyncIterator[bytes]:
            for _ in range(n):
                yield bytes(size)

        counted = await request(client, addr, "POST", "/count", body=chunks(4, 1000))
        assert counted.json() == {"n": 4000}
        over = await request(client, addr, "POST", "/count", body=chunks(10, 1000))
        assert over.status == 413
        # the connection keeps serving after all of that
        assert (await request(client, addr, "GET", "/info/x")).status == 200
        assert len(client.connections()) == 1

    run_pair(kind, app(kind), scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_requests_get_400(kind: str) -> None:
    def head(obj: object) -> bytes:
        packed: bytes = msgpack.packb(obj)
        return encode_uvarint(len(packed)) + packed

    async def scenario(client: Node, server: Node) -> None:
        cases = [
            (head({"method": "GET"}), "method and a path"),
            (head({"method": "GET", "path": "/x", "headers": {"a": 1}}), "str"),
            (head({"method": "GET", "path": "/x", "length": -5}), "negative"),
            (b"\x05\xc1\xc1\xc1\xc1\xc1", "msgpack"),
            (encode_uvarint(1 << 20), "head of 1048576 bytes"),
            (b"\xff" * 12, "varint"),
            (
                encode_request_head("POST", "/items", length=None) + encode_uvarint(2 << 20),
                "data frame",
            ),
        ]
        for data, expected in cases:
            rhead, body = await raw_exchange(client, server, data)
            assert rhead.status == 400, (data, body)
            assert expected in body.decode(), body

    run_pair(kind, app(kind), scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_client_that_stalls_gets_408_and_others_are_served(kind: str) -> None:
    async def scenario(client: Node, server: Node) -> None:
        addr = server.full_addrs[0]
        # a head announcing 100 body bytes, 10 sent, then silence
        stalled = encode_request_head("POST", "/items", length=100) + encode_data_frame(bytes(10))
        hostile = [
            asyncio.ensure_future(raw_exchange(client, server, stalled)),
            asyncio.ensure_future(raw_exchange(client, server, b"")),  # not even a head
            asyncio.ensure_future(raw_exchange(client, server, b"\x20\x83")),  # half a head
        ]
        good = await asyncio.gather(
            *(request(client, addr, "GET", f"/info/{i}") for i in range(20))
        )
        assert [r.status for r in good] == [200] * 20
        assert all(not t.done() for t in hostile)  # still waiting: they were not in the way
        results = await asyncio.gather(*hostile)
        assert [h.status for h, _ in results] == [408, 408, 408]

    run_pair(kind, app(kind), scenario)


def test_read_timeout_is_an_idle_timeout() -> None:
    """A body that keeps coming, slower in total than the read timeout, is not cut off."""

    async def scenario(client: Node, server: Node) -> None:
        async def paced(pause: float) -> AsyncIterator[bytes]:
            for _ in range(8):
                await asyncio.sleep(pause)  # virtual time: pacing the upload, not syncing
                yield b"x" * 100

        loop = asyncio.get_running_loop()
        start = loop.time()
        ok = await request(client, server.full_addrs[0], "POST", "/count", body=paced(0.15))
        # 1.2 s in all: six read timeouts, six handler timeouts, and no 408 nor 503
        assert ok.json() == {"n": 800} and loop.time() - start > 1.0
        cut = await request(client, server.full_addrs[0], "POST", "/count", body=paced(0.5))
        assert cut.status == 408

    run_pair("sim", app(), scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_busy_server_answers_503(kind: str) -> None:
    router = Router(max_concurrent=1)
    gate: dict[str, asyncio.Event] = {}

    @router.get("/hold")
    async def hold(req: Request) -> str:
        gate["in"].set()
        await gate["release"].wait()
        return "held"

    async def scenario(client: Node, server: Node) -> None:
        gate["in"], gate["release"] = asyncio.Event(), asyncio.Event()
        addr = server.full_addrs[0]
        first = asyncio.ensure_future(request(client, addr, "GET", "/hold"))
        await gate["in"].wait()
        busy = await request(client, addr, "GET", "/hold")
        assert (busy.status, busy.text()) == (503, "too many requests in progress")
        gate["release"].set()
        assert (await first).text() == "held"
        # the refused request is in the request metric too (counted before its method
        # is read: "other"), next to the one served
        requests = server.metrics.get("switchy_router_requests_total")
        assert requests is not None
        assert requests.value("other", "503") == 1
        assert requests.value("GET", "200") == 1

    run_pair(kind, router, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_peer_without_router_is_a_negotiation_error(kind: str) -> None:
    async def scenario(client: Node, server: Node) -> None:
        with pytest.raises(NegotiationFailed):
            await request(client, server.full_addrs[0], "GET", "/")

    run_pair(kind, app(kind), scenario, server_services=False)


@pytest.mark.parametrize("kind", KINDS)
def test_many_concurrent_requests_on_one_connection(kind: str) -> None:
    async def scenario(client: Node, server: Node) -> None:
        addr = server.full_addrs[0]
        await client.connect(addr)
        results = await asyncio.gather(
            *(request(client, server.peer_id, "POST", "/items", body=str(i)) for i in range(300))
        )
        assert [r.body for r in results] == [str(i).encode() for i in range(300)]
        assert len(client.connections()) == 1

    run_pair(kind, app(kind, short_timeouts=False), scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_client_errors(kind: str) -> None:
    async def scenario(client: Node, server: Node) -> None:
        addr = server.full_addrs[0]
        start = asyncio.get_running_loop().time()
        with pytest.raises(P2PTimeout, match=r"no response within 0\.1"):
            await request(client, addr, "GET", "/slow", timeout=0.1)
        assert asyncio.get_running_loop().time() - start < 0.4
        # a streamed body that breaks in the middle is never taken for a whole one: the
        # server resets the stream, which may discard what it sent before (head included)
        got = bytearray()
        with pytest.raises(ConnectionClosed):
            resp = await request(client, addr, "GET", "/broken-stream", stream=True)
            async with resp:
                assert resp.status == 200
                async for chunk in resp.iter_body():
                    got += chunk
        assert len(got) <= 1000
        with pytest.raises(ConnectionClosed):
            await request(client, addr, "GET", "/broken-stream")
        # a response larger than the client accepts
        with pytest.raises(MessageTooLarge):
            await request(client, addr, "POST", "/items", body=bytes(900), max_body_size=100)

        # a request body that fails: the caller sees its own error
        async def failing() -> AsyncIterator[bytes]:
            yield b"abc"
            raise OSError("source file vanished")

        with pytest.raises(OSError, match="vanished"):
            await request(client, addr, "POST", "/echo", body=failing())
        assert (await request(client, addr, "GET", "/info/ok")).status == 200

    run_pair(kind, app(kind), scenario)


@pytest.mark.parametrize("kind", ["tcp", "sim"])
def test_json_bodies_both_ways(kind: str) -> None:
    r = Router()

    @r.post("/double")
    async def double(req: Request) -> Response:
        return Response.from_json(
            {"got": req.json(), "type": req.headers.get("content-type")}, status=201
        )

    async def scenario(client: Node, server: Node) -> None:
        addr = server.full_addrs[0]
        for obj in [{"n": 7, "name": "Zoë"}, [1, 2.5, None], None, "text", 0]:
            resp = await request(client, addr, "POST", "/double", json=obj)
            assert resp.status == 201
            assert resp.json() == {"got": obj, "type": "application/json"}
        custom = {"content-type": "application/vnd.x+json"}
        resp = await request(client, addr, "POST", "/double", json=[1], headers=custom)
        assert resp.json()["type"] == "application/vnd.x+json"  # the caller's header wins
        with pytest.raises(InvalidConfiguration, match="not both"):
            await request(client, addr, "POST", "/double", body=b"x", json={})
        with pytest.raises(SerializationError, match="JSON"):
            await request(client, addr, "POST", "/double", json={"bad": {1, 2}})

    run_pair(kind, r, scenario)


def test_streaming_50_mb_both_ways_with_bounded_memory() -> None:
    """Upload and download 50 MB through an echo route; memory stays far below that."""
    total = 50 * 1024 * 1024
    piece = bytes(256 * 1024)
    # memory is bounded by the yamux windows (and one read), whatever the body size
    config = NetworkConfig(max_stream_window=1024 * 1024)

    async def main() -> None:
        async with (
            default_node(services=[app("tcp")], listen=[LOOPBACK], config=config) as server,
            default_node(config=config) as client,
        ):
            await client.connect(server.full_addrs[0])

            async def upload() -> AsyncIterator[bytes]:
                for _ in range(total // len(piece)):
                    yield piece

            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            resp = await request(
                client, server.peer_id, "POST", "/echo", body=upload(), stream=True
            )
            received = 0
            async with resp:
                async for chunk in resp.iter_body():
                    received += len(chunk)
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            assert resp.status == 200 and received == total
            assert peak < 6 * 1024 * 1024, f"peak {peak} bytes for a {total}-byte echo"

    asyncio.run(asyncio.wait_for(main(), 60))


def test_stream_handler_sees_a_streamed_request_body() -> None:
    router = Router()
    seen: list[bytes] = []

    @router.put("/upload", stream=True)
    async def upload(req: Request) -> Response:
        assert req.is_streamed
        data = await req.read(limit=10)
        seen.append(data)
        return Response.ok(data)

    async def scenario(client: Node, server: Node) -> None:
        ok = await request(client, server.full_addrs[0], "PUT", "/upload", body=b"0123456789")
        assert ok.body == b"0123456789"
        big = await request(client, server.full_addrs[0], "PUT", "/upload", body=b"x" * 11)
        assert big.status == 500  # the handler's own limit: its error, not the client's

    run_pair("tcp", router, scenario)
    assert len(seen) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_forbidden_and_rate_limited_over_the_wire(kind: str) -> None:
    from switchy.protocols.router import RateLimit, allow_peers

    allowed: list[Any] = []
    router = Router()

    async def only(req: Request, call_next: Next) -> Response:
        return await allow_peers(allowed)(req, call_next)

    router.use(only)
    router.use(RateLimit(rate=0.01, burst=2))
    router.get("/x")(lambda req: "x")

    async def scenario(client: Node, server: Node) -> None:
        addr = server.full_addrs[0]
        denied = await request(client, addr, "GET", "/x")
        assert (denied.status, denied.text()) == (403, "peer not allowed")
        allowed.append(client.peer_id)
        statuses = [(await request(client, addr, "GET", "/x")).status for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await request(client, addr, "GET", "/x")
        assert limited.headers["retry-after"] == "100"

    run_pair(kind, router, scenario)


segments = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/?\x00"),
    min_size=1,
    max_size=30,
)
header_maps = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=30),
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=50),
    max_size=10,
)


@settings(max_examples=25)
@given(
    st.lists(st.tuples(segments, header_maps, st.binary(max_size=5000)), min_size=1, max_size=12)
)
def test_arbitrary_paths_headers_and_bodies_over_the_wire(
    cases: list[tuple[str, dict[str, str], bytes]],
) -> None:
    router = Router()

    @router.put("/echo/{segment}")
    def echo(req: Request) -> Response:
        return Response.from_msgpack([req.params["segment"], req.headers, req.body])

    async def scenario(client: Node, server: Node) -> None:
        got = await asyncio.gather(
            *(
                request(client, server.full_addrs[0], "PUT", "/echo/" + seg, headers=h, body=b)
                for seg, h, b in cases
            )
        )
        for (seg, h, b), resp in zip(cases, got, strict=True):
            assert resp.msgpack() == [seg, h, b]

    run_pair("sim", router, scenario)


@pytest.mark.parametrize("kind", KINDS)
def test_memory_for_buffered_bodies_is_bounded_across_requests(kind: str) -> None:
    router = Router(max_body_size=2000, max_buffered=3000)
    gate: dict[str, asyncio.Event] = {}

    @router.post("/hold")
    async def hold(req: Request) -> Response:
        gate["in"].set()
        await gate["release"].wait()
        return Response.ok(f"{len(await req.read())}")

    async def scenario(client: Node, server: Node) -> None:
        gate["in"], gate["release"] = asyncio.Event(), asyncio.Event()
        addr = server.full_addrs[0]
        first = asyncio.ensure_future(request(client, addr, "POST", "/hold", body=bytes(2000)))
        await gate["in"].wait()
        assert router.buffered == 2000
        refused = await request(client, addr, "POST", "/hold", body=bytes(1500))
        assert refused.status == 503 and "server busy" in refused.text()
        assert router.buffered == 2000
        gate["release"].set()
        assert (await first).text() == "2000"
        again = await request(client, addr, "POST", "/hold", body=bytes(1500))
        assert again.text() == "1500"
        assert router.buffered == 0

    run_pair(kind, router, scenario)


def test_a_request_over_a_relay_knows_it_is_relayed() -> None:
    from switchy.transports.relay import RelayConfig, RelayService

    router = Router()

    @router.get("/where")
    def where(req: Request) -> Response:
        return Response.from_json({"relayed": req.relayed, "peer": str(req.remote_peer)})

    async def main() -> None:
        relay_cfg = RelayConfig(limit_data=0, limit_duration=0)
        async with (
            default_node(services=[RelayService(relay_cfg)], listen=[LOOPBACK]) as relay,
            default_node(services=[router]) as server,
            default_node() as client,
        ):
            (circuit,) = await server.listen(f"{relay.full_addrs[0]}/p2p-circuit")
            resp = await request(client, f"{circuit}/p2p/{server.peer_id}", "GET", "/where")
            assert resp.status == 200
            assert resp.json() == {"relayed": True, "peer": str(client.peer_id)}
            direct = await server.listen(LOOPBACK)
            async with default_node() as other:
                resp = await request(other, f"{direct[0]}/p2p/{server.peer_id}", "GET", "/where")
                assert resp.json() == {"relayed": False, "peer": str(other.peer_id)}

    asyncio.run(asyncio.wait_for(main(), 30))
