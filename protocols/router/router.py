"""Server side of the router: routes, services, sub-routers, middleware and the stream handler.

::

    router = Router()

    @router.get("/tracks/{track_id}")
    async def track(request: Request) -> Response:
        return Response.from_json({"id": request.params["track_id"]})

    node = default_node(services=[router])      # serves /switchy/router/1.0.0

Handlers may be plain functions or coroutines; plain ones run on the event loop, so they
must be quick (use a coroutine and ``asyncio.to_thread`` for blocking work).

Matching is exact and case-sensitive on ``/``-separated segments; ``{name}`` matches one
non-empty segment.  At each segment a literal beats a parameter.  Two routes conflict when
they have the same method and the same shape (literals equal, parameters anywhere at the
same places); a conflict raises :class:`InvalidConfiguration` when registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, runtime_checkable

import attrs

from switchy.protocols.router.adapter import MessageStream, write_message
from switchy.protocols.router.core import (
    DEFAULT_MAX_BODY_SIZE,
    METHODS,
    ROUTER_PROTOCOL,
    MessageReader,
    RequestHead,
    encode_response_head,
)
from switchy.protocols.router.messages import CONTENT_TEXT, Request, Response
from switchy.stack.errors import (
    ConnectionClosed,
    InvalidConfiguration,
    MessageTooLarge,
    P2PError,
    P2PTimeout,
    ProtocolError,
    ResourceLimitExceeded,
)
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream

if TYPE_CHECKING:
    from switchy.protocols.router.metrics import RouterMetrics
    from switchy.stack.identity import PeerId
    from switchy.stack.limits import StreamScope

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_MAX_CONCURRENT",
    "DEFAULT_READ_TIMEOUT",
    "Handler",
    "HandlerResult",
    "Middleware",
    "Next",
    "RateLimit",
    "Route",
    "Router",
    "Service",
    "allow_peers",
]

log = logging.getLogger(__name__)

#: Seconds a server waits for the next bytes of a request head or body before answering 408.
DEFAULT_READ_TIMEOUT = 10.0
#: Bytes per second (averaged over the time spent waiting for them, after 10 s of credit)
#: a client must send its request at; slower is answered 408 (slowloris).
DEFAULT_MIN_REQUEST_RATE = 1024.0
#: Seconds a handler may run before the server answers 503.
DEFAULT_HANDLER_TIMEOUT = 30.0
#: Requests served at once by one router; more are answered 503 at once.
DEFAULT_MAX_CONCURRENT = 1024
#: Bytes of request bodies a router holds in memory at once, all requests together.
DEFAULT_MAX_BUFFERED = 256 * 1024 * 1024

#: What a handler may return: a Response, or bytes/str (200), dict/list (200 JSON), None (204).
HandlerResult: TypeAlias = Response | bytes | str | dict[str, Any] | list[Any] | None
#: A request handler, sync or async.
Handler: TypeAlias = Callable[[Request], HandlerResult | Awaitable[HandlerResult]]
#: The rest of the chain, as seen by a middleware.
Next: TypeAlias = Callable[[Request], Awaitable[Response]]
#: ``async def mw(request, call_next) -> Response``: runs around what follows it.
Middleware: TypeAlias = Callable[[Request, Next], Awaitable[Response]]

F = TypeVar("F", bound=Handler)

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INTERNAL_ERROR = "internal server error"


@runtime_checkable
class Service(Protocol):
    """A group of routes: ``router.register_service(service)`` calls :meth:`register_routes`."""

    def register_routes(self, router: Router) -> None:
        """Add this service's routes (and middleware for them) to ``router``."""


@attrs.frozen
class Route:
    """One registered route."""

    method: str
    pattern: str
    handler: Handler
    #: Hand the body to the handler as a stream instead of reading it into memory first.
    stream: bool = False
    #: Body limit of this route (``None``: the router's for buffered bodies, none when streamed).
    max_body_size: int | None = None
    #: Middleware for this route only (from a mounted sub-router or service), outermost first.
    middleware: tuple[Middleware, ...] = ()

    @property
    def segments(self) -> list[str]:
        """The pattern split on ``/``."""
        return self.pattern.split("/")[1:]

    @property
    def shape(self) -> tuple[str | None, ...]:
        """Literals, with ``None`` for each parameter: what conflicts are judged on."""
        return tuple(None if _PARAM.fullmatch(s) else s for s in self.segments)


class _Node:
    __slots__ = ("param", "param_names", "routes", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.routes: dict[str, Route] = {}
        self.param_names: dict[str, list[str]] = {}


def _check_pattern(pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise InvalidConfiguration(f"route path must start with '/', got {pattern!r}")
    if "?" in pattern or "\x00" in pattern:
        raise InvalidConfiguration(f"route path must not contain '?' or NUL: {pattern!r}")
    names: set[str] = set()
    for seg in pattern.split("/")[1:]:
        m = _PARAM.fullmatch(seg)
        if m:
            if m.group(1) in names:
                raise InvalidConfiguration(f"parameter {{{m.group(1)}}} twice in {pattern!r}")
            names.add(m.group(1))
        elif "{" in seg or "}" in seg:
            raise InvalidConfiguration(
                f"segment {seg!r} of {pattern!r}: a parameter is a whole segment '{{name}}'"
            )


def _coerce(result: object) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(204)
    if isinstance(result, bytes | bytearray):
        return Response.ok(bytes(result), content_type="application/octet-stream")
    if isinstance(result, str):
        return Response.ok(result)
    if isinstance(result, dict | list):
        return Response.from_json(result)
    raise TypeError(f"a handler returned {type(result).__name__}, not a Response")


class Router(ProtocolService):
    """Routes requests of ``/switchy/router/1.0.0`` to handlers.

    A router is a :class:`~switchy.stack.node.ProtocolService`: pass it in ``Node(services=[...])``
    or call :meth:`attach`.  Limits: ``max_body_size`` for bodies read into memory,
    ``read_timeout`` for each wait on the client's next bytes (408), ``handler_timeout``
    for a handler (503; time a streaming handler spends waiting for the request body is
    not counted: the read timeout bounds that), ``min_request_rate`` for the whole request,
    head and body, in bytes per second of waiting (408 below; ``None``: no minimum),
    ``max_concurrent`` requests in progress (503 beyond).  Bodies read into memory count
    against ``max_buffered`` and are charged to the stream's resource scope (the peer's
    and the system's memory budgets; 503 naming the scope when one is full).
    """

    service_name = "router"
    service_protocols = (ROUTER_PROTOCOL,)

    def __init__(
        self,
        *,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        handler_timeout: float | None = DEFAULT_HANDLER_TIMEOUT,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        min_request_rate: float | None = DEFAULT_MIN_REQUEST_RATE,
    ) -> None:
        if max_body_size < 0 or max_concurrent < 1 or max_buffered < 0:
            raise InvalidConfiguration(
                "max_body_size and max_buffered must be >= 0, max_concurrent >= 1"
            )
        self.max_body_size = max_body_size
        self.max_buffered = max_buffered
        #: Bytes of request bodies held right now (buffered routes).
        self.buffered = 0
        self.read_timeout = read_timeout
        self.min_request_rate = min_request_rate
        self.handler_timeout = handler_timeout
        self.max_concurrent = max_concurrent
        self._routes: list[Route] = []
        self._keys: dict[tuple[str, tuple[str | None, ...]], Route] = {}
        self._tree = _Node()
        self._static: dict[str, dict[str, Route]] = {}
        self._middleware: list[Middleware] = []
        self._entry: Next | None = None
        self._in_flight = 0
        self._metrics: RouterMetrics | None = None

    # --- registration -------------------------------------------------------------------

    @property
    def routes(self) -> list[Route]:
        """Every registered route, in registration order."""
        return list(self._routes)

    def route(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        stream: bool = False,
        max_body_size: int | None = None,
    ) -> Route:
        """Serve ``method path`` with ``handler(request)``; raise on a conflicting route."""
        if method not in METHODS:
            raise InvalidConfiguration(f"method must be one of {', '.join(METHODS)}: {method!r}")
        if not callable(handler):
            raise InvalidConfiguration(f"handler for {method} {path} is not callable")
        r = Route(method, path, handler, stream, max_body_size)
        self._add([r])
        return r

    def _add(self, routes: Sequence[Route]) -> None:
        new: dict[tuple[str, tuple[str | None, ...]], Route] = {}
        for r in routes:
            _check_pattern(r.pattern)
            key = (r.method, r.shape)
            other = self._keys.get(key) or new.get(key)
            if other is not None:
                raise InvalidConfiguration(
                    f"route {r.method} {r.pattern} conflicts with {other.method} {other.pattern}"
                )
            new[key] = r
        for r in routes:
            self._insert(r)

    def _insert(self, r: Route) -> None:
        self._keys[(r.method, r.shape)] = r
        self._routes.append(r)
        node = self._tree
        names: list[str] = []
        for seg in r.segments:
            m = _PARAM.fullmatch(seg)
            if m:
                names.append(m.group(1))
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                node = node.static.setdefault(seg, _Node())
        node.routes[r.method] = r
        node.param_names[r.method] = names
        if not names:
            self._static.setdefault(r.pattern, {})[r.method] = r

    def _decorator(
        self, method: str, path: str, stream: bool, max_body_size: int | None
    ) -> Callable[[F], F]:
        def register(handler: F) -> F:
            self.route(method, path, handler, stream=stream, max_body_size=max_body_size)
            return handler

        return register

    def get(
        self, path: str, *, stream: bool = False, max_body_size: int | None = None
    ) -> Callable[[F], F]:
        """Decorator: serve ``GET path``."""
        return self._decorator("GET", path, stream, max_body_size)

    def post(
        self, path: str, *, stream: bool = False, max_body_size: int | None = None
    ) -> Callable[[F], F]:
        """Decorator: serve ``POST path``."""
        return self._decorator("POST", path, stream, max_body_size)

    def put(
        self, path: str, *, stream: bool = False, max_body_size: int | None = None
    ) -> Callable[[F], F]:
        """Decorator: serve ``PUT path``."""
        return self._decorator("PUT", path, stream, max_body_size)

    def delete(
        self, path: str, *, stream: bool = False, max_body_size: int | None = None
    ) -> Callable[[F], F]:
        """Decorator: serve ``DELETE path``."""
        return self._decorator("DELETE", path, stream, max_body_size)

    def patch(
        self, path: str, *, stream: bool = False, max_body_size: int | None = None
    ) -> Callable[[F], F]:
        """Decorator: serve ``PATCH path``."""
        return self._decorator("PATCH", path, stream, max_body_size)

    def use(self, middleware: Middleware) -> Middleware:
        """Add ``middleware`` around every request of this router (usable as a decorator).

        The first added runs outermost.  It sees every request, 404 and 405 included,
        before the body is read.  On a router mounted into another, it applies to the
        mounted routes only.
        """
        self._middleware.append(middleware)
        self._entry = None
        return middleware

    def mount(self, prefix: str, sub: Router) -> None:
        """Add every route of ``sub`` under ``prefix`` (``/api`` + ``/x`` → ``/api/x``).

        The routes are copied now, with ``sub``'s middleware; all or none are added.
        """
        if prefix and not prefix.startswith("/"):
            raise InvalidConfiguration(f"mount prefix must start with '/': {prefix!r}")
        prefix = prefix.rstrip("/")
        mw = tuple(sub._middleware)
        self._add(
            [
                attrs.evolve(r, pattern=prefix + r.pattern, middleware=mw + r.middleware)
                for r in sub._routes
            ]
        )

    def register_service(self, service: Service) -> None:
        """Add ``service``'s routes: all of them, or none if one conflicts."""
        if not isinstance(service, Service):
            raise InvalidConfiguration(f"{service!r} has no register_routes(router) method")
        staging = Router()
        service.register_routes(staging)
        self.mount("", staging)

    def with_service(self, service: Service) -> Router:
        """:meth:`register_service`, returning the router (for chaining)."""
        self.register_service(service)
        return self

    # --- node integration -----------------------------------------------------------

    def attach(self, node: Node) -> None:
        """Serve this router on ``node`` under :data:`ROUTER_PROTOCOL`."""
        from switchy.protocols.router.metrics import RouterMetrics

        node.handle(ROUTER_PROTOCOL, self.handle_stream)
        self._metrics = RouterMetrics(node.metrics)
        self._middleware.insert(0, self._metrics.middleware())  # outermost: sees all
        self._entry = None

    # --- dispatch ---------------------------------------------------------------------

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | Response:
        """The route and parameters for ``method path``, or the 404/405 response."""
        static = self._static.get(path)
        if static is not None:
            r = static.get(method)
            if r is not None:
                return r, {}
        found: list[tuple[_Node, list[str]]] = []
        _collect(self._tree, path.split("/")[1:], 0, [], found)
        for node, values in found:
            r = node.routes.get(method)
            if r is not None:
                return r, dict(zip(node.param_names[method], values, strict=True))
        if not found:
            return Response.not_found(f"no route for {path[:200]}")
        allowed = sorted({m for node, _ in found for m in node.routes}, key=METHODS.index)
        return Response.error(
            405, f"{method} not allowed on {path[:200]}", headers={"allow": ", ".join(allowed)}
        )

    async def dispatch(self, request: Request) -> Response:
        """Run ``request`` through the middleware and its route; always returns a Response.

        Usable without a network (tests, in-process calls) with a bytes body.
        """
        entry = self._entry
        if entry is None:
            entry = self._endpoint
            for mw in reversed(self._middleware):
                entry = _wrap(mw, entry)
            self._entry = entry
        return await entry(request)

    def _charger(self, source: MessageStream) -> Callable[[int], None]:
        scope = _stream_scope(source)

        def charge(n: int) -> None:
            if self.buffered + n > self.max_buffered:
                raise ResourceLimitExceeded(
                    f"request bodies in memory would exceed {self.max_buffered} bytes"
                )
            if scope is not None:  # the stream's, peer's, protocol's and system's budget
                scope.reserve_memory(n)
            self.buffered += n
            source.charged += n

        return charge

    async def _endpoint(self, request: Request) -> Response:
        found = self.match(request.method, request.path)
        if isinstance(found, Response):
            return found
        route, params = found
        request.params = params
        request.route = route.pattern
        source: MessageStream | None = request._source
        if source is not None:
            try:
                if route.stream:
                    source.set_max_body_size(route.max_body_size)
                    request.body = source.iter_body()
                else:
                    limit = route.max_body_size
                    request.body = await source.read_body(
                        self.max_body_size if limit is None else limit, self._charger(source)
                    )
            except P2PError as exc:
                return _failure_response(exc)
        timeout = asyncio.timeout(self.handler_timeout)
        if source is not None and route.stream:
            source.paused_deadline = timeout
        try:
            async with timeout:
                if route.middleware:
                    chain: Next = _handler_step(route.handler)
                    for mw in reversed(route.middleware):
                        chain = _wrap(mw, chain)
                    return await chain(request)
                result = route.handler(request)
                if inspect.isawaitable(result):
                    result = await result
                return _coerce(result)
        except Exception as exc:
            if source is not None and exc is source.failure:
                return _failure_response(exc)
            if exc is request.body_error:  # the client's body does not decode
                return Response.error(400, f"bad request body: {exc}")
            if isinstance(exc, TimeoutError) and timeout.expired():
                log.warning(
                    "handler of %s %s timed out after %s s",
                    request.method,
                    route.pattern,
                    self.handler_timeout,
                )
                return Response.error(503, "the handler timed out")
            log.exception("handler of %s %s failed", request.method, route.pattern)
            return Response.error(500, _INTERNAL_ERROR)
        finally:
            if source is not None:
                source.paused_deadline = None  # the body may be read on after the handler

    async def handle_stream(self, stream: MuxedStream) -> None:
        """Serve one request on a negotiated ``/switchy/router/1.0.0`` stream."""
        if self._in_flight >= self.max_concurrent:
            if self._metrics is not None:
                self._metrics.count_refused(503)
            await _send(stream, Response.error(503, "too many requests in progress"))
            return
        self._in_flight += 1
        try:
            await self._serve(stream)
        finally:
            self._in_flight -= 1

    async def _serve(self, stream: MuxedStream) -> None:
        source = MessageStream(
            stream, MessageReader("request"), self.read_timeout, min_rate=self.min_request_rate
        )
        try:
            await self._serve_message(stream, source)
        finally:
            source.stop_timer()
            self.buffered -= source.charged
            scope = _stream_scope(source)
            if scope is not None:
                scope.release_memory(source.charged)

    async def _serve_message(self, stream: MuxedStream, source: MessageStream) -> None:
        try:
            head = await source.read_head()
        except ConnectionClosed:
            return  # the client went away (or sent nothing)
        except P2PError as exc:
            await _send(stream, _failure_response(exc, in_head=True))
            return
        assert isinstance(head, RequestHead)
        conn = stream.muxed_conn
        request = Request(
            head.method,
            head.path,
            query=head.query,
            headers=head.headers,
            remote_peer=stream.remote_peer,
            relayed=conn.is_limited,
        )
        request._source = source
        try:
            response = await self.dispatch(request)
        except Exception:  # a middleware raised
            log.exception("middleware failed on %s %s", head.method, head.path[:200])
            response = Response.error(500, _INTERNAL_ERROR)
        if isinstance(source.failure, ConnectionClosed):
            await stream.reset()
            return
        await _send(stream, response)


def _stream_scope(source: MessageStream) -> StreamScope | None:
    """The resource manager's scope of the request's stream (bodies read into memory are
    charged to it), ``None`` when the stream has none."""
    stream = source.stream
    return stream.resource_scope if isinstance(stream, MuxedStream) else None


def _handler_step(handler: Handler) -> Next:
    """``handler`` as the innermost step of a middleware chain (result coerced to a Response)."""

    async def call(request: Request) -> Response:
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        return _coerce(result)

    return call


def _wrap(mw: Middleware, nxt: Next) -> Next:
    async def call(request: Request) -> Response:
        return await mw(request, nxt)

    return call


def _collect(
    node: _Node, segs: list[str], i: int, values: list[str], found: list[tuple[_Node, list[str]]]
) -> None:
    if i == len(segs):
        if node.routes:
            found.append((node, list(values)))
        return
    seg = segs[i]
    child = node.static.get(seg)
    if child is not None:
        _collect(child, segs, i + 1, values, found)
    if node.param is not None and seg:
        values.append(seg)
        _collect(node.param, segs, i + 1, values, found)
        values.pop()


def _failure_response(exc: BaseException, *, in_head: bool = False) -> Response:
    """The status for an error while reading the client's request."""
    if isinstance(exc, P2PTimeout):
        return Response.error(408, f"request not received in time: {exc}")
    if isinstance(exc, MessageTooLarge) and not in_head:
        return Response.error(413, str(exc))
    if isinstance(exc, ResourceLimitExceeded) and not isinstance(exc, MessageTooLarge):
        return Response.error(503, f"server busy: {exc}")
    if isinstance(exc, ProtocolError):
        return Response.error(400, f"malformed request: {exc}")
    return Response.error(400, f"bad request: {exc}")


async def _send(stream: MuxedStream, response: Response) -> None:
    original = body = response.body
    try:
        if isinstance(body, bytes | bytearray):
            length: int | None = len(body)
        else:
            length = response.length
            if length == 0:
                body = b""
            elif length is not None:
                body = _exactly(body, length)
        head = encode_response_head(response.status, response.headers, length)
    except (P2PError, TypeError, AttributeError) as exc:
        log.error("cannot encode a response (status %r): %s", response.status, exc)
        body = _INTERNAL_ERROR.encode()
        head = encode_response_head(500, {"content-type": CONTENT_TEXT}, len(body))
    try:
        await write_message(stream, head, body, last=True)
    except P2PError as exc:  # the client went away
        log.debug("response to %s not delivered: %s", stream.remote_peer, exc)
        await stream.reset()
    except Exception:
        log.exception("streaming a response body to %s failed", stream.remote_peer)
        await stream.reset()
    finally:
        for b in (body, original):
            aclose = getattr(b, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


async def _exactly(body: AsyncIterable[bytes], length: int) -> AsyncIterator[bytes]:
    """Pass ``body`` on, raising if it is not exactly the ``length`` it declared."""
    sent = 0
    async for chunk in body:
        sent += len(chunk)
        if sent > length:
            raise ValueError(f"streamed body longer than its declared length {length}")
        yield chunk
    if sent != length:
        raise ValueError(f"streamed body of {sent} bytes, {length} declared")


# --- built-in middleware ------------------------------------------------------------------


def allow_peers(peers: Iterable[PeerId]) -> Middleware:
    """Middleware answering 403 to every peer not in ``peers``."""
    allowed = frozenset(peers)

    async def only_allowed(request: Request, call_next: Next) -> Response:
        if request.remote_peer not in allowed:
            return Response.error(403, "peer not allowed")
        return await call_next(request)

    return only_allowed


class RateLimit:
    """Middleware: a token bucket per peer (``rate`` requests/s, bursts of ``burst``) → 429.

    Time is the event loop's clock (virtual under the simulator).  At most ``max_peers``
    buckets are kept; the oldest is dropped beyond that.
    """

    def __init__(self, rate: float, burst: int, *, max_peers: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise InvalidConfiguration("RateLimit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: dict[PeerId | None, tuple[float, float]] = {}

    async def __call__(self, request: Request, call_next: Next) -> Response:
        now = asyncio.get_running_loop().time()
        key = request.remote_peer
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if len(self._buckets) >= self.max_peers:
            self._buckets.pop(next(iter(self._buckets)))
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry = max(1, int((1.0 - tokens) / self.rate + 0.999))
            return Response.error(429, "rate limit exceeded", headers={"retry-after": str(retry)})
        self._buckets[key] = (tokens - 1.0, now)
        return await call_next(request)
