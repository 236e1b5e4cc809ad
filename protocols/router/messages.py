"""Request and Response of the router, shared by the server and the client side."""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import attrs
import msgpack

from switchy.protocols.router.core import DEFAULT_MAX_BODY_SIZE, reason_phrase
from switchy.stack.codec import decode_json
from switchy.stack.errors import MessageTooLarge, ProtocolError, SerializationError

if TYPE_CHECKING:
    from switchy.stack.identity import PeerId

__all__ = [
    "CONTENT_JSON",
    "CONTENT_MSGPACK",
    "CONTENT_OCTETS",
    "CONTENT_TEXT",
    "Body",
    "Request",
    "Response",
    "encode_json",
]

CONTENT_JSON = "application/json"
CONTENT_MSGPACK = "application/msgpack"
CONTENT_TEXT = "text/plain; charset=utf-8"
CONTENT_OCTETS = "application/octet-stream"

_T = TypeVar("_T")

#: A body: bytes in memory, or an async iterable of chunks (streamed).
Body: TypeAlias = "bytes | AsyncIterable[bytes]"


def encode_json(obj: Any) -> bytes:
    """``obj`` as compact JSON (UTF-8); :class:`SerializationError` if it has no JSON form."""
    try:
        return _json.dumps(obj, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"cannot encode as JSON: {exc}") from None


def _decode_msgpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise SerializationError(f"body is not msgpack: {exc}") from None


async def _collect(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    buf = bytearray()
    async for chunk in chunks:
        if len(buf) + len(chunk) > limit:
            raise MessageTooLarge(f"body of more than {limit} bytes")
        buf += chunk
    return bytes(buf)


class _BodyMixin:
    """Body access shared by Request and Response."""

    body: Body
    headers: dict[str, str]

    @property
    def content_type(self) -> str:
        """The ``content-type`` header (``""`` when absent)."""
        return self.headers.get("content-type", "")

    @property
    def is_streamed(self) -> bool:
        """Whether the body is a stream not yet read into memory."""
        return not isinstance(self.body, bytes)

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield the body in chunks (once; a bytes body is one chunk)."""
        body = self.body
        if isinstance(body, bytes):
            if body:
                yield body
            return
        async for chunk in body:
            if chunk:
                yield chunk

    async def read(self, limit: int = DEFAULT_MAX_BODY_SIZE) -> bytes:
        """The whole body, reading a stream into memory (at most ``limit`` bytes)."""
        if isinstance(self.body, bytes):
            return self.body
        self.body = await _collect(self.iter_body(), limit)
        return self.body

    def _bytes(self) -> bytes:
        if not isinstance(self.body, bytes):
            raise ProtocolError("the body is streamed: call `await read()` first")
        return self.body

    def text(self) -> str:
        """The body decoded as UTF-8."""
        try:
            return self._bytes().decode()
        except UnicodeDecodeError as exc:
            raise SerializationError(f"body is not UTF-8 text: {exc}") from None

    def json(self) -> Any:
        """The body decoded as JSON."""
        return decode_json(self._bytes(), "body")

    def msgpack(self) -> Any:
        """The body decoded as msgpack."""
        return _decode_msgpack(self._bytes())


@attrs.define(eq=False)
class Request(_BodyMixin):
    """A request as a handler sees it (and as a client describes it).

    ``body`` is the whole body for routes that buffer it (the default), or an async
    iterable of chunks for routes registered with ``stream=True``
    (use :meth:`iter_body`).
    """

    method: str
    path: str
    #: Path parameters of the matched route (``/tracks/{id}`` → ``{"id": ...}``).
    params: dict[str, str] = attrs.field(factory=dict)
    query: dict[str, str] = attrs.field(factory=dict)
    #: Header fields, names in lower case.
    headers: dict[str, str] = attrs.field(factory=dict)
    body: Body = b""
    #: The authenticated peer that sent the request (``None`` when not over a stream).
    remote_peer: PeerId | None = None
    #: Whether the request came over a relayed (limited) connection.
    relayed: bool = False
    #: The route pattern that matched (``/tracks/{id}``), set by the router.
    route: str | None = None
    #: Free-form per-request storage for middleware and handlers.
    state: dict[str, Any] = attrs.field(factory=dict)
    #: Where a streamed body comes from (set by the router's stream handler).
    _source: Any = attrs.field(default=None, alias="_source", repr=False)
    #: The error of the last failed :meth:`text`/:meth:`json`/:meth:`msgpack`: the client
    #: sent a body that does not decode, which the router answers with 400, not 500.
    body_error: SerializationError | None = attrs.field(default=None, init=False, repr=False)

    def text(self) -> str:
        """The body decoded as UTF-8 (a handler that lets the error escape answers 400)."""
        return self._decoded(super().text)

    def json(self) -> Any:
        """The body decoded as JSON (a handler that lets the error escape answers 400)."""
        return self._decoded(super().json)

    def msgpack(self) -> Any:
        """The body decoded as msgpack (a handler that lets the error escape answers 400)."""
        return self._decoded(super().msgpack)

    def _decoded(self, decode: Callable[[], _T]) -> _T:
        try:
            return decode()
        except SerializationError as exc:
            self.body_error = exc
            raise


@attrs.define(eq=False)
class Response(_BodyMixin):
    """A response: status, headers (lower-case names) and a body (bytes or a chunk stream).

    Handlers build one with the helpers (:meth:`ok`, :meth:`from_json`, :meth:`not_found`,
    :meth:`error`, ...) or return plain values (see ``Router``).  On the client side a
    streamed body must be consumed with :meth:`iter_body` or released with :meth:`aclose`.
    """

    status: int = 200
    headers: dict[str, str] = attrs.field(factory=dict)
    body: Body = b""
    #: Size of a streamed body when known in advance (sent as the head's ``length`` and
    #: checked by the receiver); ``None``: unknown.  Ignored for a bytes body.
    length: int | None = None
    #: Closes the client-side stream behind a streamed body (set by the client).
    _closer: Any = attrs.field(default=None, alias="_closer", repr=False)

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def ok(
        cls,
        body: bytes | str | AsyncIterable[bytes] = b"",
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> Response:
        """A success response; ``str`` bodies are sent as UTF-8 text."""
        h = dict(headers or {})
        if isinstance(body, str):
            body = body.encode()
            content_type = content_type or CONTENT_TEXT
        if content_type:
            h["content-type"] = content_type
        return cls(status, h, body)

    @classmethod
    def created(cls, body: bytes | str | AsyncIterable[bytes] = b"", **kw: Any) -> Response:
        """A ``201 Created`` response."""
        return cls.ok(body, status=201, **kw)

    @classmethod
    def no_content(cls) -> Response:
        """A ``204 No Content`` response."""
        return cls(204)

    @classmethod
    def from_json(cls, obj: Any, *, status: int = 200) -> Response:
        """A response whose body is ``obj`` as JSON."""
        return cls(status, {"content-type": CONTENT_JSON}, encode_json(obj))

    @classmethod
    def from_msgpack(cls, obj: Any, *, status: int = 200) -> Response:
        """A response whose body is ``obj`` as msgpack."""
        data: bytes = msgpack.packb(obj, use_bin_type=True)
        return cls(status, {"content-type": CONTENT_MSGPACK}, data)

    @classmethod
    def error(
        cls, status: int, message: str = "", *, headers: dict[str, str] | None = None
    ) -> Response:
        """An error response with a short text body (default: the reason phrase)."""
        h = {"content-type": CONTENT_TEXT, **(headers or {})}
        return cls(status, h, (message or reason_phrase(status) or str(status)).encode())

    @classmethod
    def not_found(cls, message: str = "not found") -> Response:
        """A ``404 Not Found`` response."""
        return cls.error(404, message)

    # --- inspection -----------------------------------------------------------------

    @property
    def reason(self) -> str:
        """The reason phrase of the status (``""`` if unknown)."""
        return reason_phrase(self.status)

    @property
    def status_line(self) -> str:
        """``"404 Not Found"``."""
        return f"{self.status} {self.reason}".rstrip()

    @property
    def is_success(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    async def aclose(self) -> None:
        """Release a client-side streamed body (resets the stream if not fully read)."""
        closer = self._closer
        self._closer = None
        if closer is not None:
            await closer()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
