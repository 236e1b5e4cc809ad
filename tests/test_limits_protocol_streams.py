"""Streams that protocols open on a connection they hold (identify on connect, the relay's
hop -> stop stream, the relay client's hop stream, the router client) are charged to their
protocol's and service's scopes like the streams the node negotiates itself
(``Node.open_protocol_stream``, ``Node.charge_stream``).  Over loopback TCP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from switchy.presets import default_node
from switchy.protocols.identify import IDENTIFY_PROTOCOL, IdentifyService, identify_connection
from switchy.protocols.ping import PingService, ping
from switchy.protocols.router import ROUTER_PROTOCOL, Request, Router, request
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidConfiguration, RelayRefused, ResourceLimitExceeded
from switchy.stack.limits import LimitEvent
from switchy.stack.node import Node
from switchy.transports.relay import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    RelayConfig,
    RelayService,
    Status,
)
from switchy.transports.tcp import TcpTransport

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
UNLIMITED = RelayConfig(limit_data=0, limit_duration=0)


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await fn()

    asyncio.run(bounded())


def identify_node(*limits: str, on_connect: bool = True) -> Node:
    return Node(
        transports=[TcpTransport()],
        services=[IdentifyService(identify_on_connect=on_connect), PingService()],
        config=NetworkConfig(keepalive_interval=0, limits=limits),
        listen=[LOOPBACK],
    )


class Records(logging.Handler):
    """Every log record; ``seen(pred)``: an event set once a record matches ``pred``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._waits: list[tuple[Callable[[logging.LogRecord], bool], asyncio.Event]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for pred, event in self._waits:
            if pred(record):
                event.set()

    def seen(self, pred: Callable[[logging.LogRecord], bool]) -> asyncio.Event:
        event = asyncio.Event()
        if any(pred(r) for r in self.records):
            event.set()
        self._waits.append((pred, event))
        return event

    def assert_clean(self) -> None:
        """No record at WARNING or above and none with a traceback."""
        bad = [r for r in self.records if r.levelno >= logging.WARNING or r.exc_info]
        assert bad == [], [r.getMessage() for r in bad]


@contextmanager
def recorded() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger("switchy")
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def refusals(node: Node) -> tuple[list[LimitEvent], asyncio.Event]:
    """The node's limit refusals, and an event set at the first one."""
    events: list[LimitEvent] = []
    first = asyncio.Event()

    def on_event(event: LimitEvent) -> None:
        events.append(event)
        first.set()

    node.limits.add_observer(on_event)
    return events, first


def test_open_protocol_stream_charges_the_protocol_and_service_scopes_while_open() -> None:
    """An identify stream opened on a held connection shows in ``usage()`` under
    ``protocol:/ipfs/id/1.0.0`` and ``service:identify`` while open, and is gone after."""

    async def main() -> None:
        a, b = identify_node(on_connect=False), identify_node(on_connect=False)
        async with a, b:
            conn = await a.connect(b.full_addrs[0])
            stream = await a.open_protocol_stream(conn, IDENTIFY_PROTOCOL)
            assert stream.protocol == IDENTIFY_PROTOCOL
            usage = a.limits.usage()
            assert usage[f"protocol:{IDENTIFY_PROTOCOL}"] == {"streams_outbound": 1, "streams": 1}
            assert usage["service:identify"] == {"streams_outbound": 1, "streams": 1}
            assert await stream.read_all(limit=64 * 1024)  # b's answer: negotiated
            await stream.close()
            usage = a.limits.usage()
            assert f"protocol:{IDENTIFY_PROTOCOL}" not in usage
            assert "service:identify" not in usage
            with pytest.raises(InvalidConfiguration, match="at least one protocol id"):
                await a.open_protocol_stream(conn)

    run(main)


@pytest.mark.parametrize("scope", [f"protocol:{IDENTIFY_PROTOCOL}", "service:identify"])
def test_identify_on_connect_is_refused_cleanly_by_a_zero_limit(scope: str) -> None:
    """With ``<scope>.streams_outbound=0`` the identify a node starts on connect is
    refused naming the scope: logged at debug level (no traceback), the stream reset (no
    use left in the scope or the peer's), and the connection serves on."""

    async def main() -> None:
        a = identify_node(f"{scope}.streams_outbound=0")
        b = identify_node(on_connect=False)
        events, refused = refusals(a)
        with recorded() as log:
            async with a, b:
                failed = log.seen(
                    lambda r: r.getMessage().startswith("identify of") and scope in r.getMessage()
                )
                conn = await a.connect(b.full_addrs[0])
                await refused.wait()
                await failed.wait()
                assert [(e.scope, e.resource, e.limit) for e in events] == [
                    (scope, "streams_outbound", 0)
                ]
                with pytest.raises(ResourceLimitExceeded) as info:
                    await identify_connection(a, conn)
                err = info.value
                assert (err.scope, err.resource, err.limit) == (scope, "streams_outbound", 0)
                usage = a.limits.usage()
                assert usage.get(scope, {}).get("streams", 0) == 0
                assert usage.get(f"peer:{b.peer_id}", {}).get("streams", 0) == 0
                assert len(await ping(a, b.peer_id)) == 1  # other protocols serve on
            log.assert_clean()

    run(main)


def relay(*limits: str) -> Node:
    return default_node(
        services=[RelayService(UNLIMITED)],
        config=NetworkConfig(limits=limits),
        listen=[LOOPBACK],
    )


def test_the_relays_stop_stream_is_charged_while_the_circuit_is_open() -> None:
    """The stop stream the relay opens to the target counts in ``protocol:<stop>`` and the
    service that declares the stop protocol on the relay (the relay client's)."""

    async def main() -> None:
        async with relay() as r, default_node() as b, default_node() as a:
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            conn = await a.connect(f"{r.full_addrs[0]}/p2p-circuit/p2p/{b.peer_id}")
            assert conn.is_limited
            usage = r.limits.usage()
            assert usage[f"protocol:{STOP_PROTOCOL}"]["streams_outbound"] == 1
            assert usage["service:relay-client"]["streams_outbound"] == 1
            assert usage[f"protocol:{HOP_PROTOCOL}"]["streams_inbound"] >= 1
            assert len(await ping(a, b.peer_id)) == 1

    run(main)


@pytest.mark.parametrize("scope", [f"protocol:{STOP_PROTOCOL}", "service:relay-client"])
def test_a_zero_limit_on_the_stop_stream_refuses_the_circuit_cleanly(scope: str) -> None:
    """With ``<scope>.streams_outbound=0`` at the relay, the relay refuses the circuit
    (the dialer gets ``RESOURCE_LIMIT_EXCEEDED``, the relay logs the refusal naming the
    scope, no traceback), nothing stays charged, and the relay serves on."""

    async def main() -> None:
        r = relay(f"{scope}.streams_outbound=0")
        events, refused = refusals(r)
        with recorded() as log:
            async with r, default_node() as b, default_node() as a:
                await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
                with pytest.raises(RelayRefused) as info:
                    await a.connect(f"{r.full_addrs[0]}/p2p-circuit/p2p/{b.peer_id}")
                assert info.value.status == Status.RESOURCE_LIMIT_EXCEEDED
                assert refused.is_set()
                assert any(
                    rec.getMessage().startswith("relay: refused a circuit")
                    and scope in rec.getMessage()
                    for rec in log.records
                )
                assert [(e.scope, e.resource, e.limit) for e in events] == [
                    (scope, "streams_outbound", 0)
                ]
                assert r.limits.usage().get(scope, {}).get("streams", 0) == 0
                assert len(await ping(a, r.peer_id)) == 1
            log.assert_clean()

    run(main)


def test_a_zero_limit_on_the_hop_protocol_refuses_a_relayed_dial_naming_the_scope() -> None:
    """The relay client's hop stream is charged at the dialer: ``protocol:<hop>`` at 0
    refuses the dial with :class:`ResourceLimitExceeded` naming the scope."""

    async def main() -> None:
        scope = f"protocol:{HOP_PROTOCOL}"
        async with (
            relay() as r,
            default_node() as b,
            default_node(config=NetworkConfig(limits=(f"{scope}.streams_outbound=0",))) as a,
        ):
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            with pytest.raises(ResourceLimitExceeded) as info:
                await a.connect(f"{r.full_addrs[0]}/p2p-circuit/p2p/{b.peer_id}")
            assert (info.value.scope, info.value.resource) == (scope, "streams_outbound")
            assert a.limits.usage().get(scope, {}).get("streams", 0) == 0

    run(main)


def test_router_requests_are_charged_and_refused_by_a_zero_limit() -> None:
    """The router client's stream (negotiated with its head) counts in ``protocol:<router>``
    and ``service:router`` while the request runs; ``service:router.streams_outbound=0``
    refuses a request with :class:`ResourceLimitExceeded` naming the scope."""

    async def main() -> None:
        seen: list[dict[str, dict[str, int]]] = []
        app = Router()
        async with default_node(services=[app], listen=[LOOPBACK]) as server:

            @app.get("/usage")
            async def usage(req: Request) -> str:
                seen.append(client.limits.usage())  # while the client's stream is open
                return "ok"

            client = default_node(services=[Router()])
            async with client:
                resp = await request(client, server.full_addrs[0], "GET", "/usage")
                assert resp.status == 200
                (during,) = seen
                assert during[f"protocol:{ROUTER_PROTOCOL}"]["streams_outbound"] == 1
                assert during["service:router"]["streams_outbound"] == 1
            limited = default_node(
                services=[Router()],
                config=NetworkConfig(limits=("service:router.streams_outbound=0",)),
            )
            async with limited:
                with pytest.raises(ResourceLimitExceeded) as info:
                    await request(limited, server.full_addrs[0], "GET", "/usage")
                assert (info.value.scope, info.value.limit) == ("service:router", 0)
                assert limited.limits.usage().get("service:router", {}).get("streams", 0) == 0
                assert len(seen) == 1

    run(main)
