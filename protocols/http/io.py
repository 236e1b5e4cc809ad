"""The asyncio side shared by the HTTP adapters: feeding a core from a stream, piping bytes."""

from __future__ import annotations

import asyncio
import contextlib

import h11

from switchy.protocols.http.core import Event, HttpError, HttpLimits, ServerCore, _Core
from switchy.stack.errors import ConnectionClosed, P2PError, P2PTimeout
from switchy.stack.identity import PeerId
from switchy.stack.stream import Stream
from switchy.stack.tasks import cancel_and_wait

__all__ = [
    "PIPE_CHUNK",
    "continue_if_asked",
    "is_closed_error",
    "next_event",
    "peer_of",
    "pipe",
    "read_head",
    "write_timed",
]

#: Bytes copied per read by :func:`pipe`.
PIPE_CHUNK = 64 * 1024


async def next_event(core: _Core, stream: Stream, timeout: float | None) -> Event:
    """The next event of ``core``, reading from ``stream`` as needed (pull: backpressure).

    Each read waits at most ``timeout`` seconds (:class:`P2PTimeout`; ``None``: the
    caller bounds the whole wait).  Raises :class:`HttpError` for bad input and what the
    stream's ``read`` raises.
    """
    while True:
        event = core.next_event()
        if event is not h11.NEED_DATA:
            return event
        if timeout is None:
            core.receive(await stream.read(core.limits.read_size))
            continue
        try:
            async with asyncio.timeout(timeout):
                data = await stream.read(core.limits.read_size)
        except TimeoutError:
            raise P2PTimeout(f"the peer sent nothing for {timeout}s") from None
        core.receive(data)


async def read_head(core: _Core, stream: Stream, limits: HttpLimits) -> Event:
    """The first event of a message (its head), within ``limits.head_timeout`` in all."""
    try:
        async with asyncio.timeout(limits.head_timeout):  # one timer for all the reads
            return await next_event(core, stream, None)
    except TimeoutError:
        raise HttpError(f"no complete request head within {limits.head_timeout}s", 408) from None


async def write_timed(stream: Stream, data: bytes, timeout: float, *, last: bool = False) -> None:
    """Write ``data``; a peer that does not read for ``timeout`` seconds gets a reset.

    ``last``: then close the write side (with the data: one frame on yamux).  Raises
    :class:`P2PTimeout` then (the stream is reset), or what ``write`` raises.
    """
    if not data and not last:
        return
    if not last and stream.try_write_nowait(data):  # room for it now: no timer needed
        return
    try:
        async with asyncio.timeout(timeout):
            await (stream.write_last(data) if last else stream.write(data))
    except TimeoutError:
        await stream.reset()
        raise P2PTimeout(f"the peer read nothing for {timeout}s") from None


async def _copy(src: Stream, dst: Stream, first: bytes) -> None:
    if first:
        await dst.write(first)
    while chunk := await src.read(PIPE_CHUNK):
        await dst.write(chunk)
    await dst.close_write()


async def pipe(a: Stream, b: Stream, *, a_to_b: bytes = b"", b_to_a: bytes = b"") -> None:
    """Copy bytes both ways between ``a`` and ``b`` until both ends closed their side.

    ``a_to_b``/``b_to_a`` are bytes already read from one side (sent first).  End of
    stream is passed on as a half-close; an error on either side (reset, closed
    connection) resets both.  Closes both at the end.  Memory: one chunk per direction.
    """
    tasks = [
        asyncio.ensure_future(_copy(a, b, a_to_b)),
        asyncio.ensure_future(_copy(b, a, b_to_a)),
    ]
    failed = False
    try:
        for fut in asyncio.as_completed(tasks):
            try:
                await fut
            except (P2PError, OSError):
                failed = True
                break
    finally:
        await cancel_and_wait(*tasks)
        for s in (a, b):
            with contextlib.suppress(P2PError, OSError):
                await (s.reset() if failed else s.close())


async def continue_if_asked(stream: Stream, core: ServerCore) -> None:
    """Answer ``100 Continue`` when the client waits for it before sending its body."""
    if core.conn.they_are_waiting_for_100_continue:
        data = core.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        await write_timed(stream, data, core.limits.write_timeout)


def peer_of(stream: Stream) -> PeerId | None:
    """The authenticated remote peer of ``stream`` (``None`` for a plain connection)."""
    peer = getattr(stream, "remote_peer", None)
    return peer if isinstance(peer, PeerId) else None


def is_closed_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the other side went away (reset, closed, timed out)."""
    return isinstance(exc, ConnectionClosed | P2PTimeout | OSError)
