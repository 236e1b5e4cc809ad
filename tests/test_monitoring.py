"""Metrics over HTTP: real nodes on loopback TCP, a real HTTP scrape of /metrics and /healthz."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from switchy.monitoring import (
    MAX_REQUEST_HEAD,
    MetricsServer,
    parse_host_port,
    render_metrics,
)
from switchy.presets import default_node
from switchy.protocols.discovery.client import lookup
from switchy.protocols.discovery.registry import RegistryService
from switchy.protocols.echo import echo
from switchy.protocols.ping import ping
from switchy.protocols.router import Response, Router, request
from switchy.stack.errors import ConnectionFailed, DiscoveryFailed, InvalidConfiguration
from switchy.stack.metrics import MetricsRegistry, rcmgr_collector
from switchy.stack.node import ConnectionEvent, Node
from switchy.transports.relay import RelayService, RelayTransport
from switchy.transports.relay.config import RelayConfig

LOCAL = "/ip4/127.0.0.1/tcp/0"
ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get(url: str) -> tuple[int, str, bytes]:
    """A real HTTP GET (urllib, in a thread): status, content type, body."""

    def fetch() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=20) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    return await asyncio.to_thread(fetch)


async def scrape(server: MetricsServer) -> Samples:
    status, ctype, body = await get(server.url)
    assert status == 200 and ctype.startswith("text/plain")
    samples: Samples = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    server.last_names = exposition_names(body.decode())  # type: ignore[attr-defined]
    return samples


def exposition_names(text: str) -> set[str]:
    """The sample names a scrape's families stand for, with or without a sample yet."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + s for s in suffixes.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def router() -> Router:
    r = Router()

    @r.get("/hello")
    async def hello(_req: Any) -> Response:
        return Response(200, body=b"hi")

    return r


def test_scrape_after_connections_streams_pings_relay_discovery_and_router() -> None:
    async def main() -> None:
        hub_services = [
            RelayService(RelayConfig(limit_data=0, limit_duration=0)),
            RegistryService(),
            router(),
        ]
        async with (
            default_node(services=hub_services, listen=[LOCAL]) as hub,
            MetricsServer(hub, "127.0.0.1", 0) as server,
            default_node(services=[RelayTransport()]) as behind,
            default_node(services=[RelayTransport()]) as dialer,
        ):
            await behind.listen(f"{hub.full_addrs[0]}/p2p-circuit")  # a reservation
            assert len(await ping(dialer, hub.full_addrs[0], count=3)) == 3
            data = b"x" * 10_000
            assert await echo(dialer, hub.peer_id, data) == data
            reply = await request(dialer, hub.peer_id, "GET", "/hello")
            assert reply.status == 200
            assert (await request(dialer, hub.peer_id, "GET", "/nothing")).status == 404
            with pytest.raises(DiscoveryFailed, match="not registered"):
                await lookup(dialer, hub.peer_id, "nobody")
            # a relayed connection through the hub, carrying a ping
            circuit = next(a for a in behind.full_addrs if "/p2p-circuit" in str(a))
            await dialer.connect(circuit)
            assert len(await ping(dialer, behind.peer_id, count=2)) == 2

            s = await scrape(server)
            opened = "libp2p_swarm_connections_opened_total"
            assert total(s, opened, dir="inbound") == 2  # behind and dialer dialed the hub
            assert (
                total(s, opened, dir="inbound", transport="quic", security="tls")
                + total(s, opened, dir="inbound", transport="tcp", muxer="/yamux/1.0.0")
                == 2
            )
            assert total(s, "libp2p_swarm_connections_closed_total") == 0
            assert total(s, "libp2p_swarm_handshake_latency_seconds_count", dir="inbound") == 2
            streams = "libp2p_swarm_streams_opened_total"
            assert total(s, streams, dir="inbound", protocol="/echo/1.0.0") == 1
            assert total(s, streams, dir="inbound", protocol="/ipfs/ping/1.0.0") == 1
            echoed = "libp2p_swarm_stream_bytes_total"
            assert total(s, echoed, protocol="/echo/1.0.0", dir="in") == len(data)
            assert total(s, echoed, protocol="/echo/1.0.0", dir="out") == len(data)
            assert total(s, "libp2p_identify_received_total", type="identify") >= 2
            assert total(s, "switchy_router_requests_total", method="GET", status="200") == 1
            assert total(s, "switchy_router_requests_total", method="GET", status="404") == 1
            assert total(s, "switchy_router_request_duration_seconds_count", method="GET") == 2
            assert (
                total(
                    s, "switchy_discovery_requests_total", side="server", type="lookup",
                    status="not_found",
                )
                == 1
            )  # fmt: skip
            assert total(s, "libp2p_relaysvc_status") == 1
            assert total(s, "libp2p_relaysvc_reservations_total", type="opened") == 1
            assert total(s, "libp2p_relaysvc_reservations") == 1
            assert total(s, "libp2p_relaysvc_connections_total", type="opened") == 1
            assert total(s, "libp2p_relaysvc_circuits") == 1
            assert total(s, "libp2p_relaysvc_connection_request_response_status_total",
                         status="ok") == 1  # fmt: skip
            assert total(s, "process_open_fds") > 0
            check_dashboard_and_docs(server.last_names, dialer)  # type: ignore[attr-defined]

            # the dialer's own registry: ping round trips and the client's discovery latency
            mine = {f.name: f for f in dialer.metrics.collect()}
            ((_, rtts),) = mine["libp2p_ping_rtt_seconds"].samples
            assert not isinstance(rtts, float) and rtts.count == 5
            lookups = dict(mine["switchy_discovery_request_duration_seconds"].samples)
            assert lookups[("client", "lookup")].count == 1  # type: ignore[union-attr]

            # node-level totals survive the connections they count
            gone = asyncio.Event()

            def on_event(ev: ConnectionEvent) -> None:
                if ev.kind == "disconnected" and ev.peer == dialer.peer_id:
                    gone.set()

            hub.on_connection_event(on_event)
            await dialer.close()
            async with asyncio.timeout(20):
                await gone.wait()
            s = await scrape(server)
            assert total(s, "libp2p_swarm_connections_closed_total", dir="inbound") == 1
            assert total(s, "libp2p_swarm_connection_duration_seconds_count") == 1
            assert total(s, echoed, protocol="/echo/1.0.0", dir="in") == len(data)
            assert total(s, "libp2p_relaysvc_connections_total", type="closed") == 1
            assert total(s, "libp2p_relaysvc_circuits") == 0
            assert total(s, "libp2p_relaysvc_data_transferred_bytes_total") > 0

    asyncio.run(asyncio.wait_for(main(), 60))


DASHBOARD = ROOT / "docs" / "grafana" / "switchy.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
_METRIC_REF = re.compile(r"\b((?:libp2p|switchy|process)_[a-z0-9_]+)")


def dashboard_queries() -> list[str]:
    """Every query expression of the Grafana dashboard (and of its variables)."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def check_dashboard_and_docs(hub: set[str], dialer: Node) -> None:
    """Every metric the dashboard queries is exported (by the hub, the dialer or the
    resource-manager collector), and docs/metrics.md names every exported family."""
    reg = MetricsRegistry()
    reg.add_collector(rcmgr_collector(lambda: {"system": {"memory": (1, 2, 0)}}))
    others = [render_metrics(dialer.metrics, process=False), render_metrics(reg, process=False)]
    names = set(hub)
    for text in others:
        names |= exposition_names(text.decode())
    exprs = dashboard_queries()
    assert len(exprs) > 25
    referenced = {m for e in exprs for m in _METRIC_REF.findall(e)}
    assert referenced - names == set(), f"the dashboard queries unknown: {referenced - names}"
    exported = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in names}
    documented = set(_METRIC_REF.findall(METRICS_DOC.read_text()))
    ours = {n for n in exported if not n.startswith("process_")}
    missing = {n for n in ours if n not in documented and n + "_total" not in documented}
    assert missing == set(), f"docs/metrics.md does not name: {sorted(missing)}"


def test_dial_errors_are_counted_by_transport_and_error() -> None:
    async def main() -> None:
        async with default_node(listen=[LOCAL]) as target:
            addr = target.listen_addrs[0]
        async with default_node() as node:
            with pytest.raises(ConnectionFailed):
                await node.connect(f"{addr}/p2p/{target.peer_id}")
            metric = node.metrics.get("libp2p_swarm_dial_errors_total")
            assert metric is not None
            errors = {k: float(v) for k, v in metric.family().samples}  # type: ignore[arg-type]
            assert sum(errors.values()) == 1
            ((transport, _error),) = errors
            assert transport == "tcp"

    asyncio.run(asyncio.wait_for(main(), 30))


def test_healthz_404_bad_requests_and_closed_node() -> None:
    async def main() -> None:
        node = default_node(listen=[LOCAL])
        await node.start()
        async with MetricsServer(node, "127.0.0.1", 0) as server:
            base = server.url.removesuffix("/metrics")
            status, ctype, body = await get(base + "/healthz")
            assert status == 200 and ctype == "application/json"
            health = json.loads(body)
            assert health["status"] == "ok" and health["peer_id"] == str(node.peer_id)
            status, _, body = await get(base + "/other")
            assert status == 404 and b"/metrics" in body
            # an oversized request head is answered 431 and the connection is closed
            answer = await exchange(
                server, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST_HEAD * 2)
            )
            assert answer.startswith(b"HTTP/1.1 431 ")
            await node.close()
            status, _, body = await get(base + "/healthz")
            assert status == 503 and json.loads(body)["status"] == "closed"
        await node.close()

    asyncio.run(asyncio.wait_for(main(), 30))


async def exchange(server: MetricsServer, request: bytes) -> bytes:
    """Send raw ``request`` bytes; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_head_is_get_without_the_body_and_other_methods_are_405() -> None:
    async def main() -> None:
        async with default_node(listen=[LOCAL]) as node, MetricsServer(node, "127.0.0.1", 0) as s:
            for path in (b"/metrics", b"/healthz", b"/nope"):
                get_status, get_headers, get_body = split_response(
                    await exchange(s, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                )
                raw = await exchange(s, b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                status, headers, body = split_response(raw)
                assert (status, body) == (get_status, b""), raw
                assert headers["content-type"] == get_headers["content-type"]
                assert int(headers["content-length"]) > 0 and get_body
            assert [get_status, status] == [404, 404]  # the last path
            for method in (b"POST", b"PUT", b"DELETE"):
                request = method + b" /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                status, headers, body = split_response(await exchange(s, request))
                assert status == 405 and headers["allow"] == "GET, HEAD", (method, headers)
                assert b"GET and HEAD" in body
            # the server still serves after all of them
            status, _, body = await get(s.url.removesuffix("/metrics") + "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"

    asyncio.run(asyncio.wait_for(main(), 60))


def test_render_and_address_parsing() -> None:
    reg = MetricsRegistry()
    reg.counter("demo_total", "a demo", ("k",)).labels("v").inc(3)
    text = render_metrics(reg, process=False).decode()
    assert "# TYPE demo_total counter" in text and 'demo_total{k="v"} 3.0' in text
    assert parse_host_port("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_host_port("[::1]:0") == ("::1", 0)
    for bad in ("9464", "host:", "host:99999", ":1"):
        with pytest.raises(InvalidConfiguration, match="HOST:PORT"):
            parse_host_port(bad)
