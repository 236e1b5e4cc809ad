"""multistream-select 1.0: choosing a protocol by id on a connection or stream.

Wire format: each message is an unsigned-varint length followed by UTF-8 text
ending in ``\\n`` (the length counts the newline).  Both sides first send the
header ``/multistream/1.0.0``; the dialer then proposes protocol ids one by one,
the listener echoes an id it accepts or answers ``na``; ``ls`` asks the listener
for its protocols (answered by one message holding length-prefixed lines).

The sans-IO cores :class:`DialerNegotiation` and :class:`ListenerNegotiation`
take bytes and return events; :func:`select_protocol`, :func:`select_protocol_lazy`,
:func:`handle_protocol` and :func:`list_protocols` drive them over a Stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from stack.codec import decode_uvarint, encode_uvarint
from stack.errors import (
    ConnectionClosed,
    MessageTooLarge,
    NegotiationFailed,
    P2PTimeout,
    ProtocolError,
    SerializationError,
)
from stack.stream import Connection, MuxedStream, Stream

if TYPE_CHECKING:
    from stack.identity import PeerId
    from stack.metrics import ConnectionStats
    from stack.mux import MuxedConnection

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_LS_SIZE",
    "MAX_PROPOSALS",
    "MULTISTREAM_PROTOCOL",
    "DialerNegotiation",
    "ListenerNegotiation",
    "ProtocolAgreed",
    "ProtocolRejected",
    "ProtocolsListed",
    "encode_line",
    "handle_protocol",
    "list_protocols",
    "propose_lazily",
    "select_protocol",
    "select_protocol_lazy",
    "validate_protocol_id",
]

MULTISTREAM_PROTOCOL: Final = "/multistream/1.0.0"
#: Longest negotiation message accepted, newline included (protocol ids are shorter).
MAX_LINE_LENGTH: Final = 1024
#: Most proposals a listener answers (``na`` included) before giving up on a peer.
MAX_PROPOSALS: Final = 32
#: Largest ``ls`` answer accepted.
MAX_LS_SIZE: Final = 64 * 1024
_NA: Final = "na"
_LS: Final = "ls"


def validate_protocol_id(protocol: str) -> None:
    """Raise :class:`ProtocolError` unless ``protocol`` can be negotiated."""
    if not protocol or "\n" in protocol:
        raise ProtocolError(f"invalid protocol id {protocol!r}: empty or contains a newline")
    if len(protocol.encode()) + 1 > MAX_LINE_LENGTH:
        raise ProtocolError(
            f"protocol id of {len(protocol.encode())} bytes exceeds {MAX_LINE_LENGTH - 1}"
        )


def encode_line(text: str) -> bytes:
    """One negotiation message: varint length, text, newline."""
    raw = text.encode() + b"\n"
    return encode_uvarint(len(raw)) + raw


_HEADER: Final = encode_line(MULTISTREAM_PROTOCOL)
_NA_LINE: Final = encode_line(_NA)


class _LineReader:
    """Splits bytes into negotiation messages, never reading past the last complete one."""

    def __init__(self, max_length: int = MAX_LINE_LENGTH) -> None:
        self._buf = bytearray()
        self._max = max_length

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_raw(self) -> bytes | None:
        """The next whole message payload (newline included), or None if incomplete."""
        r = decode_uvarint(self._buf)
        if r is None:
            if len(self._buf) >= 9:
                raise SerializationError("negotiation length prefix is malformed")
            return None
        length, pos = r
        if length > self._max:
            raise MessageTooLarge(f"negotiation message of {length} bytes exceeds {self._max}")
        if len(self._buf) - pos < length:
            return None
        payload = bytes(self._buf[pos : pos + length])
        del self._buf[: pos + length]
        if not payload.endswith(b"\n"):
            raise ProtocolError(f"negotiation message {payload[:64]!r} does not end in a newline")
        return payload

    def next_line(self) -> str | None:
        payload = self.next_raw()
        if payload is None:
            return None
        try:
            return payload[:-1].decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"negotiation message {payload[:64]!r} is not UTF-8") from None

    def leftover(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data


@attrs.frozen
class ProtocolAgreed:
    """Both sides agreed on ``protocol``; ``leftover`` is data that followed the agreement."""

    protocol: str
    leftover: bytes = b""


@attrs.frozen
class ProtocolRejected:
    """The listener answered ``na`` to ``protocol``."""

    protocol: str


@attrs.frozen
class ProtocolsListed:
    """The listener's answer to ``ls``."""

    protocols: list[str]


NegotiationEvent = ProtocolAgreed | ProtocolRejected | ProtocolsListed


class DialerNegotiation:
    """Sans-IO dialer: proposes ``protocols`` in order until one is accepted.

    With ``list_only=True`` it asks ``ls`` instead and ends with :class:`ProtocolsListed`.
    """

    def __init__(self, protocols: Sequence[str], *, list_only: bool = False) -> None:
        if not protocols and not list_only:
            raise ProtocolError("no protocols to propose")
        for p in protocols:
            validate_protocol_id(p)
        self._protocols = list(protocols)
        self._index = 0
        self._list_only = list_only
        self._reader = _LineReader(MAX_LS_SIZE if list_only else MAX_LINE_LENGTH)
        self._header_seen = False
        self.done = False
        first = encode_line(_LS) if list_only else encode_line(self._protocols[0])
        self._out = bytearray(_HEADER + first)

    @property
    def proposed(self) -> str | None:
        """The protocol currently awaiting an answer."""
        return None if self._list_only or self.done else self._protocols[self._index]

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[NegotiationEvent]:
        """Feed bytes from the listener; return what they mean."""
        if self.done:
            raise ProtocolError("negotiation already finished")
        self._reader.feed(data)
        events: list[NegotiationEvent] = []
        while not self.done:
            if not self._header_seen:
                line = self._reader.next_line()
                if line is None:
                    break
                if line != MULTISTREAM_PROTOCOL:
                    raise NegotiationFailed(f"peer does not speak multistream-select 1.0: {line!r}")
                self._header_seen = True
                continue
            if self._list_only:
                raw = self._reader.next_raw()
                if raw is None:
                    break
                events.append(ProtocolsListed(_parse_ls(raw)))
                self.done = True
                break
            line = self._reader.next_line()
            if line is None:
                break
            proposed = self._protocols[self._index]
            if line == proposed:
                self.done = True
                events.append(ProtocolAgreed(proposed, self._reader.leftover()))
            elif line == _NA:
                events.append(ProtocolRejected(proposed))
                self._index += 1
                if self._index >= len(self._protocols):
                    self.done = True
                    raise NegotiationFailed(
                        f"no protocol in common: peer refused {', '.join(self._protocols)}"
                    )
                self._out += encode_line(self._protocols[self._index])
            else:
                raise ProtocolError(f"peer answered {line!r} to proposal {proposed!r}")
        return events


def _parse_ls(raw: bytes) -> list[str]:
    """Parse an ``ls`` answer: length-prefixed lines, optionally ending in one newline."""
    out: list[str] = []
    pos = 0
    while pos < len(raw) and raw[pos:] != b"\n":
        r = decode_uvarint(raw, pos)
        if r is None:
            raise SerializationError("ls answer ends inside a length prefix")
        length, pos = r
        if length > MAX_LINE_LENGTH or length > len(raw) - pos:
            raise ProtocolError(f"ls answer has an entry of {length} bytes")
        item = raw[pos : pos + length]
        pos += length
        if not item.endswith(b"\n"):
            raise ProtocolError("ls answer entry does not end in a newline")
        try:
            out.append(item[:-1].decode())
        except UnicodeDecodeError:
            raise ProtocolError("ls answer entry is not UTF-8") from None
    return out


class ListenerNegotiation:
    """Sans-IO listener: answers proposals with ``supported(protocol_id)`` and ``ls``."""

    def __init__(
        self,
        supported: Callable[[str], bool],
        list_protocols: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self._supported = supported
        self._list = list_protocols
        self._reader = _LineReader()
        self._header_seen = False
        self._proposals = 0
        self._out = bytearray()
        self.done = False

    def data_to_send(self) -> bytes:
        """Bytes to write to the dialer now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[NegotiationEvent]:
        """Feed bytes from the dialer; returns :class:`ProtocolAgreed` once one is accepted."""
        if self.done:
            raise ProtocolError("negotiation already finished")
        self._reader.feed(data)
        events: list[NegotiationEvent] = []
        while not self.done:
            line = self._reader.next_line()
            if line is None:
                break
            if not self._header_seen:
                if line != MULTISTREAM_PROTOCOL:
                    raise NegotiationFailed(f"peer does not speak multistream-select 1.0: {line!r}")
                self._header_seen = True
                self._out += _HEADER
                continue
            self._proposals += 1
            if self._proposals > MAX_PROPOSALS:
                raise NegotiationFailed(f"peer made more than {MAX_PROPOSALS} proposals")
            if line == _LS:
                body = b"".join(encode_line(p) for p in self._list()) + b"\n"
                self._out += encode_uvarint(len(body)) + body
            elif line and line != _NA and self._supported(line):
                self._out += encode_line(line)
                self.done = True
                events.append(ProtocolAgreed(line, self._reader.leftover()))
            else:
                self._out += _NA_LINE
        return events


# --- asyncio adapters -------------------------------------------------------------------


async def _read_message(stream: Stream, max_length: int = MAX_LINE_LENGTH) -> bytes:
    """Read exactly one length-prefixed message (never more)."""
    prefix = bytearray()
    while True:
        b = await stream.read(1)
        if not b:
            raise ConnectionClosed("stream closed during protocol negotiation")
        prefix += b
        if b[0] < 0x80:
            break
        if len(prefix) >= 9:
            raise SerializationError("negotiation length prefix is malformed")
    decoded = decode_uvarint(prefix)
    assert decoded is not None
    if decoded[0] > max_length:
        raise MessageTooLarge(f"negotiation message of {decoded[0]} bytes exceeds {max_length}")
    return bytes(prefix) + await stream.read_exactly(decoded[0])


async def _drive_dialer(stream: Stream, core: DialerNegotiation) -> NegotiationEvent:
    await stream.write(core.data_to_send())
    limit = MAX_LS_SIZE if core.proposed is None else MAX_LINE_LENGTH
    while True:
        events = core.receive_data(await _read_message(stream, limit))
        out = core.data_to_send()
        if out:
            await stream.write(out)
        for event in events:
            if isinstance(event, ProtocolAgreed | ProtocolsListed):
                return event


async def select_protocol(
    stream: Stream, protocols: Sequence[str], *, timeout: float | None = None
) -> str:
    """As the dialer, agree on the first of ``protocols`` the listener supports.

    Raises :class:`NegotiationFailed` when none is supported, :class:`P2PTimeout`
    after ``timeout`` seconds.  The caller closes the stream on failure.
    """
    core = DialerNegotiation(protocols)
    try:
        async with asyncio.timeout(timeout):
            event = await _drive_dialer(stream, core)
    except TimeoutError:
        raise P2PTimeout(f"protocol negotiation timed out after {timeout}s") from None
    assert isinstance(event, ProtocolAgreed)
    return event.protocol


async def list_protocols(stream: Stream, *, timeout: float | None = None) -> list[str]:
    """Ask the listener for its protocols with ``ls``."""
    core = DialerNegotiation([], list_only=True)
    try:
        async with asyncio.timeout(timeout):
            event = await _drive_dialer(stream, core)
    except TimeoutError:
        raise P2PTimeout(f"ls timed out after {timeout}s") from None
    assert isinstance(event, ProtocolsListed)
    return event.protocols


async def handle_protocol(
    stream: Stream,
    supported: Callable[[str], bool],
    *,
    list_protocols: Callable[[], Iterable[str]] = lambda: (),
    timeout: float | None = None,
) -> str:
    """As the listener, answer proposals until one is supported; return it.

    Reads messages exactly, so data a lazy dialer sent after its proposal stays
    in the stream for the protocol handler.
    """
    core = ListenerNegotiation(supported, list_protocols)
    try:
        async with asyncio.timeout(timeout):
            while True:
                events = core.receive_data(await _read_message(stream))
                out = core.data_to_send()
                if out:
                    await stream.write(out)
                for event in events:
                    if isinstance(event, ProtocolAgreed):
                        return event.protocol
    except TimeoutError:
        raise P2PTimeout(f"protocol negotiation timed out after {timeout}s") from None


class _LazyBase(Stream):
    """Delegates to an inner stream; the first read checks an optimistic proposal's answer."""

    def __init__(self, inner: Stream, protocol: str) -> None:
        self._inner = inner
        self._core: DialerNegotiation | None = DialerNegotiation([protocol])
        self._core.data_to_send()  # already written by the caller

    async def _finish(self) -> None:
        core = self._core
        assert core is not None
        try:
            while not core.done:
                core.receive_data(await _read_message(self._inner))
        except BaseException:
            await self._inner.reset()
            raise
        self._core = None

    async def read(self, max_bytes: int = -1) -> bytes:
        if self._core is not None:
            await self._finish()
        return await self._inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.write(data)

    async def close_write(self) -> None:
        await self._inner.close_write()

    async def reset(self) -> None:
        await self._inner.reset()

    async def close(self) -> None:
        await self._inner.close()


class LazyNegotiatedStream(_LazyBase, MuxedStream):
    """A muxed stream whose single proposal was sent optimistically.

    Writes go through at once; the first read consumes and checks the
    listener's header and echo, raising :class:`NegotiationFailed` if it refused.
    """

    def __init__(self, inner: MuxedStream, protocol: str) -> None:
        super().__init__(inner, protocol)
        self._muxed = inner
        self.protocol = protocol
        self.max_message_size = inner.max_message_size

    @property
    def remote_peer(self) -> PeerId:
        return self._muxed.remote_peer

    @property
    def stats(self) -> ConnectionStats:
        return self._muxed.stats

    @property
    def muxed_conn(self) -> MuxedConnection:
        return self._muxed.muxed_conn

    @property
    def inner(self) -> MuxedStream:
        """The underlying stream."""
        return self._muxed


class LazyNegotiatedConnection(_LazyBase, Connection):
    """A connection on which a security or muxer protocol was proposed optimistically."""

    def __init__(self, inner: Connection, protocol: str) -> None:
        super().__init__(inner, protocol)
        self.local_addr = inner.local_addr
        self.remote_addr = inner.remote_addr
        self.local_peer = inner.local_peer
        self.remote_peer = inner.remote_peer
        self.is_limited = inner.is_limited


async def propose_lazily(conn: Connection, protocol: str) -> Connection:
    """Optimistically select ``protocol`` on a connection (see :func:`select_protocol_lazy`)."""
    validate_protocol_id(protocol)
    await conn.write(_HEADER + encode_line(protocol))
    return LazyNegotiatedConnection(conn, protocol)


async def select_protocol_lazy(stream: MuxedStream, protocol: str) -> MuxedStream:
    """Propose ``protocol`` optimistically: write header and proposal, do not wait.

    Returns a stream to use instead of ``stream``; the listener's answer is
    checked on its first read.
    """
    validate_protocol_id(protocol)
    await stream.write(_HEADER + encode_line(protocol))
    return LazyNegotiatedStream(stream, protocol)
