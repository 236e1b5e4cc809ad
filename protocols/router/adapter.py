"""The asyncio side of the router core: read one message from a stream, write one to it.

Reading is pull-based: bytes are read from the stream only when the caller asks for the
next event, so a body that is not consumed stays in the muxer's window and the sender is
held back (backpressure); memory is bounded by one read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Final

from switchy.protocols.router.core import (
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
from switchy.stack.errors import (
    ConnectionClosed,
    MessageTooLarge,
    P2PError,
    P2PTimeout,
    ProtocolError,
)
from switchy.stack.negotiation import DialerNegotiation, ProtocolAgreed
from switchy.stack.stream import Stream

__all__ = ["MIN_RATE_GRACE", "READ_SIZE", "SINGLE_WRITE_LIMIT", "MessageStream", "write_message"]

#: Most bytes asked from the stream per read.
READ_SIZE: Final = 1024 * 1024
#: A bytes body up to this size goes out with its head in one write.
SINGLE_WRITE_LIMIT: Final = 1024 * 1024
#: Seconds of waiting a peer is credited before :attr:`MessageStream.min_rate` applies.
MIN_RATE_GRACE: Final = 10.0


class MessageStream:
    """Reads one message from ``stream`` through a :class:`MessageReader`.

    ``read_timeout`` (seconds, ``None`` for none) bounds each wait for the peer's next
    bytes and raises :class:`P2PTimeout`.  It is kept by one loop timer per message
    (re-armed only when data came in meanwhile), not by a timer per read: most reads
    find their bytes already buffered.  The first error raised is kept in
    :attr:`failure` so callers can tell "the peer's message was bad" from other errors.
    """

    __slots__ = (
        "_events",
        "_expired",
        "_last_data",
        "_reader_task",
        "_received",
        "_timer",
        "_too_slow",
        "_wait_began",
        "_waited",
        "_waiting",
        "charged",
        "failure",
        "min_rate",
        "negotiation",
        "paused_deadline",
        "read_timeout",
        "reader",
        "stream",
    )

    def __init__(
        self,
        stream: Stream,
        reader: MessageReader,
        read_timeout: float | None = None,
        negotiation: DialerNegotiation | None = None,
        *,
        min_rate: float | None = None,
    ) -> None:
        self.stream = stream
        #: An optimistic multistream-select proposal whose answer precedes the message
        #: (checked here, by the first reads); ``None`` once agreed.
        self.negotiation = negotiation
        self.reader = reader
        self.read_timeout = read_timeout
        #: Bytes per second of waiting the peer must keep up, after MIN_RATE_GRACE seconds
        #: of credit (``None``: no minimum; needs ``read_timeout``).  A peer trickling a
        #: byte now and then (slowloris) would otherwise hold its slot for good.
        self.min_rate = min_rate
        self._received = 0
        self._waited = 0.0
        self._wait_began = 0.0
        self._too_slow = False
        #: The error this message stream raised, if any.
        self.failure: BaseException | None = None
        self._events: deque[Event] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._reader_task: asyncio.Task[Any] | None = None
        self._waiting = False
        self._expired = False
        self._last_data = 0.0
        #: A deadline pushed back by the time spent waiting for the peer's bytes (the
        #: router's handler timeout: a handler is not charged for a slow client).
        self.paused_deadline: asyncio.Timeout | None = None
        #: Body bytes accounted to a memory budget (kept by the router).
        self.charged = 0

    async def _next(self) -> Event:
        events = self._events
        while not events:
            if self.reader.done:
                raise ProtocolError("read past the end of the message")
            try:
                if self.read_timeout is None:
                    data = await self.stream.read(READ_SIZE)
                else:
                    data = await self._read_watched(self.read_timeout)
            except P2PError as exc:
                self.stop_timer()
                raise self._fail(exc) from None
            try:
                if self.negotiation is not None:
                    data = self._negotiate(data)
                    if not data:
                        continue
                if not data:
                    self.reader.receive_eof()
                events.extend(self.reader.receive_data(data))
            except P2PError as exc:
                self.stop_timer()
                raise self._fail(exc) from None
            if self.reader.done:
                self.stop_timer()
        return events.popleft()

    async def _read_watched(self, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if self._timer is None:
            self._last_data = loop.time()
            self._timer = loop.call_at(self._last_data + timeout, self._check)
        self._reader_task = task
        self._waiting = True
        deadline = self.paused_deadline
        paused = deadline.when() if deadline is not None else None
        if paused is not None:
            assert deadline is not None
            deadline.reschedule(None)  # the peer's time, not the handler's
        began = self._wait_began = loop.time()
        try:
            data = await self.stream.read(READ_SIZE)
        except asyncio.CancelledError:
            if self._expired and task is not None and task.uncancel() == 0:
                self._expired = False
                if self._too_slow:
                    raise P2PTimeout(
                        f"the peer sent {self._received} bytes in {self._waited:.1f} s, "
                        f"below the minimum of {self.min_rate:.0f} bytes/s"
                    ) from None
                raise P2PTimeout(f"no data from the peer within {timeout} s") from None
            raise
        finally:
            self._waiting = False
            self._waited += loop.time() - began
            if paused is not None and deadline is self.paused_deadline:
                assert deadline is not None
                deadline.reschedule(paused + (loop.time() - began))
        self._last_data = loop.time()
        self._received += len(data)
        return data

    def _below_min_rate(self, now: float) -> bool:
        rate = self.min_rate
        if rate is None:
            return False
        waited = self._waited + (now - self._wait_began if self._waiting else 0.0)
        return self._received + rate * MIN_RATE_GRACE < rate * waited

    def _check(self) -> None:
        """Timer: fire if a read has waited ``read_timeout`` with no data, else re-arm."""
        assert self.read_timeout is not None
        loop = asyncio.get_running_loop()
        deadline = self._last_data + self.read_timeout
        now = loop.time()
        if (
            self._waiting
            and self._reader_task is not None
            and (now >= deadline or self._below_min_rate(now))
        ):
            self._too_slow = now < deadline
            self._timer = None
            self._expired = True
            self._reader_task.cancel()
            return
        self._timer = loop.call_at(max(deadline, loop.time() + self.read_timeout / 8), self._check)

    def stop_timer(self) -> None:
        """Stop watching for the read timeout (done by itself at the end of the message)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _negotiate(self, data: bytes) -> bytes:
        """Feed the listener's answer; return what follows it (``b""``: keep reading)."""
        negotiation = self.negotiation
        assert negotiation is not None
        if not data:
            raise ConnectionClosed("the stream ended before the protocol was agreed")
        for event in negotiation.receive_data(data):  # NegotiationFailed on "na"
            if isinstance(event, ProtocolAgreed):
                self.negotiation = None
                return event.leftover
        return b""

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

    async def read_body(
        self, limit: int | None, charge: Callable[[int], None] | None = None
    ) -> bytes:
        """The whole body in memory; the limit is checked before bytes are buffered.

        ``charge(n)`` is called before each chunk is kept (it may raise to refuse it).
        """
        self.set_max_body_size(limit)
        buf = bytearray()
        while True:
            event = await self._next()
            if isinstance(event, EndOfMessage):
                return bytes(buf)
            assert isinstance(event, BodyData)
            if charge is not None:
                try:
                    charge(len(event.data))
                except P2PError as exc:
                    raise self._fail(exc) from None
            events = self._events
            if not buf and events and isinstance(events[0], EndOfMessage):
                events.popleft()  # a body that came in one piece: no copy
                return event.data
            buf += event.data


async def write_message(
    stream: Stream,
    head: bytes,
    body: bytes | AsyncIterable[bytes],
    prefix: bytes = b"",
    *,
    last: bool = False,
) -> None:
    """Write an encoded ``head`` and its ``body``.

    ``head`` must declare ``len(body)`` for a bytes body and an unknown length (nil) for a
    streamed one.  A small bytes body shares one write with its head; larger ones and
    streams go out in frames of at most :data:`SEND_FRAME_SIZE`, each write waiting for
    the peer's window (backpressure).  ``prefix`` (e.g. a protocol proposal) goes out in
    the same write as the head.  With ``last``, the stream's write side is closed with
    the final write (:meth:`~switchy.stack.stream.Stream.write_last`: one frame burst on yamux).
    """
    final = stream.write_last if last else stream.write
    if prefix:
        head = prefix + head
    if isinstance(body, bytes | bytearray | memoryview):
        n = len(body)
        if n == 0:
            await final(head)
        elif n <= SINGLE_WRITE_LIMIT:
            await final(head + encode_body(bytes(body)))
        else:
            await stream.write(head)
            view = memoryview(body)
            for i in range(0, n, SEND_FRAME_SIZE):
                await stream.write(encode_data_frame(view[i : i + SEND_FRAME_SIZE]))
            await final(END_FRAME)
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
    await final(END_FRAME)
