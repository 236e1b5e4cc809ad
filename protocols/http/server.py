"""Serve an ASGI application (FastAPI, Starlette, Django, a plain callable) on a node.

Each inbound ``/http/1.1`` stream carries one request.  :class:`HttpService` parses it
with :class:`~switchy.protocols.http.core.ServerCore`, hands it to the application as an
ASGI ``http`` (or ``websocket``) scope and writes what the application sends.  No local
TCP hop is involved.

* Bodies stream both ways with backpressure: ``receive()`` reads the stream only when the
  application asks for more; ``send()`` returns once the peer's window took the bytes
  (a peer that reads nothing for ``limits.write_timeout`` gets a reset).
* Aborts: a peer that resets the stream makes the next ``send()`` raise
  :class:`ClientDisconnected` (an :class:`OSError`, as ASGI asks) and ``receive()``
  answer ``http.disconnect``, so the application stops producing.
* The remote peer: ``scope["extensions"]["libp2p"]["peer_id"]`` (the string form) and
  ``["peer"]`` (the :class:`~switchy.stack.identity.PeerId`); ``scope["client"]`` is
  ``None`` (there is no IP address to give).
* ``GET /.well-known/libp2p/protocols`` is answered by the service with the flat JSON
  map that go-libp2p and js-libp2p serve: ``{protocol id: {"path": prefix}}``.
* ``allow``: when given, only these peers are served; others get ``403`` (logged at INFO).
* Lifespan: ``startup`` when the node starts, ``shutdown`` when it stops (``lifespan``
  ``"auto"`` tolerates applications without lifespan support).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import unquote

import h11

from switchy.protocols.http.core import (
    DEFAULT_LIMITS,
    HTTP_PROTOCOL,
    WELL_KNOWN_PROTOCOLS_PATH,
    HttpError,
    HttpLimits,
    ServerCore,
    is_websocket_upgrade,
)
from switchy.protocols.http.io import (
    continue_if_asked,
    next_event,
    peer_of,
    read_head,
    write_timed,
)
from switchy.stack.errors import ConnectionClosed, InvalidConfiguration, P2PError, P2PTimeout
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import Stream
from switchy.stack.tasks import cancel_and_wait

__all__ = [
    "ASGIApp",
    "ClientDisconnected",
    "HttpService",
    "serve_asgi",
]

log = logging.getLogger(__name__)

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application.
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

_ASGI: Final = {"version": "3.0", "spec_version": "2.3"}


class ClientDisconnected(ConnectionClosed, OSError):
    """The peer went away (reset the stream, or stopped reading): raised by ``send()``."""


def _peer_allowed(allow: frozenset[PeerId] | None, peer: PeerId | None) -> bool:
    return allow is None or (peer is not None and peer in allow)


class HttpService(ProtocolService):
    """Serves ``app`` (ASGI 3) on ``/http/1.1`` streams (see the module docstring).

    ``protocols`` maps protocol ids to the path prefix where the application serves
    them (published at :data:`~switchy.protocols.http.core.WELL_KNOWN_PROTOCOLS_PATH`);
    ``allow`` restricts the peers served (``None``: every peer); ``limits`` bounds each
    exchange; ``lifespan`` is ``"auto"``, ``"on"`` (a failing lifespan fails the start)
    or ``"off"``.
    """

    service_name = "http"
    service_protocols = (HTTP_PROTOCOL,)

    def __init__(
        self,
        app: ASGIApp,
        *,
        protocols: Mapping[str, str] | None = None,
        allow: Iterable[PeerId] | None = None,
        limits: HttpLimits = DEFAULT_LIMITS,
        lifespan: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        self.app = app
        self.protocols = dict(protocols or {})
        self.allow = None if allow is None else frozenset(allow)
        self.limits = limits
        self.lifespan = lifespan
        #: The lifespan state, copied into every request's scope (ASGI ``state``).
        self.state: dict[str, Any] = {}
        self._lifespan_task: asyncio.Task[None] | None = None
        self._lifespan_in: asyncio.Queue[Message] = asyncio.Queue(maxsize=2)
        self._lifespan_out: asyncio.Queue[Message] = asyncio.Queue(maxsize=2)
        self._node: Node | None = None

    def attach(self, node: Node) -> None:
        """Serve ``/http/1.1`` on ``node``."""
        self._node = node
        node.handle(HTTP_PROTOCOL, self.handle_stream)

    # --- lifespan -----------------------------------------------------------------------

    async def start(self) -> None:
        """Run the application's lifespan ``startup``.

        Raises :class:`InvalidConfiguration` when it reports ``startup.failed`` (or, with
        ``lifespan="on"``, when it fails).
        """
        if self.lifespan == "off":
            return
        self._lifespan_task = asyncio.get_running_loop().create_task(self._run_lifespan())
        await self._lifespan_in.put({"type": "lifespan.startup"})
        done = await self._lifespan_answer()
        if done is None:
            return
        if done["type"] == "lifespan.startup.failed":
            raise InvalidConfiguration(f"ASGI startup failed: {done.get('message', '')}")

    async def stop(self) -> None:
        """Run the application's lifespan ``shutdown`` (when it took part in startup)."""
        task = self._lifespan_task
        if task is None or task.done():
            return
        await self._lifespan_in.put({"type": "lifespan.shutdown"})
        answer = await self._lifespan_answer()
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            log.warning("ASGI shutdown failed: %s", answer.get("message", ""))
        await cancel_and_wait(task)

    async def _lifespan_answer(self) -> Message | None:
        """The application's next lifespan message, or ``None`` when it ended without one."""
        task = self._lifespan_task
        assert task is not None
        getter = asyncio.ensure_future(self._lifespan_out.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()
        return None

    async def _run_lifespan(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self.state}
        try:
            await self.app(scope, self._lifespan_in.get, self._lifespan_out.put)
        except Exception as exc:
            if self.lifespan == "on":
                await self._lifespan_out.put(
                    {"type": "lifespan.startup.failed", "message": repr(exc)}
                )
            else:
                log.debug("the ASGI application does not support lifespan: %r", exc)

    # --- requests -----------------------------------------------------------------------

    async def handle_stream(self, stream: Stream) -> None:
        """Serve the one request on ``stream`` (the ``/http/1.1`` handler).

        Any :class:`~switchy.stack.stream.Stream` works (a TCP connection too); the peer
        is its ``remote_peer`` (``None`` in the scope when it has none).
        """
        core = ServerCore(self.limits)
        peer = peer_of(stream)
        try:
            head = await read_head(core, stream, self.limits)
        except HttpError as exc:
            log.info("bad HTTP request from %s: %s", peer, exc)
            await self._answer(stream, core.error_response(exc.status, str(exc)))
            return
        if not isinstance(head, h11.Request):  # the peer closed before a request
            return
        if not _peer_allowed(self.allow, peer):
            log.info("refused HTTP request from %s: not on the allowlist", peer)
            await self._answer(stream, core.error_response(403, "peer not allowed"))
            return
        path = head.target.partition(b"?")[0]
        if path == WELL_KNOWN_PROTOCOLS_PATH.encode() and head.method in (b"GET", b"HEAD"):
            body = json.dumps({p: {"path": prefix} for p, prefix in self.protocols.items()})
            await self._answer(
                stream, core.simple_response(200, body.encode(), b"application/json")
            )
            return
        if is_websocket_upgrade(head.headers):
            from switchy.protocols.http.websocket import serve_websocket

            await serve_websocket(self, stream, core, head)
            return
        await _HttpExchange(self, stream, core, head).run()

    async def _answer(self, stream: Stream, data: bytes) -> None:
        with contextlib.suppress(P2PError, OSError):
            await write_timed(stream, data, self.limits.write_timeout)
            await stream.close()

    def scope(self, kind: str, stream: Stream, head: h11.Request) -> Scope:
        """The ASGI scope of ``head`` on ``stream`` (``kind``: ``"http"``/``"websocket"``)."""
        raw_path, _, query = head.target.partition(b"?")
        peer = peer_of(stream)
        scope: Scope = {
            "type": kind,
            "asgi": _ASGI,
            "http_version": "1.1",
            "scheme": "http" if kind == "http" else "ws",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in head.headers],
            "client": None,
            "server": None,
            "state": dict(self.state),
            "extensions": {
                "libp2p": {
                    "peer_id": None if peer is None else str(peer),
                    "peer": peer,
                    "protocol": HTTP_PROTOCOL,
                }
            },
        }
        if kind == "http":
            scope["method"] = head.method.decode("ascii")
        return scope


class _HttpExchange:
    """One ``http`` scope: the application's ``receive``/``send`` over one stream."""

    def __init__(
        self, service: HttpService, stream: Stream, core: ServerCore, head: h11.Request
    ) -> None:
        self.service = service
        self.stream = stream
        self.core = core
        self.head = head
        self.limits = service.limits
        self.body_done = False
        self.response_started = False
        self.response_done = False
        self.disconnected = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._head_only = head.method == b"HEAD"
        self._early: Message | None = None

    async def run(self) -> None:
        scope = self.service.scope("http", self.stream, self.head)
        # what is known without reading: a request without a body ends right here, and
        # then the stream is watched (reset, extra bytes) even if the app never receives
        try:
            early = self.core.next_event()
        except HttpError as exc:
            log.info("bad HTTP request from %s: %s", peer_of(self.stream), exc)
            await self.service._answer(self.stream, self.core.error_response(exc.status, str(exc)))
            return
        if isinstance(early, h11.EndOfMessage):
            self._early = {"type": "http.request", "body": b"", "more_body": False}
            self.body_done = True
            self._watch()
        elif isinstance(early, h11.Data):
            self._early = {"type": "http.request", "body": bytes(early.data), "more_body": True}
        try:
            await self.service.app(scope, self.receive, self.send)
        except ClientDisconnected:
            log.debug("HTTP client %s went away", peer_of(self.stream))
        except Exception:
            log.exception("the ASGI application failed on %s", self.head.target)
            if not self.response_started:
                data = self.core.error_response(500, "internal server error")
                with contextlib.suppress(P2PError, OSError):
                    await write_timed(self.stream, data, self.limits.write_timeout)
                    await self.stream.close()
                    return
            await self.stream.reset()
            return
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
        if self._answered:
            return
        if self.disconnected.is_set():
            await self.stream.reset()
            return
        if not self.response_done:
            if self.response_started:  # the application stopped half-way
                await self.stream.reset()
                return
            await self.service._answer(
                self.stream, self.core.error_response(500, "no response from the application")
            )
            return
        with contextlib.suppress(P2PError, OSError):
            await self.stream.close()

    # --- receive ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self._early is not None:
            message, self._early = self._early, None
            return message
        if self.disconnected.is_set():
            return {"type": "http.disconnect"}
        if self.body_done:
            self._watch()
            await self.disconnected.wait()
            return {"type": "http.disconnect"}
        try:
            await continue_if_asked(self.stream, self.core)
            event = await next_event(self.core, self.stream, self.limits.idle_timeout)
        except HttpError as exc:
            log.info("bad HTTP body from %s: %s", peer_of(self.stream), exc)
            await self._fail(exc.status, str(exc))
            return {"type": "http.disconnect"}
        except (P2PError, OSError) as exc:
            log.debug("HTTP client %s: %s", peer_of(self.stream), exc)
            self._disconnect()
            return {"type": "http.disconnect"}
        if isinstance(event, h11.Data):
            return {"type": "http.request", "body": bytes(event.data), "more_body": True}
        if isinstance(event, h11.EndOfMessage):
            self.body_done = True
            self._watch()
            return {"type": "http.request", "body": b"", "more_body": False}
        # ConnectionClosed before the end of the body
        self._disconnect()
        return {"type": "http.disconnect"}

    def _watch(self) -> None:
        """After the body: watch the stream for a reset (abort) or extra bytes."""
        if self._watcher is None and self.core.trailing_data:  # already read with the head
            self._watcher = asyncio.ensure_future(self._extra_bytes())
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch_stream())

    async def _extra_bytes(self) -> None:
        log.info("HTTP client %s sent bytes after its request; resetting", peer_of(self.stream))
        self._disconnect()
        await self.stream.reset()

    async def _watch_stream(self) -> None:
        try:
            extra = await self.stream.read(1)
        except (P2PError, OSError):
            self._disconnect()
            return
        if extra:  # bytes past the announced body: one request per stream
            log.info(
                "HTTP client %s sent bytes after its request; resetting",
                peer_of(self.stream),
            )
            self._disconnect()
            await self.stream.reset()

    def _disconnect(self) -> None:
        self.disconnected.set()

    async def _fail(self, status: int, message: str) -> None:
        self._disconnect()
        data = self.core.error_response(status, message) if not self.response_started else b""
        with contextlib.suppress(P2PError, OSError):
            if data:
                await write_timed(self.stream, data, self.limits.write_timeout)
                await self.stream.close()
                self._answered = True  # the application's end must not reset the answer
                return
        await self.stream.reset()

    _answered = False

    # --- send ---------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.disconnected.is_set():
            raise ClientDisconnected("the HTTP client went away")
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise InvalidConfiguration("http.response.start sent twice")
            self.response_started = True
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            data = self.core.response(int(message["status"]), headers)
            # the head waits for the first body part (one write for small responses)
            self._pending = data
            return
        if kind != "http.response.body":
            return  # trailers, pathsend...: not supported, ignored as ASGI allows
        if not self.response_started or self.response_done:
            raise InvalidConfiguration("http.response.body outside a response")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        out = self._pending
        self._pending = b""
        if body and not self._head_only:
            out += self.core.data(body)
        if not more:
            out += self.core.end()
            self.response_done = True
        try:
            await write_timed(self.stream, out, self.limits.write_timeout)
        except (P2PError, OSError) as exc:
            self._disconnect()
            if isinstance(exc, P2PTimeout):
                log.info("HTTP client %s stopped reading: reset", peer_of(self.stream))
            raise ClientDisconnected(f"the HTTP client went away: {exc}") from None

    _pending: bytes = b""


def serve_asgi(node: Node, app: ASGIApp, **options: Any) -> HttpService:
    """Serve ``app`` on ``node`` (before it starts); ``options`` go to :class:`HttpService`.

    Returns the service (already attached).  Equivalent to passing
    ``HttpService(app, ...)`` in the node's ``services``.
    """
    service = HttpService(app, **options)
    service.attach(node)
    node.services.append(service)
    return service
