"""Metrics and health over HTTP: ``/metrics`` in the Prometheus text format, ``/healthz``.

A node keeps its metrics in :attr:`Node.metrics <switchy.stack.node.Node.metrics>`
(plain Python, no third-party import); this module exports them with
``prometheus-client``, the optional ``metrics`` extra
(``pip install 'switchy-p2p[metrics]'``)::

    async with default_node() as node, serve_metrics(node, "127.0.0.1", 9464) as server:
        ...  # scrape http://127.0.0.1:9464/metrics

``switchy listen|relay|registry|serve --metrics 127.0.0.1:9464`` does the same.  The
server runs on the node's event loop (a scrape reads the node's state where it lives),
answers one request per connection and bounds the request head in size and time.
``/healthz`` answers 200 with a small JSON object (peer id, open connections) while the
node runs and 503 once it closes.

The metric names are listed in ``docs/metrics.md``; ``docs/grafana/switchy.json`` is a
Grafana dashboard reading them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import h11

from switchy.stack.errors import InvalidConfiguration
from switchy.stack.metrics import HistogramValue, MetricFamily, MetricsRegistry

if TYPE_CHECKING:
    from switchy.stack.node import Node

__all__ = [
    "MAX_REQUEST_HEAD",
    "REQUEST_TIMEOUT",
    "MetricsServer",
    "parse_host_port",
    "render_metrics",
    "serve_metrics",
]

log = logging.getLogger(__name__)

#: Largest request head (request line and headers) the metrics server reads, in bytes.
MAX_REQUEST_HEAD: Final = 8 * 1024
#: Seconds a client has to send its request head.
REQUEST_TIMEOUT: Final = 10.0
_INSTALL_HINT = (
    "metrics need prometheus-client: pip install 'switchy-p2p[metrics]' "
    "(or pip install prometheus-client)"
)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise InvalidConfiguration(_INSTALL_HINT) from None
    return prometheus_client


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) as a pair; raises
    :class:`~switchy.stack.errors.InvalidConfiguration` naming what is wrong."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidConfiguration(
            f"invalid metrics address {text!r}: give HOST:PORT, e.g. 127.0.0.1:9464"
        )
    return host, int(port_text)


class _Bridge:
    """A prometheus-client collector reading a :class:`MetricsRegistry` at each scrape."""

    def __init__(self, registry: MetricsRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        _prometheus()
        from prometheus_client import core
        from prometheus_client.utils import floatToGoString

        for fam in self._registry.collect():
            yield _convert(core, floatToGoString, fam)


def _convert(core: Any, fmt: Any, fam: MetricFamily) -> Any:
    labels = list(fam.label_names)
    if fam.kind == "counter":
        out = core.CounterMetricFamily(fam.name, fam.help, labels=labels)
    elif fam.kind == "gauge":
        out = core.GaugeMetricFamily(fam.name, fam.help, labels=labels)
    else:
        out = core.HistogramMetricFamily(fam.name, fam.help, labels=labels)
    for values, value in fam.samples:
        if isinstance(value, HistogramValue):
            buckets = [(fmt(bound), n) for bound, n in value.cumulative()]
            out.add_metric(list(values), buckets, value.sum)
        else:
            out.add_metric(list(values), value)
    return out


def render_metrics(registry: MetricsRegistry, *, process: bool = True) -> bytes:
    """The Prometheus text exposition of ``registry`` (and, with ``process``, the
    process's memory, CPU and file descriptors as ``process_*``)."""
    prom = _prometheus()
    target = prom.CollectorRegistry(auto_describe=False)
    target.register(_Bridge(registry))
    if process:
        prom.ProcessCollector(registry=target)
    data: bytes = prom.generate_latest(target)
    return data


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` of ``node`` on ``host:port`` (port 0: any
    free port; :attr:`port` tells which).  Use as an async context manager, or call
    :meth:`start` and :meth:`close`."""

    def __init__(self, node: Node, host: str = "127.0.0.1", port: int = 9464) -> None:
        _prometheus()  # fail at once (InvalidConfiguration) when the extra is missing
        self.node = node
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port listened on (after :meth:`start`)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Listen; raises :class:`OSError` when the address cannot be used."""
        if self._server is None:
            self._server = await asyncio.start_server(self._client, self.host, self._port)
            log.info("serving metrics at %s", self.url)

    async def close(self) -> None:
        """Stop listening and end the requests in progress."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients))
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
                status, ctype, body = await self._answer(conn, reader)
                headers = [
                    ("Content-Type", ctype),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                ]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
                writer.write(conn.send(h11.Data(data=body)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
        except (TimeoutError, OSError, h11.ProtocolError) as exc:
            log.debug("metrics client: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if task is not None:
                self._clients.discard(task)

    async def _answer(
        self, parser: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[int, str, bytes]:
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(4096)
                parser.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise OSError("client closed before its request")
        path = event.target.decode("latin-1").split("?", 1)[0]
        if event.method not in (b"GET", b"HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET\n"
        if path == "/metrics":
            prom = _prometheus()
            try:
                text = render_metrics(self.node.metrics)
            except Exception:  # a collector's bug: our own, so a traceback
                log.exception("collecting metrics failed")
                return 500, "text/plain; charset=utf-8", b"collecting metrics failed\n"
            return 200, prom.CONTENT_TYPE_LATEST, text
        if path == "/healthz":
            node = self.node
            healthy = not node.is_closed
            body = {
                "status": "ok" if healthy else "closed",
                "peer_id": str(node.peer_id),
                "connections": len(node.connections()),
                "listen_addrs": [str(a) for a in node.listen_addrs],
            }
            text = json.dumps(body).encode() + b"\n"
            return (200 if healthy else 503), "application/json", text
        return 404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n"


def serve_metrics(node: Node, host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
    """A :class:`MetricsServer` for ``node`` (enter it with ``async with``)."""
    return MetricsServer(node, host, port)
