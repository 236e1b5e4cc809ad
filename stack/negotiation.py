"""multistream-select 1.0: agreeing on a protocol id at the start of a connection or stream.

Wire format (libp2p ``connections/README.md`` "Protocol Negotiation",
multiformats ``multistream-select``): every message is an unsigned-varint length
followed by UTF-8 text ending in ``\\n``; the length counts the newline.  The
dialer sends the header ``/multistream/1.0.0`` and proposes a protocol id; the
listener sends the header back and then either echoes the id (agreed) or answers
``na``, after which the dialer may propose the next id.  ``ls`` asks the listener
for its protocols: the answer is one message whose payload is the ids, each as a
length-prefixed line, followed by one final ``\\n``.

Layout:

* sans-IO cores :class:`DialerNegotiation` and :class:`ListenerNegotiation`:
  ``receive_data(bytes) -> list[event]``, ``data_to_send() -> bytes`` and
  ``max_read()``, the most bytes the caller may read next without taking any
  byte that follows the negotiation (the adapters never over-read, so the
  application data after the last negotiation message stays in the stream);
* asyncio adapters over a :class:`~switchy.stack.stream.Stream`: :func:`select_protocol`
  (dialer), :func:`handle_protocol` (listener), :func:`list_protocols`.

Optimistic ("lazy") selection.  With exactly one protocol to propose, the dialer
writes header and proposal and returns at once; the application writes straight
away and the listener's header and echo are read by the stream's *first read*,
which raises :class:`NegotiationFailed` if the listener answered ``na``.  This is
done in place, without wrapping the stream: the stream object gets instance
attributes shadowing its read method(s) (``read``, plus ``read_exactly``/
``read_all``/``recv_message`` if its class overrides them); once the answer is
checked they are deleted, so every later read is the class's own method with no
extra call.  Measured against a forwarding wrapper (Node over TCP+Noise+yamux,
one process): the wrapper put 3 extra coroutine calls on each dialer-side read
and write (stream, secured connection, raw connection); in place there are none
after the first read.  Stream classes without an instance ``__dict__`` fall back
to waiting for the answer.

On failure, the adapters raise and leave the stream open: the caller resets or
closes it.  Timeouts raise :class:`~switchy.stack.errors.P2PTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Container, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

import attrs

from switchy.stack.codec import decode_uvarint, encode_uvarint
from switchy.stack.errors import (
    ConnectionClosed,
    InvalidConfiguration,
    MessageTooLarge,
    NegotiationFailed,
    P2PError,
    P2PTimeout,
    ProtocolError,
    SerializationError,
    StreamRefused,
    fresh,
)
from switchy.stack.stream import MuxedStream, Stream

if TYPE_CHECKING:
    from switchy.stack.stream import Connection

__all__ = [
    "MAX_CACHED_PROPOSALS",
    "MAX_LINE_LENGTH",
    "MAX_LS_SIZE",
    "MAX_PROPOSALS",
    "MAX_PROTOCOL_ID_LENGTH",
    "MULTISTREAM_HEADER",
    "MULTISTREAM_PROTOCOL",
    "REFUSAL_CHECK_TIMEOUT",
    "DialerNegotiation",
    "ListenerNegotiation",
    "NegotiationEvent",
    "ProtocolAgreed",
    "ProtocolRejected",
    "ProtocolsListed",
    "confirm_protocol",
    "encode_line",
    "explain_failure",
    "handle_protocol",
    "list_protocols",
    "negotiation_pending",
    "propose_lazily",
    "select_protocol",
    "select_protocol_lazy",
    "validate_protocol_id",
]

MULTISTREAM_PROTOCOL: Final = "/multistream/1.0.0"
#: Longest negotiation message accepted, newline included (go-multistream's limit too).
MAX_LINE_LENGTH: Final = 1024
#: Longest protocol id, in UTF-8 bytes: one message minus its newline.
MAX_PROTOCOL_ID_LENGTH: Final = MAX_LINE_LENGTH - 1
#: Most messages a listener answers after the header (proposals and ``ls``) before it
#: gives up on the dialer.
MAX_PROPOSALS: Final = 32
#: Largest ``ls`` answer accepted (payload bytes).
MAX_LS_SIZE: Final = 64 * 1024

_NA: Final = "na"
_LS: Final = "ls"
#: Smallest possible message: a one-byte length and the newline.
_MIN_MESSAGE: Final = 2


def validate_protocol_id(protocol: str) -> bytes:
    """Check that ``protocol`` can be proposed; return its UTF-8 encoding.

    Raises :class:`InvalidConfiguration` for an empty id, one containing a
    newline, one that is not encodable as UTF-8, one longer than
    :data:`MAX_PROTOCOL_ID_LENGTH` bytes, or the reserved words ``na``/``ls``.
    """
    if not isinstance(protocol, str) or not protocol:
        raise InvalidConfiguration(f"protocol id must be a non-empty string, not {protocol!r}")
    if "\n" in protocol:
        raise InvalidConfiguration(f"protocol id {protocol!r} contains a newline")
    if protocol in (_NA, _LS):
        raise InvalidConfiguration(f"{protocol!r} is a multistream-select command, not a protocol")
    try:
        raw = protocol.encode()
    except UnicodeEncodeError:
        raise InvalidConfiguration(f"protocol id {protocol!r} is not valid UTF-8") from None
    if len(raw) > MAX_PROTOCOL_ID_LENGTH:
        raise InvalidConfiguration(
            f"protocol id of {len(raw)} bytes exceeds the limit of {MAX_PROTOCOL_ID_LENGTH} "
            f"({protocol[:40]!r}...)"
        )
    return raw


def _frame(raw: bytes) -> bytes:
    return encode_uvarint(len(raw) + 1) + raw + b"\n"


#: Most protocol ids whose encoded proposal :func:`_proposal` keeps.
MAX_CACHED_PROPOSALS: Final = 256
_proposals: dict[str, tuple[bytes, bytes]] = {}


def _proposal(protocol: str) -> tuple[bytes, bytes]:
    """``protocol`` checked and encoded: (its message payload, the header and its message).

    The second is also what a listener that agrees answers.  Kept for the first
    :data:`MAX_CACHED_PROPOSALS` ids (a node proposes a handful of ids, over and over).
    """
    cached = _proposals.get(protocol) if isinstance(protocol, str) else None
    if cached is not None:
        return cached
    payload = validate_protocol_id(protocol) + b"\n"
    result = payload, MULTISTREAM_HEADER + encode_uvarint(len(payload)) + payload
    if len(_proposals) < MAX_CACHED_PROPOSALS:
        _proposals[protocol] = result
    return result


def encode_line(text: str) -> bytes:
    """One negotiation message: varint length, ``text`` as UTF-8, newline."""
    return _frame(text.encode())


#: The header message: ``b"\\x13/multistream/1.0.0\\n"``.
MULTISTREAM_HEADER: Final = encode_line(MULTISTREAM_PROTOCOL)
_HEADER_PAYLOAD: Final = MULTISTREAM_PROTOCOL.encode() + b"\n"
_NA_LINE: Final = encode_line(_NA)
#: The header and a one-byte length: what a listener reads first.
_HEADER_AND_LENGTH: Final = len(MULTISTREAM_HEADER) + 1
_NA_PAYLOAD: Final = b"na\n"


# --- events -------------------------------------------------------------------------------


@attrs.frozen
class ProtocolAgreed:
    """Both sides agreed on ``protocol``.

    ``leftover`` holds bytes fed after the last negotiation message (application
    data); it is empty when the caller read no more than the core's ``max_read()``
    allowed (:meth:`DialerNegotiation.max_read`, :meth:`ListenerNegotiation.max_read`).
    """

    protocol: str
    leftover: bytes = b""


@attrs.frozen
class ProtocolRejected:
    """``protocol`` was answered with ``na`` (by the listener, or by us as listener)."""

    protocol: str


@attrs.frozen
class ProtocolsListed:
    """The listener's answer to ``ls``: its protocol ids in the order it sent them."""

    protocols: list[str]


#: Anything ``receive_data`` returns.
NegotiationEvent = ProtocolAgreed | ProtocolRejected | ProtocolsListed


# --- framing ------------------------------------------------------------------------------


class _Messages:
    """Splits received bytes into negotiation messages; knows how many bytes are safe to read."""

    __slots__ = ("_buf", "_limit")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def partial(self) -> bool:
        """True while part of a message is buffered."""
        return bool(self._buf)

    def _length(self) -> tuple[int, int] | None:
        """(length, prefix size) of the buffered message, None while the prefix is partial."""
        buf = self._buf
        if buf[0] < 0x80:  # one-byte prefix: every id up to 126 bytes
            length, pos = buf[0], 1
        else:
            try:
                r = decode_uvarint(buf)
            except SerializationError as exc:
                raise SerializationError(f"bad negotiation message length prefix: {exc}") from None
            if r is None:
                return None  # decode_uvarint raises once the prefix is too long
            length, pos = r
        if length > self._limit:
            raise MessageTooLarge(
                f"negotiation message of {length} bytes exceeds the limit of {self._limit} bytes"
            )
        if length == 0:
            raise ProtocolError("empty negotiation message (it must end in a newline)")
        return length, pos

    def check_header_start(self, who: str) -> None:
        """Fail at once if the buffered bytes cannot be the start of the header.

        The first message must be exactly :data:`MULTISTREAM_HEADER`, so a peer
        speaking something else (e.g. HTTP) is refused without waiting for a whole
        message whose length prefix is really a text byte.
        """
        start = bytes(self._buf[: len(MULTISTREAM_HEADER)])
        if not MULTISTREAM_HEADER.startswith(start):
            raise NegotiationFailed(
                f"the {who} does not speak {MULTISTREAM_PROTOCOL}: its first bytes were "
                f"{_show(start)}"
            )

    def need(self, at_boundary: int) -> int:
        """Bytes that may be read now: the rest of a started message, or ``at_boundary``."""
        if not self._buf:
            return at_boundary
        r = self._length()
        if r is None:
            return 1
        return r[0] + r[1] - len(self._buf)

    def next_payload(self) -> bytes | None:
        """The next complete message's payload (newline included), or None."""
        buf = self._buf
        if not buf:
            return None
        r = self._length()
        if r is None:
            return None
        end = r[0] + r[1]
        if len(buf) < end:
            return None
        payload = bytes(buf[r[1] : end])
        del buf[:end]
        if payload[-1] != 0x0A:
            raise ProtocolError(f"negotiation message {_show(payload)} does not end in a newline")
        return payload

    def rest(self) -> bytes:
        """Everything buffered (bytes after the negotiation)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


def _show(payload: bytes) -> str:
    return repr(payload[:64]) + ("..." if len(payload) > 64 else "")


def _text(payload: bytes) -> str:
    try:
        return payload[:-1].decode()
    except UnicodeDecodeError:
        raise SerializationError(f"negotiation message {_show(payload)} is not UTF-8") from None


def _parse_ls(payload: bytes) -> list[str]:
    """An ``ls`` answer's payload: length-prefixed lines, then one final newline."""
    if payload == _NA_PAYLOAD:
        raise NegotiationFailed("the listener does not support ls (answered na)")
    out: list[str] = []
    pos = 0
    end = len(payload) - 1  # the final newline
    body = payload[:end]
    while pos < end:
        try:
            r = decode_uvarint(body, pos)
        except SerializationError as exc:
            raise SerializationError(f"ls answer entry {len(out)}: {exc}") from None
        if r is None:
            raise SerializationError(f"ls answer ends inside the length of entry {len(out)}")
        length, pos = r
        if length == 0 or length > MAX_LINE_LENGTH or length > end - pos:
            raise ProtocolError(
                f"ls answer entry {len(out)} claims {length} bytes, "
                f"{end - pos} left (limit {MAX_LINE_LENGTH})"
            )
        item = payload[pos : pos + length]
        pos += length
        if item[-1] != 0x0A:
            raise ProtocolError(f"ls answer entry {_show(item)} does not end in a newline")
        text = _text(item)
        if "\n" in text:
            raise ProtocolError(f"ls answer entry {_show(item)} contains a newline")
        out.append(text)
    return out


# --- sans-IO cores ------------------------------------------------------------------------


class _Core:
    """What both cores share: message framing, the header check, sticky errors, output."""

    #: Who sends us bytes ("listener" for the dialer's core, "dialer" for the listener's).
    _peer: ClassVar[str]

    def __init__(self, limit: int) -> None:
        self._messages = _Messages(limit)
        self._header_seen = False
        self._error: P2PError | None = None
        self._out = bytearray()
        #: The agreed protocol, once there is one.
        self.agreed: str | None = None
        #: True once the negotiation finished.
        self.done = False

    @property
    def mid_message(self) -> bool:
        """True while part of a message is buffered (its sender is not waiting for us)."""
        return self._messages.partial

    def data_to_send(self) -> bytes:
        """Bytes to write to the peer now (empty if none)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[NegotiationEvent]:
        """Feed bytes from the peer (any chunking); return what they meant."""
        if self._error is not None:
            raise fresh(self._error)
        if self.done:
            raise ProtocolError("multistream-select negotiation already finished")
        try:
            events: list[NegotiationEvent] = []
            for payload in self._payloads(data):
                self._on_message(payload, events)
            return events
        except P2PError as exc:
            self._error = fresh(exc)  # the raised one carries frames that reference us
            raise

    def _payloads(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """The complete messages after the header, while the negotiation goes on."""
        messages = self._messages
        messages.feed(data)
        if not self._header_seen:
            messages.check_header_start(self._peer)
        while not self.done:
            payload = messages.next_payload()
            if payload is None:
                return
            if self._header_seen:
                yield payload
                continue
            if payload != _HEADER_PAYLOAD:
                raise NegotiationFailed(
                    f"the {self._peer} does not speak {MULTISTREAM_PROTOCOL}: its first "
                    f"message was {_show(payload)}"
                )
            self._header_seen = True
            self._on_header()

    def _on_header(self) -> None:
        """The peer's header arrived (default: nothing)."""

    def _on_message(self, payload: bytes, events: list[NegotiationEvent]) -> None:
        raise NotImplementedError


class DialerNegotiation(_Core):
    """Sans-IO dialer: proposes ``protocols`` in order until the listener accepts one.

    ``data_to_send()`` starts with the header and the first proposal; each ``na``
    yields :class:`ProtocolRejected` and queues the next proposal; the echo yields
    :class:`ProtocolAgreed`.  With ``list_only=True`` it sends ``ls`` instead and
    ends with :class:`ProtocolsListed`.  ``lazy=True`` records that the proposal
    was sent optimistically (it needs exactly one protocol): the bytes are the
    same, only the failure message differs.

    Raises :class:`NegotiationFailed` when every proposal was refused or the
    peer does not speak multistream-select 1.0, :class:`ProtocolError` (or a
    subclass) for malformed or unexpected answers, :class:`InvalidConfiguration`
    for protocol ids that cannot be proposed.
    """

    def __init__(
        self, protocols: Sequence[str], *, lazy: bool = False, list_only: bool = False
    ) -> None:
        if isinstance(protocols, str):
            raise InvalidConfiguration("protocols must be a sequence of ids, not one string")
        if list_only:
            payloads = [_LS.encode() + b"\n"]
        else:
            if not protocols:
                raise InvalidConfiguration("no protocols to propose")
            if lazy and len(protocols) != 1:
                raise InvalidConfiguration(
                    f"an optimistic proposal needs exactly one protocol, got {len(protocols)}"
                )
            payloads = [_proposal(p)[0] for p in protocols]
        # An accepting listener echoes the proposal's payload.
        self._echoes = payloads
        self._lines = [encode_uvarint(len(p)) + p for p in payloads]
        self._protocols = list(protocols)
        self._lazy = lazy
        self._list_only = list_only
        self._index = 0
        super().__init__(MAX_LS_SIZE if list_only else MAX_LINE_LENGTH)
        #: With one proposal: header and proposal, which is also the whole answer of a
        #: listener that agrees (its header and the echo), compared in one go.
        self._expected = (
            _proposal(protocols[0])[1] if len(protocols) == 1 and not list_only else None
        )
        if self._expected is not None:
            self._out += self._expected
        else:
            self._out += MULTISTREAM_HEADER
            self._out += self._lines[0]

    @property
    def proposed(self) -> str | None:
        """The protocol whose answer is awaited (None for ``ls``, when finished or all refused)."""
        if self._list_only or self.done or self._index >= len(self._protocols):
            return None
        return self._protocols[self._index]

    def max_read(self) -> int:
        """Most bytes that may be read next without consuming data after the negotiation.

        0 once finished.  Reading ``read(max_read())`` in a loop never takes a byte
        of what follows the listener's last negotiation message.
        """
        if self.done or self._error is not None:
            return 0
        expected = self._expected
        if expected is not None and not self._header_seen and not self._messages.partial:
            # The agreeing answer whole; a refusal (header and ``na``) is no longer, and
            # with one proposal nothing but negotiation follows a refusal.
            return len(expected)
        if self._list_only:
            answer = _MIN_MESSAGE
        else:
            answer = min(len(self._lines[self._index]), len(_NA_LINE))
        if not self._header_seen:
            return self._messages.need(len(MULTISTREAM_HEADER) + answer)
        return self._messages.need(answer)

    _peer = "listener"

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[NegotiationEvent]:
        """Feed bytes from the listener (any chunking); return what they meant.

        The common answer (all of it at once, agreeing to the one proposal) is
        recognised by one comparison; anything else goes through the message parser.
        """
        if (
            data == self._expected
            and not self._header_seen
            and not self._messages.partial
            and not self.done
            and self._error is None
        ):
            self._header_seen = self.done = True
            protocol = self.agreed = self._protocols[0]
            return [ProtocolAgreed(protocol)]
        return super().receive_data(data)

    def _on_message(self, payload: bytes, events: list[NegotiationEvent]) -> None:
        if self._list_only:
            self.done = True
            events.append(ProtocolsListed(_parse_ls(payload)))
        elif payload == self._echoes[self._index]:
            self.done = True
            self.agreed = self._protocols[self._index]
            events.append(ProtocolAgreed(self.agreed, self._messages.rest()))
        elif payload == _NA_PAYLOAD:
            events.append(self._rejected())
        else:
            raise ProtocolError(
                f"the listener answered {_show(payload)} to the proposal "
                f"{self._protocols[self._index]!r}"
            )

    def _rejected(self) -> ProtocolRejected:
        event = ProtocolRejected(self._protocols[self._index])
        self._index += 1
        if self._index == len(self._protocols):
            if self._lazy:
                raise NegotiationFailed(
                    f"the listener refused the optimistically proposed protocol "
                    f"{self._protocols[0]!r}"
                )
            raise NegotiationFailed(f"no protocol in common: tried {self._protocols}")
        self._out += self._lines[self._index]
        return event


class ListenerNegotiation(_Core):
    """Sans-IO listener: answers proposals until one is supported.

    ``supported`` decides (a predicate or any container, e.g. a set or a
    :class:`~switchy.stack.registry.ProtocolRegistry`); ``list_protocols`` answers ``ls``
    (default: the container's items, if it is iterable).  Yields
    :class:`ProtocolRejected` per ``na`` and finally :class:`ProtocolAgreed`.
    The listener's header is queued when the dialer's arrives.

    Raises :class:`NegotiationFailed` when the dialer does not speak
    multistream-select 1.0 or makes more than :data:`MAX_PROPOSALS` proposals,
    :class:`ProtocolError` (or a subclass) for malformed messages.
    """

    def __init__(
        self,
        supported: Callable[[str], bool] | Container[str],
        list_protocols: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self._supported: Callable[[str], bool] = (
            supported if callable(supported) else supported.__contains__
        )
        if list_protocols is None:
            items: Iterable[str] = supported if isinstance(supported, Iterable) else ()
            list_protocols = lambda: items  # noqa: E731
        self._list: Callable[[], Iterable[str]] = list_protocols
        super().__init__(MAX_LINE_LENGTH)
        self._proposals = 0
        #: Protocol ids answered with ``na`` so far (at most :data:`MAX_PROPOSALS`).
        self.rejected: list[str] = []
        #: The length of the first proposal while only the header and that length
        #: (one byte) came: its message is then taken whole, past the parser.
        self._first_length = 0

    @property
    def mid_message(self) -> bool:
        """True while part of a message is buffered (its sender is not waiting for us)."""
        return self._first_length > 0 or self._messages.partial

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[NegotiationEvent]:
        """Feed bytes from the dialer (any chunking); return what they meant.

        Read by :meth:`max_read`, a first proposal arrives as the header with its
        length, then its message: those two chunks skip the message parser (the
        message is still checked, by the code that checks every message).
        """
        length = self._first_length
        if length:
            self._first_length = 0
            if len(data) == length and data[-1] == 0x0A:
                events: list[NegotiationEvent] = []
                try:
                    self._on_message(bytes(data), events)
                except P2PError as exc:
                    self._error = fresh(exc)
                    raise
                return events
            self._messages.feed(bytes((length,)))  # anything else: the parser's turn
        elif (
            len(data) == _HEADER_AND_LENGTH
            and not self._header_seen
            and not self._messages.partial
            and _MIN_MESSAGE <= data[-1] < 0x80
            and data[:-1] == MULTISTREAM_HEADER
            and not self.done
            and self._error is None
        ):
            self._header_seen = True
            self._on_header()
            self._first_length = data[-1]
            return []
        return super().receive_data(data)

    def max_read(self) -> int:
        """Most bytes that may be read next without consuming data after the negotiation.

        0 once finished.  Every message from a dialer is negotiation data until one
        is accepted, so this is the rest of the current message, or at a message
        boundary the smallest message that must come (plus the header at the start).
        """
        if self.done or self._error is not None:
            return 0
        if self._first_length:
            return self._first_length
        if not self._header_seen:
            return self._messages.need(_HEADER_AND_LENGTH)
        return self._messages.need(_MIN_MESSAGE)

    _peer = "dialer"

    def _on_header(self) -> None:
        self._out += MULTISTREAM_HEADER

    def _on_message(self, payload: bytes, events: list[NegotiationEvent]) -> None:
        self._proposals += 1
        if self._proposals > MAX_PROPOSALS:
            raise NegotiationFailed(
                f"the dialer made more than {MAX_PROPOSALS} proposals without agreement"
            )
        text = _text(payload)
        if text == _LS:
            self._out += self._ls_answer()
        elif text != _NA and "\n" not in text and self._supported(text):
            self.done = True
            self.agreed = text
            self._out += _frame(payload[:-1])
            events.append(ProtocolAgreed(text, self._messages.rest()))
        else:
            self._out += _NA_LINE
            self.rejected.append(text)
            events.append(ProtocolRejected(text))

    def _ls_answer(self) -> bytes:
        body = bytearray()
        for p in self._list():
            body += _frame(p.encode())
        body += b"\n"
        return encode_uvarint(len(body)) + body


# --- asyncio adapters ---------------------------------------------------------------------

_T = TypeVar("_T")


async def _with_timeout(aw: Awaitable[_T], timeout: float | None, what: str) -> _T:
    if timeout is None:
        return await aw
    try:
        async with asyncio.timeout(timeout):
            return await aw
    except TimeoutError:
        raise P2PTimeout(f"{what} timed out after {timeout}s") from None


def _closed(role: str) -> ConnectionClosed:
    return ConnectionClosed(f"stream ended during multistream-select negotiation ({role})")


async def _run_dialer(stream: Stream, core: DialerNegotiation) -> list[NegotiationEvent]:
    """Read answers (never past them) and write follow-up proposals until ``core`` is done."""
    read = stream.read
    events: list[NegotiationEvent] = []
    while not core.done:
        data = await read(core.max_read())
        if not data:
            raise _closed("dialer")
        events = core.receive_data(data)
        out = core.data_to_send()
        if out:
            await stream.write(out)
    return events


async def _select(stream: Stream, protocols: Sequence[str]) -> str:
    core = DialerNegotiation(protocols)
    await stream.write(core.data_to_send())
    await _run_dialer(stream, core)
    assert core.agreed is not None
    return core.agreed


async def select_protocol(
    stream: Stream,
    protocols: Sequence[str],
    *,
    lazy: bool = True,
    timeout: float | None = None,
) -> str:
    """As the dialer, agree on the first of ``protocols`` that the listener supports.

    With ``lazy`` and a single protocol, the header and proposal are written and
    the protocol returned at once: the listener's answer is checked by the first
    read of ``stream`` (which then raises :class:`NegotiationFailed` if refused);
    ``timeout`` does not apply to that later read.  Otherwise this waits for the
    answers.  Raises :class:`NegotiationFailed` when no protocol is in common,
    :class:`P2PTimeout` after ``timeout`` seconds, :class:`InvalidConfiguration`
    for an unusable protocol id.  The caller closes or resets the stream on failure.
    """
    if isinstance(protocols, str):
        raise InvalidConfiguration("protocols must be a sequence of ids, not one string")
    if lazy and len(protocols) == 1 and _supports_lazy(stream):
        protocol = protocols[0]
        await _with_timeout(_propose(stream, protocol), timeout, "optimistic multistream-select")
        return protocol
    return await _with_timeout(
        _select(stream, protocols), timeout, f"multistream-select of {list(protocols)}"
    )


async def list_protocols(stream: Stream, *, timeout: float | None = None) -> list[str]:
    """Ask the listener for its protocols with ``ls``.

    The stream is left mid-negotiation afterwards; close it.  Raises
    :class:`NegotiationFailed` if the listener does not support ``ls``.
    """

    async def run() -> list[str]:
        core = DialerNegotiation((), list_only=True)
        await stream.write(core.data_to_send())
        events = await _run_dialer(stream, core)
        listed = events[-1]
        assert isinstance(listed, ProtocolsListed)
        return listed.protocols

    return await _with_timeout(run(), timeout, "multistream-select ls")


async def handle_protocol(
    stream: Stream,
    supported: Callable[[str], bool] | Container[str],
    *,
    list_protocols: Callable[[], Iterable[str]] | None = None,
    timeout: float | None = None,
) -> str:
    """As the listener, answer proposals (and ``ls``) until one is supported; return it.

    Reads never go past the dialer's last negotiation message, so data a lazy
    dialer sent right after its proposal stays in ``stream`` for the handler.
    The header is written together with the first answer when the dialer sent
    both messages at once.  Raises :class:`NegotiationFailed` (also when the
    dialer ends the stream after a refusal), :class:`ProtocolError`,
    :class:`ConnectionClosed` or :class:`P2PTimeout`; the caller closes or
    resets the stream on failure.
    """
    core = ListenerNegotiation(supported, list_protocols)
    if _listen_nowait(stream, core):  # the proposal came with the stream: no waiting
        agreed = core.agreed
        assert agreed is not None
        out = core.data_to_send()
        if not stream.try_write_soon_nowait(out):  # (no timer to arm in the common case)
            await _with_timeout(stream.write_soon(out), timeout, "multistream-select (listener)")
        return agreed
    return await _with_timeout(_listen(stream, core), timeout, "multistream-select (listener)")


def _listen_nowait(stream: Stream, core: ListenerNegotiation) -> bool:
    """Feed ``core`` the bytes ``stream`` already holds; whether that finished it.

    An end or reset of the stream is left for :func:`_listen`'s read to report."""
    read_nowait = stream.read_nowait
    while not core.done:
        try:
            data = read_nowait(core.max_read())
        except ConnectionClosed:
            return False
        if not data:
            return False
        core.receive_data(data)
    return True


async def _listen(stream: Stream, core: ListenerNegotiation) -> str:
    read = stream.read
    while True:
        if not core.mid_message:  # the dialer may be waiting for these answers
            out = core.data_to_send()
            if out:
                await stream.write(out)
        try:
            data = await read(core.max_read())
            if not data:
                raise _closed("listener")
        except ConnectionClosed as exc:
            if core.rejected:  # the dialer gave up: that is what happened, say so
                raise NegotiationFailed(
                    f"no protocol in common: the dialer ended the stream after we refused "
                    f"{core.rejected}"
                ) from exc
            raise
        core.receive_data(data)
        if core.done:
            # The answer may travel with the handler's first write (yamux holds it for one
            # loop turn at most, and flushes it before the stream waits to read).
            await stream.write_soon(core.data_to_send())
            assert core.agreed is not None
            return core.agreed


# --- optimistic proposals, checked by the first read ---------------------------------------

#: Instance attribute holding a stream's unchecked optimistic proposals.
_PENDING_ATTR: Final = "_multistream_pending"
#: Reading methods a Stream subclass may override without going through ``read``.
_READ_METHODS: Final = ("read_exactly", "read_all", "recv_message")
#: Writing methods a Stream subclass may override without going through ``write``.
_WRITE_METHODS: Final = ("write_last", "write_soon")
#: Longest wait, after a write or read failed on a stream with an unconfirmed optimistic
#: proposal, for the listener's answer and then for the answer on a probe stream.
REFUSAL_CHECK_TIMEOUT: Final = 5.0


class _Pending:
    """Optimistic proposals of one stream whose answers have not been read yet."""

    __slots__ = ("busy", "cores", "error", "patched")

    def __init__(self) -> None:
        self.cores: deque[DialerNegotiation] = deque()
        self.error: BaseException | None = None
        self.busy: asyncio.Future[None] | None = None
        self.patched: tuple[str, ...] = ()

    async def settle(self, stream: Stream) -> None:
        """Read and check every pending answer (once; concurrent callers wait)."""
        while True:
            if self.error is not None:
                raise self.error
            if not self.cores:
                self._restore(stream)
                return
            busy = self.busy
            if busy is not None:
                await asyncio.shield(busy)
                continue
            failure: P2PError | None = None
            try:
                if self._check_nowait(stream):  # the answer was all here: no waiting
                    continue
            except P2PError as exc:
                failure = exc
            mine = self.busy = asyncio.get_running_loop().create_future()
            try:
                if failure is not None:
                    raise failure
                await self._check_first(stream)
            except P2PError as exc:
                # The answer is lost (a reset discarded it): ask again on a fresh stream.
                error = self.error = await explain_failure(stream, self.cores[0].proposed, exc)
                if error is exc:
                    raise
                raise error from exc
            finally:
                self.busy = None
                mine.set_result(None)

    def _check_nowait(self, stream: Stream) -> bool:
        """Check the first pending answer from bytes already received; whether it was all
        there (an end or reset of the stream is left for :meth:`_check_first`)."""
        core = self.cores[0]
        cls_read_nowait = type(stream).read_nowait
        while not core.done:
            try:
                data = cls_read_nowait(stream, core.max_read())
            except ConnectionClosed:
                return False
            if not data:
                return False
            core.receive_data(data)
        self.cores.popleft()
        return True

    async def _check_first(self, stream: Stream) -> None:
        core = self.cores[0]
        cls_read = type(stream).read
        while not core.done:
            data = await cls_read(stream, core.max_read())
            if not data:
                raise _closed("dialer, optimistic proposal")
            core.receive_data(data)
        self.cores.popleft()

    def _restore(self, stream: Stream) -> None:
        if getattr(stream, _PENDING_ATTR, None) is self:
            for name in self.patched:
                delattr(stream, name)
            delattr(stream, _PENDING_ATTR)


def _supports_lazy(stream: Stream) -> bool:
    """Whether ``stream`` can take instance attributes and weak references."""
    cls = type(stream)
    return cls.__dictoffset__ != 0 and cls.__weakrefoffset__ != 0


_Methods = tuple[tuple[str, Callable[..., Awaitable[Any]]], ...]
#: Per stream class, its own reading and writing methods (see :func:`_overrides`); one
#: entry per stream class the program defines, so it stays small.
_class_overrides: dict[type, tuple[_Methods, _Methods]] = {}


def _overrides(cls: type[Stream]) -> tuple[_Methods, _Methods]:
    """The methods of :data:`_READ_METHODS` and :data:`_WRITE_METHODS` that ``cls``
    overrides (those do not go through ``read``/``write``), looked up once per class."""
    found = _class_overrides.get(cls)
    if found is None:
        reads = tuple(
            (name, getattr(cls, name))
            for name in _READ_METHODS
            if getattr(cls, name) is not getattr(Stream, name)
        )
        writes = tuple(
            (name, getattr(cls, name))
            for name in _WRITE_METHODS
            if getattr(cls, name) is not getattr(Stream, name)
        )
        found = _class_overrides[cls] = (reads, writes)
    return found


def _patch(stream: Stream, core: DialerNegotiation) -> None:
    # setattr/delattr rather than vars(): materialising the instance __dict__ would
    # slow every later attribute access of the stream (CPython inline values).
    pending = getattr(stream, _PENDING_ATTR, None)
    if isinstance(pending, _Pending):  # a nested optimistic proposal on the same stream
        pending.cores.append(core)
        return
    pending = _Pending()
    pending.cores.append(core)
    ref = weakref.ref(stream)  # no reference cycle through the instance attributes
    cls = type(stream)

    def alive() -> Stream:
        s = ref()
        if s is None:  # pragma: no cover - only via a method saved from a dead stream
            raise ConnectionClosed("the stream was garbage-collected")
        return s

    async def read(max_bytes: int = -1) -> bytes:
        s = alive()
        await pending.settle(s)
        return await cls.read(s, max_bytes)

    def read_nowait(max_bytes: int = -1) -> bytes | None:
        return None  # the answer must be read first (by read)

    patched: dict[str, Any] = {
        "read": read,
        "read_nowait": read_nowait,
        "write": _explaining(pending, alive, cls.write),
    }
    reads, writes = _overrides(cls)
    for name, method in reads:
        patched[name] = _settling(pending, alive, method)
    for name, method in writes:
        patched[name] = _explaining(pending, alive, method)
    pending.patched = tuple(patched)
    for name, fn in patched.items():
        setattr(stream, name, fn)
    setattr(stream, _PENDING_ATTR, pending)


def _settling(
    pending: _Pending, alive: Callable[[], Stream], method: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        s = alive()
        await pending.settle(s)
        return await method(s, *args, **kwargs)

    return call


def _explaining(
    pending: _Pending, alive: Callable[[], Stream], method: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """``method`` (a write), which on failure looks for the listener's refusal first.

    A refused optimistic proposal often shows as a failed write: the listener answered
    ``na`` and then reset the stream (or stopped reading: QUIC STOP_SENDING) when the
    data that followed the proposal arrived.  Its ``na`` is then in the receive buffer,
    unread; the refusal is what the caller must learn, not the reset.
    """

    async def call(*args: Any, **kwargs: Any) -> Any:
        s = alive()
        try:
            return await method(s, *args, **kwargs)
        except P2PError as exc:
            if pending.cores and pending.error is None and not isinstance(exc, NegotiationFailed):
                try:
                    async with asyncio.timeout(REFUSAL_CHECK_TIMEOUT):
                        await pending.settle(s)
                except NegotiationFailed as refused:
                    raise refused from exc
                except (P2PError, TimeoutError):
                    pass
            raise

    return call


async def explain_failure(stream: Stream, protocol: str | None, exc: P2PError) -> P2PError:
    """Why a stream with an optimistic proposal of ``protocol``, unanswered, failed with ``exc``.

    A listener that refuses the protocol may reset the stream right after its ``na``
    (it cannot parse the data that followed the proposal), and a reset may discard
    the ``na`` (yamux drops unread data, QUIC never sends data still queued).  For a
    muxed stream, a probe on a fresh stream tells a refusal apart from any other end:
    it asks ``ls`` first (a listed ``protocol`` is served, and no stream was charged to
    that protocol's limits, which may be what reset the first one), and proposes
    ``protocol`` again, without data, only when it is not listed (unsupported, or served
    by a match function, which ``ls`` does not list) or ``ls`` is not answered.  That
    costs one or two round trips, only on this failure path.
    A :class:`~switchy.stack.errors.StreamRefused` (the peer refused the stream before
    negotiating: its limits were full) is no refusal of the protocol: no probe is sent
    for it, as a probe would be refused (and counted) the same way.
    Returns :class:`NegotiationFailed` naming ``protocol`` if it is refused, else ``exc``
    (also when ``exc`` is not an end of stream or ``stream`` is not a muxed stream).
    """
    if (
        isinstance(exc, (NegotiationFailed, StreamRefused))
        or not isinstance(exc, ConnectionClosed)
        or protocol is None
        or not isinstance(stream, MuxedStream)
    ):
        return exc
    refused = NegotiationFailed(
        f"the listener refused the optimistically proposed protocol {protocol!r} "
        f"(the stream failed first: {exc}; a second look found it unsupported)"
    )
    try:
        probe = await stream.muxed_conn.open_stream()
    except P2PError:
        return exc
    try:
        try:
            listed = await list_protocols(probe, timeout=REFUSAL_CHECK_TIMEOUT)
        except NegotiationFailed:  # the listener does not answer ls
            listed = []
        if protocol in listed:
            return exc  # served: the stream ended for another reason (a limit, a reset)
        # Unlisted: unsupported, or served by a match function (which ls does not list).
        with contextlib.suppress(P2PError, OSError):
            await probe.reset()
        probe = await stream.muxed_conn.open_stream()
        await select_protocol(probe, [protocol], lazy=False, timeout=REFUSAL_CHECK_TIMEOUT)
    except NegotiationFailed:
        return refused
    except P2PError:
        return exc
    finally:
        with contextlib.suppress(P2PError, OSError):
            await probe.reset()
    return exc


async def _propose(stream: Stream, protocol: str) -> None:
    core = DialerNegotiation([protocol], lazy=True)
    out = core.data_to_send()
    _patch(stream, core)
    await stream.write(out)


def negotiation_pending(stream: Stream) -> bool:
    """True while an optimistic proposal on ``stream`` awaits its (unread) answer."""
    return isinstance(getattr(stream, _PENDING_ATTR, None), _Pending)


async def confirm_protocol(stream: Stream, *, timeout: float | None = None) -> None:
    """Wait for the answers to optimistic proposals on ``stream`` (no-op if none).

    Raises :class:`NegotiationFailed` if one was refused, :class:`P2PTimeout`
    after ``timeout`` seconds.
    """
    pending = getattr(stream, _PENDING_ATTR, None)
    if isinstance(pending, _Pending):
        await _with_timeout(pending.settle(stream), timeout, "optimistic multistream-select")


async def propose_lazily(conn: Connection, protocol: str) -> Connection:
    """Optimistically select ``protocol`` on a connection; return the connection.

    The answer is checked by the connection's first read (see :func:`select_protocol`).
    """
    await select_protocol(conn, [protocol], lazy=True)
    return conn


async def select_protocol_lazy(stream: MuxedStream, protocol: str) -> MuxedStream:
    """Optimistically select ``protocol`` on a muxed stream; return the stream.

    Sets ``stream.protocol``; the answer is checked by the stream's first read.
    """
    await select_protocol(stream, [protocol], lazy=True)
    stream.protocol = protocol
    return stream
