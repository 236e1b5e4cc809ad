"""Client side of the router: one request on a new stream, one response back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from switchy.protocols.router.adapter import SINGLE_WRITE_LIMIT, MessageStream, write_message
from switchy.protocols.router.core import (
    DEFAULT_MAX_BODY_SIZE,
    ROUTER_PROTOCOL,
    MessageReader,
    ResponseHead,
    encode_request_head,
)
from switchy.protocols.router.messages import CONTENT_JSON, Response, encode_json
from switchy.stack.errors import ConnectionClosed, InvalidConfiguration, P2PError, P2PTimeout
from switchy.stack.negotiation import DialerNegotiation, explain_failure
from switchy.stack.tasks import cancel_and_wait

if TYPE_CHECKING:
    from switchy.stack.node import Node, Target
    from switchy.stack.stream import MuxedStream

__all__ = ["request"]

#: ``json=`` not given (``None`` is JSON's null, a valid body).
_NO_JSON: Any = object()


def _split_query(path: str, query: Mapping[str, str] | None) -> tuple[str, dict[str, str]]:
    q: dict[str, str] = {}
    if "?" in path:
        path, qs = path.split("?", 1)
        q.update(parse_qsl(qs, keep_blank_values=True))
    if query:
        q.update(query)
    return path, q


async def request(
    node: Node,
    target: Target,
    method: str,
    path: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | AsyncIterable[bytes] | None = None,
    json: Any = _NO_JSON,
    query: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stream: bool = False,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> Response:
    """Send ``method path`` to ``target`` (peer id or multiaddr) and return its response.

    ``path`` may carry a ``?query`` (decoded like a URL query); ``query`` adds parameters.
    ``body`` is bytes, text (sent as UTF-8) or an async iterable of chunks (streamed with
    backpressure).  ``json`` sends an object as a JSON body (``content-type:
    application/json``) instead of ``body``.  ``timeout`` (default
    ``node.config.request_timeout``) bounds the whole exchange, or only the wait for the
    response head when ``stream`` is true.

    With ``stream=False`` the response body is read into memory (at most
    ``max_body_size`` bytes, else :class:`MessageTooLarge`).  With ``stream=True`` the
    returned response's body is read on demand with ``response.iter_body()``; release it
    with ``await response.aclose()`` (or ``async with response``).

    A non-2xx status is returned, not raised.  Raises :class:`NegotiationFailed` when
    the peer does not serve the router, :class:`P2PTimeout` on timeout, and
    :class:`ProtocolError`/:class:`ConnectionClosed` for a malformed or truncated response;
    :class:`InvalidConfiguration` when given both ``body`` and ``json``, and
    :class:`SerializationError` when ``json`` has no JSON form.
    """
    path, q = _split_query(path, query)
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if json is not _NO_JSON:
        if body is not None:
            raise InvalidConfiguration("request takes a body or json=, not both")
        body = encode_json(json)
        hdrs.setdefault("content-type", CONTENT_JSON)
    if isinstance(body, str):
        body = body.encode()
        hdrs.setdefault("content-type", "text/plain; charset=utf-8")
    if body is None:
        body = b""
    length = len(body) if isinstance(body, bytes | bytearray) else None
    head = encode_request_head(method, path, q, hdrs, length)
    deadline = node.config.request_timeout if timeout is None else timeout
    s: MuxedStream | None = None
    source: MessageStream | None = None
    upload: asyncio.Task[None] | None = None
    done = False
    try:
        async with asyncio.timeout(deadline):
            s = await (await node.connect(target)).open_stream()
            node.charge_stream(s, ROUTER_PROTOCOL)
            # The optimistic proposal, the head (and a small body) leave in one write; the
            # answer is checked by the first reads (see MessageStream).
            negotiation = DialerNegotiation([ROUTER_PROTOCOL], lazy=True)
            proposal = negotiation.data_to_send()
            s.protocol = ROUTER_PROTOCOL
            source = MessageStream(s, MessageReader("response"), negotiation=negotiation)
            if isinstance(body, bytes | bytearray) and len(body) <= SINGLE_WRITE_LIMIT:
                await write_message(s, head, body, proposal, last=True)
            else:
                upload = asyncio.ensure_future(_upload(s, proposal + head, body))
            rhead = await source.read_head()
            assert isinstance(rhead, ResponseHead)
            if not stream:
                data = await source.read_body(max_body_size)
                done = True
                return Response(rhead.status, rhead.headers, data)
        done = True
        return _streamed_response(rhead, source, s, upload)
    except TimeoutError:
        raise P2PTimeout(f"{method} {path} got no response within {deadline} s") from None
    except P2PError as exc:
        if (
            s is not None
            and isinstance(exc, ConnectionClosed)
            and source is not None
            and source.negotiation is not None
        ):
            await _probe(s, exc)
        if upload is not None and upload.done() and not upload.cancelled():
            failed = upload.exception()
            if failed is not None and failed is not exc:
                raise failed from exc  # the request body failed: say so, not "stream reset"
        raise
    finally:
        if s is not None:
            if not done:
                await _abort(s, upload)
            elif not stream:
                await _finish(s, upload)


async def _probe(s: MuxedStream, exc: ConnectionClosed) -> None:
    """The stream ended before the optimistic proposal was answered: was it refused?"""
    failure = await explain_failure(s, ROUTER_PROTOCOL, exc)
    if failure is not exc:
        raise failure from exc


async def _upload(s: MuxedStream, head: bytes, body: bytes | AsyncIterable[bytes]) -> None:
    """Send the request (in its own task, so the response can be read meanwhile)."""
    try:
        await write_message(s, head, body, last=True)
    except Exception:
        await s.reset()  # the server must not take a truncated body for a whole one
        raise


async def _abort(s: MuxedStream, upload: asyncio.Task[None] | None) -> None:
    """Give up the exchange: stop sending, reset the stream."""
    if upload is not None:
        await cancel_and_wait(upload)  # (also retrieves its exception, if it failed)
    await s.reset()


async def _finish(s: MuxedStream, upload: asyncio.Task[None] | None) -> None:
    """The response is complete: stop a body still being sent, close the stream."""
    if upload is not None:
        await cancel_and_wait(upload)
    await s.close()


def _streamed_response(
    head: ResponseHead, source: MessageStream, s: MuxedStream, upload: asyncio.Task[None] | None
) -> Response:
    closed = False

    async def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        if source.reader.done:
            await _finish(s, upload)
        else:
            await _abort(s, upload)

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in source.iter_body():
            yield chunk
        await close()

    return Response(head.status, head.headers, chunks(), head.length, _closer=close)
