"""An httpx transport over switchy: ``httpx.AsyncClient(transport=SwitchyTransport(node))``.

Needs the ``http`` extra (``pip install switchy-p2p[http]``, for httpx).  Each request
opens one ``/http/1.1`` stream to the peer named by the URL's host, writes the request
(its body streamed with backpressure), and returns a response whose body streams from
the stream; closing the response early resets the stream (the server stops producing).

URLs: httpx lower-cases host names, and base58 peer ids are case-sensitive, so the host
is matched without case against ``peers`` (names you choose, e.g. ``http://media/``),
then taken as a CIDv1 peer id (lower case already: ``http://bafz.../``, see
:meth:`PeerId.to_cid <switchy.stack.identity.PeerId.to_cid>`), then matched against the
peer ids the node is connected to or has addresses for (``http://12d3koo.../``).  The
peer must be reachable by the node (connected, or with addresses in its peer store).

WebSocket: httpx has none; :meth:`SwitchyTransport.connect_websocket` opens one at a
``ws://`` URL (:mod:`~switchy.protocols.http.wsclient`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

import h11
import httpx

from switchy.protocols.http.core import DEFAULT_LIMITS, HTTP_PROTOCOL, ClientCore, HttpLimits
from switchy.protocols.http.io import next_event, write_timed
from switchy.protocols.http.wsclient import WebSocket, connect_websocket
from switchy.stack.errors import InvalidPeerId, P2PError, PeerNotFound
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, Target
from switchy.stack.stream import MuxedStream

__all__ = ["SwitchyTransport"]


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, stream: MuxedStream, core: ClientCore, limits: HttpLimits) -> None:
        self._stream = stream
        self._core = core
        self._limits = limits
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                event = await next_event(self._core, self._stream, self._limits.idle_timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._done = True
                    return
                else:
                    raise httpx.RemoteProtocolError("the peer ended the response early")
        except P2PError as exc:
            raise httpx.ReadError(f"reading the response from the peer: {exc}") from exc

    async def aclose(self) -> None:
        if self._done:
            await self._stream.close()
        else:
            await self._stream.reset()


class SwitchyTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request over a ``/http/1.1`` stream of ``node``.

    ``peers`` maps host names (any case) to peers (peer id, multiaddr or string);
    ``limits`` bounds the response head and waits.
    """

    def __init__(
        self,
        node: Node,
        *,
        peers: Mapping[str, Target] | None = None,
        limits: HttpLimits = DEFAULT_LIMITS,
    ) -> None:
        self.node = node
        self.peers = {k.lower(): v for k, v in (peers or {}).items()}
        self.limits = limits

    def resolve(self, host: str) -> Target:
        """The peer a URL host names; raises :class:`PeerNotFound` for an unknown one."""
        host = host.lower()
        if host in self.peers:
            return self.peers[host]
        if host.startswith("bafz"):
            with contextlib.suppress(InvalidPeerId):
                return PeerId.from_string(host)
        known: set[PeerId] = set(self.node.connected_peers) | set(self.node.peerstore.peers())
        for peer in known:
            if str(peer).lower() == host:
                return peer
        raise PeerNotFound(f"no known peer for the host {host!r}: connect to it first")

    async def connect_websocket(
        self, url: str, *, headers: Iterable[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> WebSocket:
        """Open a WebSocket at ``url`` (``ws://<host>/path``, the host resolved as for a
        request): httpx itself has none, see :mod:`~switchy.protocols.http.wsclient`."""
        parts = httpx.URL(url)
        target = parts.raw_path.decode("ascii")
        return await connect_websocket(
            self.node,
            self.resolve(parts.host),
            target,
            host=parts.host,
            headers=headers,
            subprotocols=subprotocols,
            limits=self.limits,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` over a new stream; the response body streams from it."""
        try:
            target = self.resolve(request.url.host)
            stream = await self.node.open_stream(target, HTTP_PROTOCOL)
        except P2PError as exc:
            raise httpx.ConnectError(f"cannot reach {request.url.host}: {exc}") from exc
        core = ClientCore(self.limits)
        try:
            headers = [(k.lower(), v) for k, v in request.headers.raw]
            data = core.request(request.method.encode(), request.url.raw_path, headers)
            async for chunk in request.stream:  # type: ignore[union-attr]
                if chunk:
                    data += core.data(chunk)
                    await write_timed(stream, data, self.limits.write_timeout)
                    data = b""
            data += core.end()
            await write_timed(stream, data, self.limits.write_timeout)
            event = await next_event(core, stream, self.limits.head_timeout)
            while isinstance(event, h11.InformationalResponse):
                event = await next_event(core, stream, self.limits.head_timeout)
            if not isinstance(event, h11.Response):
                raise httpx.RemoteProtocolError("the peer closed the stream without a response")
        except P2PError as exc:
            await stream.reset()
            raise httpx.ReadError(f"HTTP exchange with {request.url.host}: {exc}") from exc
        except BaseException:
            await stream.reset()
            raise
        return httpx.Response(
            status_code=event.status_code,
            headers=[(k, v) for k, v in event.headers],
            stream=_ResponseBody(stream, core, self.limits),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": bytes(event.reason)},
        )
