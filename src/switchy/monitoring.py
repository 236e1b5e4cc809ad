"""Metrics and health over HTTP: ``/metrics`` in the Prometheus text format, ``/healthz``.

A node keeps its metrics in :attr:`Node.metrics <switchy.stack.node.Node.metrics>`
(plain Python, no third-party import); this module exports them with
``prometheus-client``, the optional ``metrics`` extra
(``pip install 'switchy-p2p[metrics]'``)::

    async with default_node() as node, serve_metrics(node, "127.0.0.1", 9464) as server:
        ...  # scrape http://127.0.0.1:9464/metrics

``switchy listen|relay|registry|serve --metrics 127.0.0.1:9464`` does the same.  The
server runs on the node's event loop (a scrape reads the node's state where it lives),
speaks HTTP through :class:`~switchy.protocols.http.core.ServerCore` (``GET`` and
``HEAD``; ``405`` for other methods), answers one request per connection and bounds the
request head in size and time.
``/healthz`` answers 200 with a small JSON object (peer id, open connections) while the
node runs and 503 once it closes.

The metric names are listed in ``docs/metrics.md``; ``docs/grafana/switchy.json`` is a
Grafana dashboard reading them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import h11

from switchy.protocols.http.core import HttpError, HttpLimits, ServerCore
from switchy.protocols.http.io import read_head, write_timed
from switchy.protocols.http.proxy import tcp_multiaddr
from switchy.stack.errors import InvalidConfiguration, P2PError
from switchy.stack.metrics import HistogramValue, MetricFamily, MetricsRegistry
from switchy.stack.stream import Stream
from switchy.stack.transport import Listener
from switchy.transports.tcp import TcpTransport

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
    :meth:`start` and :meth:`close`.

    The HTTP is :class:`~switchy.protocols.http.core.ServerCore`'s (the sans-IO core the
    other HTTP servers use), one request per connection: ``GET`` and ``HEAD`` (the same
    head, no body); any other method is answered ``405`` with ``Allow: GET, HEAD``; a
    malformed or oversized request head gets its ``4xx`` answer."""

    def __init__(self, node: Node, host: str = "127.0.0.1", port: int = 9464) -> None:
        _prometheus()  # fail at once (InvalidConfiguration) when the extra is missing
        self.node = node
        self.host = host
        self._port = port
        self._listener: Listener | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port listened on (after :meth:`start`)."""
        if self._listener is not None and self._listener.addrs:
            return int(self._listener.addrs[0].value_for_protocol("tcp"))
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Listen; raises :class:`~switchy.stack.errors.ConnectionFailed` when the address
        cannot be used and :class:`~switchy.stack.errors.InvalidConfiguration` when the
        host is not an IP address (nor ``localhost``)."""
        if self._listener is None:
            # no SO_REUSEPORT: a second server on a port in use fails instead of sharing it
            tcp = TcpTransport(reuse_port=False)
            self._listener = await tcp.listen(tcp_multiaddr(self.host, self._port), self._client)
            log.info("serving metrics at %s", self.url)

    async def close(self) -> None:
        """Stop listening and end the requests in progress."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients))

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _client(self, conn: object) -> None:
        assert isinstance(conn, Stream)
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        core = ServerCore(_LIMITS)
        try:
            try:
                head = await read_head(core, conn, _LIMITS)
                if not isinstance(head, h11.Request):  # the client left before asking
                    await conn.close()
                    return
                answer = self._answer(core, head)
            except HttpError as exc:
                log.debug("metrics client: %s", exc)
                answer = core.error_response(exc.status, str(exc))
            await write_timed(conn, answer, _LIMITS.write_timeout, last=True)
            await conn.close()
        except (P2PError, OSError) as exc:
            log.debug("metrics client: %s", exc)
            await conn.reset()
        except asyncio.CancelledError:  # close(): the request in progress ends here
            await conn.reset()
            raise
        finally:
            if task is not None:
                self._clients.discard(task)

    def _answer(self, core: ServerCore, head: h11.Request) -> bytes:
        """The whole response to ``head`` (a body only for ``GET``)."""
        if head.method not in (b"GET", b"HEAD"):
            body = b"only GET and HEAD\n"
            return _response(core, 405, _TEXT, body, extra=[(b"allow", b"GET, HEAD")])
        status, ctype, body = self._resource(head.target.split(b"?", 1)[0])
        return _response(core, status, ctype, body, head_only=head.method == b"HEAD")

    def _resource(self, path: bytes) -> tuple[int, bytes, bytes]:
        """Status, content type and body of ``path``."""
        if path == b"/metrics":
            prom = _prometheus()
            try:
                text = render_metrics(self.node.metrics)
            except Exception:  # a collector's bug: our own, so a traceback
                log.exception("collecting metrics failed")
                return 500, _TEXT, b"collecting metrics failed\n"
            return 200, prom.CONTENT_TYPE_LATEST.encode(), text
        if path == b"/healthz":
            node = self.node
            healthy = not node.is_closed
            body = {
                "status": "ok" if healthy else "closed",
                "peer_id": str(node.peer_id),
                "connections": len(node.connections()),
                "listen_addrs": [str(a) for a in node.listen_addrs],
            }
            text = json.dumps(body).encode() + b"\n"
            return (200 if healthy else 503), b"application/json", text
        return 404, _TEXT, b"not found: try /metrics or /healthz\n"


_TEXT: Final = b"text/plain; charset=utf-8"
#: The HTTP limits of the metrics server: a small request head, read within
#: :data:`REQUEST_TIMEOUT`.
_LIMITS: Final = HttpLimits(
    max_head_size=MAX_REQUEST_HEAD,
    head_timeout=REQUEST_TIMEOUT,
    idle_timeout=REQUEST_TIMEOUT,
    write_timeout=REQUEST_TIMEOUT,
)


def _response(
    core: ServerCore,
    status: int,
    content_type: bytes,
    body: bytes,
    *,
    head_only: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A complete response: its head (with the body's length) and, unless ``head_only``
    (the answer to ``HEAD``), its body."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    data = core.response(status, headers)
    if not head_only:
        data += core.send(h11.Data(data=body))
    return data + core.send(h11.EndOfMessage())


def serve_metrics(node: Node, host: str = "127.0.0.1", port: int = 9464) -> MetricsServer:
    """A :class:`MetricsServer` for ``node`` (enter it with ``async with``)."""
    return MetricsServer(node, host, port)
