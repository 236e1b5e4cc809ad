"""Proxies: serve a local HTTP server to peers (``expose``), reach peers from a local port
(``gateway``).

Both pass one HTTP/1.1 exchange from a downstream byte stream to an upstream one with
:func:`forward_exchange`: the request head is re-written with h11 (hop-by-hop headers
dropped, ``Connection: close``), bodies stream both ways with backpressure (one read at
a time), and a ``101 Switching Protocols`` answer (WebSocket) turns the exchange into a
byte pipe.

* :class:`HttpProxyService` (``switchy expose http://127.0.0.1:8000``): each inbound
  ``/http/1.1`` stream becomes one TCP connection to the local server.  The request
  carries :data:`~switchy.protocols.http.core.PEER_ID_HEADER` (``x-switchy-peer-id``)
  with the authenticated remote peer id; a header of that name sent by the peer is
  removed.  Only origin-form targets under the exposed path are forwarded (no
  ``CONNECT``, no absolute URLs, no ``..`` segments): the local server is all that is
  reachable.
* :class:`Gateway` (``switchy gateway``): a local HTTP server; ``/p2p/<peer-id>/path``
  goes to ``path`` on that peer over ``/http/1.1``.  It only ever reaches peers over
  switchy, never an arbitrary host (absolute-form targets and ``CONNECT`` are refused).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Final, Protocol
from urllib.parse import unquote, urlsplit

import h11
from multiaddr import Multiaddr

from switchy.protocols.http.core import (
    DEFAULT_LIMITS,
    HTTP_PROTOCOL,
    PEER_ID_HEADER,
    WELL_KNOWN_PROTOCOLS_PATH,
    ClientCore,
    Headers,
    HttpError,
    HttpLimits,
    ServerCore,
    _Core,
    is_websocket_upgrade,
)
from switchy.protocols.http.io import continue_if_asked, next_event, pipe, read_head, write_timed
from switchy.protocols.http.pool import DEFAULT_POOL, PooledConnection, PoolLimits, UpstreamPool
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidConfiguration, InvalidPeerId, P2PError, P2PTimeout
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, ProtocolService, Target
from switchy.stack.stream import Connection, MuxedStream, Stream
from switchy.stack.transport import Listener
from switchy.transports.tcp import TcpTransport

__all__ = [
    "HOP_BY_HOP",
    "Gateway",
    "HttpProxyService",
    "OneStream",
    "Upstream",
    "forward_exchange",
    "tcp_multiaddr",
]

log = logging.getLogger(__name__)

#: Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
    }
)


def tcp_multiaddr(host: str, port: int) -> Multiaddr:
    """The ``/ip4|ip6/.../tcp/port`` multiaddr of ``host`` (``localhost`` is 127.0.0.1).

    Raises :class:`InvalidConfiguration` unless ``host`` is an IP address (or localhost)
    and ``port`` a port number.
    """
    host = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidConfiguration(f"{host!r} is not an IP address (nor localhost)") from None
    if not 0 <= port <= 65535:
        raise InvalidConfiguration(f"{port} is not a TCP port")
    return Multiaddr(f"/ip{ip.version}/{ip}/tcp/{port}")


def _forward_headers(headers: Iterable[tuple[bytes, bytes]], upgrade: bool, close: bool) -> Headers:
    out = [(k.lower(), v) for k, v in headers if k.lower() not in HOP_BY_HOP]
    if upgrade:
        out += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    elif close:
        out.append((b"connection", b"close"))
    return out


def _has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request head announces a body (RFC 9112 6.3: a length or a coding)."""
    for key, value in headers:
        k = key.lower()
        if k == b"transfer-encoding" or (k == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _send_error(stream: Stream, core: ServerCore, status: int, message: str) -> None:
    data = core.error_response(status, message)
    with contextlib.suppress(P2PError, OSError):
        if data:
            await write_timed(stream, data, core.limits.write_timeout)
            await stream.close()
            return
    await stream.reset()


class Upstream(Protocol):
    """Where :func:`forward_exchange` sends a request: a pool, or one stream."""

    #: Whether upstream connections stay open after an exchange (else ``Connection: close``).
    keep_alive: bool

    async def acquire(self, *, fresh: bool = False) -> PooledConnection:
        """A connection for one exchange (``fresh``: not one used before)."""

    async def release(self, conn: PooledConnection) -> None:
        """The exchange on ``conn`` ended (cleanly or not: the upstream decides)."""

    async def discard(self, conn: PooledConnection) -> None:
        """The exchange on ``conn`` failed: reset it."""


class OneStream:
    """An :class:`Upstream` of one stream already open (one request per stream, the spec's
    rule for ``/http/1.1``)."""

    keep_alive = False

    def __init__(self, stream: Stream, limits: HttpLimits = DEFAULT_LIMITS) -> None:
        self._conn = PooledConnection(stream, ClientCore(limits))

    async def acquire(self, *, fresh: bool = False) -> PooledConnection:
        """The stream (``fresh`` makes no difference: it is never reused)."""
        return self._conn

    async def release(self, conn: PooledConnection) -> None:
        """Close the stream."""
        with contextlib.suppress(P2PError, OSError):
            await conn.stream.close()

    async def discard(self, conn: PooledConnection) -> None:
        """Reset the stream."""
        with contextlib.suppress(P2PError, OSError):
            await conn.stream.reset()


async def _send_bodiless(
    upstream: Upstream,
    conn: PooledConnection,
    head: h11.Request,
    target: bytes,
    headers: Headers,
) -> tuple[PooledConnection, bytes]:
    """Send a request without a body; return the connection and the first bytes of the
    answer.  A reused connection the server closed meanwhile (nothing answered) is
    replaced by a fresh one once: such a request can be sent again.  The request side
    is not half-closed (go's ``net/http`` takes an early EOF as a client gone away)."""
    while True:
        core = conn.core
        out = core.request(head.method, target, headers) + core.end()
        try:
            await write_timed(conn.stream, out, core.limits.write_timeout)
            async with asyncio.timeout(core.limits.idle_timeout):
                first = await conn.stream.read(core.limits.read_size)
            if first or not conn.reused:
                return conn, first
        except TimeoutError:
            raise P2PTimeout(f"upstream sent nothing for {core.limits.idle_timeout}s") from None
        except (P2PError, OSError):
            if not conn.reused:
                raise
        log.debug("a pooled upstream connection was closed by the server: sending again")
        await upstream.discard(conn)
        conn = await upstream.acquire(fresh=True)


async def forward_exchange(
    down: Stream,
    down_core: ServerCore,
    head: h11.Request,
    upstream: Upstream,
    target: bytes,
    headers: Headers,
    limits: HttpLimits = DEFAULT_LIMITS,
    *,
    keep_alive: bool = False,
) -> bool:
    """Forward the request ``head`` (read from ``down``) to ``upstream`` and the answer back.

    ``target`` and ``headers`` are what is sent upstream (the caller re-writes them;
    hop-by-hop headers are dropped here).  Errors: an unreachable upstream or a bad or
    missing answer gives ``502``; a side that goes away resets the other.  The upstream
    connection goes back to ``upstream`` (kept when the exchange ended cleanly and it
    keeps connections alive); ``down`` is closed too unless ``keep_alive`` and both sides
    of ``down_core`` are ready for another request: then returns ``True`` (``down_core``
    started its next cycle).
    """
    upgrade = is_websocket_upgrade(head.headers)
    # an "Expect: 100-continue" is answered here, not passed on
    headers = [(k, v) for k, v in headers if k.lower() != b"expect"]
    headers = _forward_headers(headers, upgrade, close=not upstream.keep_alive)
    try:
        conn = await upstream.acquire()
    except P2PError as exc:
        log.warning("the upstream server is unreachable: %s", exc)
        await _send_error(down, down_core, 502, "bad gateway: the upstream server is unreachable")
        return False
    first = b""
    try:
        if _has_body(head.headers):
            out = conn.core.request(head.method, target, headers)
            await continue_if_asked(down, down_core)
            await _relay_body(
                down_core,
                down,
                conn.core,
                conn.stream,
                out,
                limits,
                "the client ended its request early",
            )
        else:
            if not isinstance(down_core.next_event(), h11.EndOfMessage):
                raise HttpError("a request without a length has no body")
            conn, first = await _send_bodiless(upstream, conn, head, target, headers)
    except HttpError as exc:
        log.info("bad HTTP request body: %s", exc)
        await upstream.discard(conn)
        await _send_error(down, down_core, exc.status, str(exc))
        return False
    except (P2PError, OSError) as exc:
        log.debug("forwarding a request: %s", exc)
        await upstream.discard(conn)
        await down.reset()
        return False
    up_core, up = conn.core, conn.stream
    try:
        if first:
            up_core.receive(first)
        event = await next_event(up_core, up, limits.idle_timeout)
        while isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            event = await next_event(up_core, up, limits.idle_timeout)
    except (HttpError, P2PError, OSError) as exc:
        log.info("no valid HTTP answer from upstream: %s", exc)
        await upstream.discard(conn)
        await _send_error(down, down_core, 502, f"bad gateway: {exc}")
        return False
    if isinstance(event, h11.InformationalResponse):  # 101: a WebSocket from now on
        answer = [(k, v) for k, v in event.headers]
        try:
            await write_timed(down, down_core.switch_protocol(answer), limits.write_timeout)
        except (P2PError, OSError):
            await upstream.discard(conn)
            await down.reset()
            return False
        await pipe(down, up, a_to_b=down_core.trailing_data, b_to_a=up_core.trailing_data)
        await upstream.release(conn)  # closed by the pipe: never reused
        return False
    if not isinstance(event, h11.Response):
        await upstream.discard(conn)
        await _send_error(down, down_core, 502, "bad gateway: upstream closed without answer")
        return False
    answer = [(k, v) for k, v in event.headers if k.lower() not in HOP_BY_HOP]
    try:
        # what one read of the upstream gives goes down in one write (head and body too)
        out = down_core.response(event.status_code, answer, close=not keep_alive)
        await _relay_body(
            up_core,
            up,
            down_core,
            down,
            out,
            limits,
            "upstream ended its answer early",
            last=not keep_alive,
        )
    except (HttpError, P2PError, OSError) as exc:
        log.debug("forwarding an answer: %s", exc)
        await upstream.discard(conn)
        await down.reset()
        return False
    await upstream.release(conn)
    if keep_alive and down_core.ready_for_next():
        down_core.start_next_cycle()
        return True
    with contextlib.suppress(P2PError, OSError):
        await down.close()
    return False


def _check_origin_form(head: h11.Request) -> None:
    """Refuse what would make a proxy open: CONNECT, absolute or authority targets."""
    if head.method == b"CONNECT":
        raise HttpError("CONNECT is not supported: this is not an open proxy", 405)
    if not head.target.startswith(b"/"):
        raise HttpError("only origin-form targets (/path) are served: not an open proxy", 400)


class HttpProxyService(ProtocolService):
    """Serves a local HTTP server (``upstream``, e.g. ``http://127.0.0.1:8000/media/``)
    to peers on ``/http/1.1`` (see the module docstring).

    Only paths under the upstream URL's path are forwarded (others get ``404``);
    ``allow`` restricts the peers served (``403`` for others, logged at INFO);
    ``protocols`` is published at the well-known resource; ``pool`` bounds the keep-alive
    connections to the local server (:class:`~switchy.protocols.http.pool.UpstreamPool`).
    """

    service_name = "http"
    service_protocols = (HTTP_PROTOCOL,)

    def __init__(
        self,
        upstream: str,
        *,
        allow: Iterable[PeerId] | None = None,
        limits: HttpLimits = DEFAULT_LIMITS,
        protocols: Mapping[str, str] | None = None,
        pool: PoolLimits = DEFAULT_POOL,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise InvalidConfiguration(f"expose needs an http://host:port URL, not {upstream!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.allow = None if allow is None else frozenset(allow)
        self.limits = limits
        self.protocols = dict(protocols or {})
        #: Keep-alive connections to the local server (bounded by ``pool``).
        self.pool = UpstreamPool(
            TcpTransport(NetworkConfig()), tcp_multiaddr(self.host, self.port), pool, limits
        )

    def attach(self, node: Node) -> None:
        """Serve ``/http/1.1`` on ``node``."""
        node.handle(HTTP_PROTOCOL, self.handle_stream)

    async def stop(self) -> None:
        """Close the idle connections to the local server."""
        await self.pool.close()

    def _check_path(self, target: bytes) -> None:
        path = unquote(target.partition(b"?")[0].decode("latin-1"))
        if ".." in path.split("/"):
            raise HttpError("'..' segments are not allowed", 400)
        if self.prefix and not (path == self.prefix or path.startswith(self.prefix + "/")):
            raise HttpError(f"{path} is outside what is exposed ({self.prefix}/)", 404)

    async def handle_stream(self, stream: MuxedStream) -> None:
        """Forward the one request on ``stream`` to the local server."""
        core = ServerCore(self.limits)
        peer = stream.remote_peer
        try:
            head = await read_head(core, stream, self.limits)
            if not isinstance(head, h11.Request):
                return
            if self.allow is not None and peer not in self.allow:
                log.info("refused HTTP request from %s: not on the allowlist", peer)
                raise HttpError("peer not allowed", 403)
            _check_origin_form(head)
            path = head.target.partition(b"?")[0]
            if path == WELL_KNOWN_PROTOCOLS_PATH.encode():
                body = json.dumps({p: {"path": x} for p, x in self.protocols.items()}).encode()
                with contextlib.suppress(P2PError, OSError):
                    data = core.simple_response(200, body, b"application/json")
                    await write_timed(stream, data, self.limits.write_timeout)
                    await stream.close()
                return
            self._check_path(head.target)
        except HttpError as exc:
            if exc.status != 403:
                log.info("bad HTTP request from %s: %s", peer, exc)
            await _send_error(stream, core, exc.status, str(exc))
            return
        headers = [
            (k, v) for k, v in head.headers if k.lower() not in (PEER_ID_HEADER.encode(), b"host")
        ]
        headers = [
            (b"host", f"{self.host}:{self.port}".encode()),
            *headers,
            (PEER_ID_HEADER.encode(), str(peer).encode()),
        ]
        await forward_exchange(stream, core, head, self.pool, head.target, headers, self.limits)


async def _relay_body(
    src_core: _Core,
    src: Stream,
    dst_core: _Core,
    dst: Stream,
    out: bytes,
    limits: HttpLimits,
    early: str,
    *,
    last: bool = False,
) -> None:
    """Pass a message body from ``src`` to ``dst`` after ``out`` (its head): what one read
    gives goes on in one write; raise :class:`HttpError` (``early``) if ``src`` stops first.
    ``last``: the final write half-closes ``dst`` too (one request per stream)."""
    while True:
        event = src_core.next_event()
        if event is h11.NEED_DATA:
            await write_timed(dst, out, limits.write_timeout)
            out = b""
            event = await next_event(src_core, src, limits.idle_timeout)
        if isinstance(event, h11.Data):
            out += dst_core.data(event.data)
        elif isinstance(event, h11.EndOfMessage):
            out += dst_core.end()
            await write_timed(dst, out, limits.write_timeout, last=last)
            return
        else:
            raise HttpError(early)


class LocalTcpPort(abc.ABC):
    """A local TCP port whose connections go to :meth:`_serve` (the gateway, a forwarder)."""

    def __init__(self) -> None:
        # no SO_REUSEPORT: a second gateway or forwarder on a port in use must fail, not
        # silently share the port with the first (the kernel would split connections)
        self._tcp = TcpTransport(NetworkConfig(), reuse_port=False)
        self._listener: Listener | None = None

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (loopback by default); return the address bound."""
        self._listener = await self._tcp.listen(tcp_multiaddr(host, port), self._serve)
        addr = self._listener.addrs[0]
        proto = "ip6" if "/ip6/" in str(addr) else "ip4"
        return addr.value_for_protocol(proto), int(addr.value_for_protocol("tcp"))

    async def close(self) -> None:
        """Stop listening (connections already being served go on until they end)."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    @abc.abstractmethod
    async def _serve(self, conn: object) -> None:
        """Serve one accepted TCP connection."""


@functools.lru_cache(maxsize=1024)
def _parse_peer(segment: str) -> PeerId | None:
    """The peer id ``segment`` spells, or ``None`` (cached: a gateway sees the same few)."""
    try:
        return PeerId.from_string(segment)
    except InvalidPeerId:
        return None


class Gateway(LocalTcpPort):
    """A local HTTP server through which HTTP clients reach peers: ``/p2p/<peer>/path``.

    ``names`` maps other first path segments to peers (``/p2p/media/...``); ``resolve``,
    when given, is asked for any other segment that is not a peer id (a discovery
    lookup: it returns the peer, its addresses known to the node).  Peers are reached with
    :meth:`Node.open_stream <switchy.stack.node.Node.open_stream>` (the node's connections
    or its peer store's addresses).  Start with :meth:`listen`.
    """

    def __init__(
        self,
        node: Node,
        *,
        names: Mapping[str, Target] | None = None,
        resolve: Callable[[str], Awaitable[Target]] | None = None,
        limits: HttpLimits = DEFAULT_LIMITS,
    ) -> None:
        self.node = node
        self.names = dict(names or {})
        self.resolve = resolve
        self.limits = limits
        super().__init__()

    async def _peer(self, segment: str) -> Target:
        if segment in self.names:
            return self.names[segment]
        peer = _parse_peer(segment)
        if peer is not None:
            return peer
        if self.resolve is None:
            raise HttpError(f"{segment!r} is not a peer id nor a known name", 400)
        try:
            return await self.resolve(segment)
        except P2PError as exc:
            raise HttpError(f"cannot resolve the name {segment!r}: {exc}", 404) from None

    async def _serve(self, conn: object) -> None:
        """Serve the requests of one client connection (HTTP/1.1 keep-alive)."""
        assert isinstance(conn, Connection)
        core = ServerCore(self.limits)
        while await self._serve_one(conn, core):
            pass

    async def _serve_one(self, conn: Connection, core: ServerCore) -> bool:
        try:
            head = await read_head(core, conn, self.limits)
            if not isinstance(head, h11.Request):
                await conn.close()
                return False
            _check_origin_form(head)
            raw_path, sep, query = head.target.partition(b"?")
            parts = raw_path.decode("latin-1").split("/", 3)
            if len(parts) < 3 or parts[1] != "p2p" or not parts[2]:
                raise HttpError("use /p2p/<peer-id>/path: only peers are reachable here", 404)
            peer = await self._peer(unquote(parts[2]))
            rest = "/" + (parts[3] if len(parts) > 3 else "")
            target = rest.encode("latin-1") + (sep + query if sep else b"")
        except HttpError as exc:
            log.info("gateway request refused: %s", exc)
            await _send_error(conn, core, exc.status, str(exc))
            return False
        except (P2PError, OSError):
            await conn.reset()
            return False
        try:
            up = await self.node.open_stream(peer, HTTP_PROTOCOL)
        except P2PError as exc:
            log.warning("gateway: cannot reach %s: %s", peer, exc)
            await _send_error(conn, core, 502, f"bad gateway: cannot reach {peer}: {exc}")
            return False
        headers = [(k, v) for k, v in head.headers if k.lower() != b"host"]
        headers.insert(0, (b"host", str(peer).encode()))
        return await forward_exchange(
            conn,
            core,
            head,
            OneStream(up, self.limits),
            target,
            headers,
            self.limits,
            keep_alive=True,
        )
