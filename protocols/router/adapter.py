"""The asyncio side of the router core: read one message from a stream, write one to it.

Reading is pull-based: bytes are read from the stream only when the caller asks for the
next event, so a body that is not consumed stays in the muxer's window and the sender is
held back (backpressure); memory is bounded by one read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Final

from protocols.router.core import (
    END_FRAME,
    SEND_FRAME_SIZE,
    BodyData,
    EndOfMessage,
    Event,
    MessageReader,
    RequestHead,
    ResponseHead,
    encode_body,
    encode_data_frame,
)
from stack.errors import MessageTooLarge, P2PError, P2PTimeout, ProtocolError
from stack.stream import Stream

__all__ = ["READ_SIZE", "SINGLE_WRITE_LIMIT", "MessageStream", "write_message"]

#: Most bytes asked from the stream per read.
READ_SIZE: Final = 1024 * 1024
#: A bytes body up to this size goes out with its head in one write.
SINGLE_WRITE_LIMIT: Final = 1024 * 1024


class MessageStream:
    """Reads one message from ``stream`` through a :class:`MessageReader`.

    ``read_timeout`` (seconds, ``None`` for none) bounds each wait for the peer's next
    bytes and raises :class:`P2PTimeout`.  The first error raised is kept in
    :attr:`failure` so callers can tell "the peer's message was bad" from other errors.
    """

    __slots__ = ("_events", "failure", "read_timeout", "reader", "stream")

    def __init__(
        self, stream: Stream, reader: MessageReader, read_timeout: float | None = None
    ) -> None:
        self.stream = stream
        self.reader = reader
        self.read_timeout = read_timeout
        #: The error this message stream raised, if any.
        self.failure: BaseException | None = None
        self._events: deque[Event] = deque()

    async def _next(self) -> Event:
        events = self._events
        while not events:
            if self.reader.done:
                raise ProtocolError("read past the end of the message")
            try:
                if self.read_timeout is None:
                    data = await self.stream.read(READ_SIZE)
                else:
                    async with asyncio.timeout(self.read_timeout):
                        data = await self.stream.read(READ_SIZE)
            except TimeoutError:
                raise self._fail(
                    P2PTimeout(f"no data from the peer within {self.read_timeout} s")
                ) from None
            except P2PError as exc:
                raise self._fail(exc) from None
            try:
                if not data:
                    self.reader.receive_eof()
                events.extend(self.reader.receive_data(data))
            except P2PError as exc:
                raise self._fail(exc) from None
        return events.popleft()

    def _fail(self, exc: BaseException) -> BaseException:
        if self.failure is None:
            self.failure = exc
        return exc

    async def read_head(self) -> RequestHead | ResponseHead:
        """Wait for the head."""
        event = await self._next()
        assert isinstance(event, RequestHead | ResponseHead)
        return event

    def set_max_body_size(self, limit: int | None) -> None:
        """Set the body limit (raises :class:`MessageTooLarge` if the head declared more)."""
        try:
            self.reader.set_max_body_size(limit)
        except MessageTooLarge as exc:
            raise self._fail(exc) from None

    async def iter_body(self) -> AsyncIterator[bytes]:
        """Yield body chunks until the end of the message."""
        while True:
            event = await self._next()
            if isinstance(event, EndOfMessage):
                return
            assert isinstance(event, BodyData)
            yield event.data

    async def read_body(self, limit: int | None) -> bytes:
        """The whole body in memory; the limit is checked before bytes are buffered."""
        self.set_max_body_size(limit)
        event = await self._next()
        if isinstance(event, EndOfMessage):
            return b""
        assert isinstance(event, BodyData)
        first = event.data
        event = await self._next()
        if isinstance(event, EndOfMessage):
            return first
        buf = bytearray(first)
        while not isinstance(event, EndOfMessage):
            assert isinstance(event, BodyData)
            buf += event.data
            event = await self._next()
        return bytes(buf)


async def write_message(stream: Stream, head: bytes, body: bytes | AsyncIterable[bytes]) -> None:
    """Write an encoded ``head`` and its ``body``.

    ``head`` must declare ``len(body)`` for a bytes body and an unknown length (nil) for a
    streamed one.  A small bytes body shares one write with its head; larger ones and
    streams go out in frames of at most :data:`SEND_FRAME_SIZE`, each write waiting for
    the peer's window (backpressure).
    """
    if isinstance(body, bytes | bytearray | memoryview):
        n = len(body)
        if n == 0:
            await stream.write(head)
        elif n <= SINGLE_WRITE_LIMIT:
            await stream.write(head + encode_body(bytes(body)))
        else:
            await stream.write(head)
            view = memoryview(body)
            for i in range(0, n, SEND_FRAME_SIZE):
                await stream.write(encode_data_frame(view[i : i + SEND_FRAME_SIZE]))
            await stream.write(END_FRAME)
        return
    await stream.write(head)
    async for chunk in body:
        n = len(chunk)
        if n == 0:
            continue
        if n <= SEND_FRAME_SIZE:
            await stream.write(encode_data_frame(chunk))
            continue
        view = memoryview(chunk)
        for i in range(0, n, SEND_FRAME_SIZE):
            await stream.write(encode_data_frame(view[i : i + SEND_FRAME_SIZE]))
    await stream.write(END_FRAME)
