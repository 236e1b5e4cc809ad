"""A faster HTTP/1.1 connection for the cores: heads parsed by httptools (llhttp, in C).

:class:`FastConnection` has the part of :class:`h11.Connection`'s interface the cores use
(``receive_data``, ``next_event``, ``send``, the states, ``trailing_data``,
``start_next_cycle``) and gives the same h11 events.  It handles the common exchange
itself: an HTTP/1.1 request or response head, a body framed by ``Content-Length`` (or
none), a response written with a length, chunked or (before any request) until close,
keep-alive and ``Connection: close``.  Everything else - a head httptools refuses or that
fails one of the checks below, ``HEAD``, ``CONNECT``, ``Upgrade``, ``Expect``,
``Transfer-Encoding`` on a received message, HTTP/1.0, other ``Connection`` options,
informational and close-delimited responses, a client request with a body - is handed
to a real :class:`h11.Connection`, fed the same bytes (a client's one replays the request
it sent), which then answers for the rest of the connection.  So every error a peer can
cause is h11's own (status hint and message), and every message either path accepts
gives the same events (``tests/test_http_fast.py`` checks both with hypothesis).

The checks on a head httptools accepted, where llhttp is more lenient than h11: the
target is visible ASCII, every header value is a field value of RFC 9110 (no control
characters, no leading or trailing space), one ``Host`` in a request, at most one
``Content-Length`` made of digits.  Heads this side writes are checked the same way
(names tokens, values field values), else h11's event normalises them or raises.
"""

from __future__ import annotations

import re
from typing import Any, Final

import h11
import httptools

__all__ = ["FastConnection"]

#: The end of a head: the first empty line (as h11 finds it).
_HEAD_END: Final = re.compile(rb"\n\r?\n")
#: Field values (RFC 9110 5.5: visible characters and obs-text, inner spaces and tabs),
#: joined by ``\n`` (the ``\n`` are counted too, so none hides in a value).
_FIELD_VALUES: Final = re.compile(
    rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?"
    rb"(?:\n(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)*"
)
#: Tokens joined by ``\n``.
_TOKENS: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*")
#: A reason phrase as h11 accepts it (spaces, tabs, visible characters, obs-text).
_REASON: Final = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
#: A request target: visible ASCII only.
_TARGET: Final = re.compile(rb"[\x21-\x7e]+")
#: A header name (token) and a method.
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS: Final = re.compile(rb"[0-9]+")
#: Headers whose presence sends a received or written message to h11.
_UNUSUAL_IN: Final = frozenset({b"transfer-encoding", b"upgrade", b"expect"})
#: Status codes whose responses have no body whatever their headers say.
_NO_BODY: Final = (204, 304)

_IDLE: Final = h11.IDLE
_SEND_BODY: Final = h11.SEND_BODY
_SEND_RESPONSE: Final = h11.SEND_RESPONSE
_DONE: Final = h11.DONE
_MUST_CLOSE: Final = h11.MUST_CLOSE
_CLOSED: Final = h11.CLOSED
_ERROR: Final = h11.ERROR


class _Delegate(Exception):
    """Internal: this message goes to h11."""


class _HeadParser:
    """The httptools callbacks of one head (fed the whole head at once)."""

    __slots__ = ("complete", "headers", "reason", "url")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse_head(head: bytes, *, request: bool) -> tuple[Any, _HeadParser]:
    """Parse one complete head with httptools; :class:`_Delegate` when it is not plain."""
    cb = _HeadParser()
    parser: Any = (httptools.HttpRequestParser if request else httptools.HttpResponseParser)(cb)
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        raise _Delegate from None
    if not cb.complete or parser.get_http_version() != "1.1" or parser.should_upgrade():
        raise _Delegate
    return parser, cb


def _values_ok(values: list[bytes]) -> bool:
    """Whether every one of ``values`` is a field value (one regular expression)."""
    joined = b"\n".join(values)
    return joined.count(b"\n") == len(values) - 1 and _FIELD_VALUES.fullmatch(joined) is not None


def _names_ok(names: list[bytes]) -> bool:
    """Whether every one of ``names`` is a token."""
    joined = b"\n".join(names)
    return joined.count(b"\n") == len(names) - 1 and _TOKENS.fullmatch(joined) is not None


def _check_headers(
    pairs: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes, bytes]], int | None, bool, int]:
    """h11's header items ``(raw name, lower-case name, stripped value)``; the length,
    keep-alive and ``Host`` count.

    :class:`_Delegate` for anything h11 may judge differently or that is not plain."""
    items = [(name, name.lower(), value.strip(b" \t")) for name, value in pairs]
    if items and not _values_ok([v for _, _, v in items]):
        raise _Delegate
    length: int | None = None
    keep_alive = True
    hosts = 0
    for _, lname, value in items:
        if lname == b"content-length":
            if length is not None or _DIGITS.fullmatch(value) is None:
                raise _Delegate
            length = int(value)
        elif lname == b"host":
            hosts += 1
        elif lname == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if not tokens <= {b"close", b"keep-alive"}:
                raise _Delegate
            if b"close" in tokens:
                keep_alive = False
        elif lname in _UNUSUAL_IN:
            raise _Delegate
    return items, length, keep_alive, hosts


def _simple_out(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether heads we write can skip h11's normalisation (tokens, field values, no
    ``Transfer-Encoding`` but ``chunked``, at most one ``Content-Length`` of digits)."""
    if not headers:
        return True
    if not _names_ok([k for k, _ in headers]) or not _values_ok([v for _, v in headers]):
        return False
    lengths = 0
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            lengths += 1
            if lengths > 1 or _DIGITS.fullmatch(value) is None:
                return False
        elif lname == b"transfer-encoding" and value != b"chunked":
            return False
    return True


def _probe_headers() -> Any:
    """h11's ``Headers`` class with an iteration at C speed (h11's goes through
    ``Sequence.__iter__``, one ``__getitem__`` call per field), or ``None`` when building
    it from items does not give what h11 builds (h11 does not export the class: checked
    once; then h11's own normalisation builds them)."""
    made = h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"x"), (b"A-B", b"1")])
    base: Any = type(made.headers)

    class ListedHeaders(base):  # type: ignore[misc]
        __slots__ = ("_pairs",)

        def __init__(self, items: list[tuple[bytes, bytes, bytes]]) -> None:
            super().__init__(items)
            self._pairs = [(name, value) for _, name, value in items]

        def __iter__(self) -> Any:
            return iter(self._pairs)

    try:
        same = ListedHeaders([(b"Host", b"host", b"x"), (b"A-B", b"a-b", b"1")])
        ok = (
            same == made.headers
            and list(same) == list(made.headers)
            and same.raw_items() == made.headers.raw_items()
            and isinstance(same, base)
        )
    except Exception:  # a later h11 changed the class
        ok = False
    return ListedHeaders if ok else None


_Headers: Any = _probe_headers()


def _headers(items: list[tuple[bytes, bytes, bytes]]) -> Any:
    """h11's ``Headers`` of received ``items`` (what h11's parser would build)."""
    if _Headers is not None:
        return _Headers(items)
    raw = [(r, v) for r, _, v in items]
    return h11.Request(method=b"GET", target=b"/", headers=raw, _parsed=True).headers


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[bool, int | None, bool]:
    """``(chunked, length, close)`` of heads we write (``close``: ``Connection: close``)."""
    chunked = False
    length = None
    close = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"transfer-encoding":
            chunked = True
        elif lname == b"content-length":
            length = int(value)
        elif lname == b"connection" and b"close" in {t.strip().lower() for t in value.split(b",")}:
            close = True
    return chunked, length, close


def _write_head(first: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A head in one join: ``Host`` first, as h11 writes it."""
    hosts = [i for i, (k, _) in enumerate(headers) if k.lower() == b"host"]
    if hosts and hosts != list(range(len(hosts))):
        headers = [headers[i] for i in hosts] + [h for h in headers if h[0].lower() != b"host"]
    return b"".join([first, *[b"%s: %s\r\n" % kv for kv in headers], b"\r\n"])


class FastConnection:
    """One side of an HTTP/1.1 connection: :class:`h11.Connection`'s subset (see module)."""

    def __init__(
        self, our_role: type[h11.CLIENT] | type[h11.SERVER], max_incomplete_event_size: int
    ) -> None:
        self.our_role = our_role
        self.their_role = h11.SERVER if our_role is h11.CLIENT else h11.CLIENT
        self._max = max_incomplete_event_size
        self._h11: h11.Connection | None = None
        self._buf = bytearray()
        self._eof = False
        self._server: Any = _IDLE
        self._client: Any = _IDLE
        self._keep_alive = True
        self._remaining = 0  # body bytes still to receive
        self._send_chunked = False
        self._send_left: int | None = None  # body bytes still to send (None: unbounded)
        self._request: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None = None
        self._request_done = False
        self._http10_out = False

    # --- states ---------------------------------------------------------------------

    def _state(self, role: Any) -> Any:
        """A side's state, with h11's state-triggered moves to ``MUST_CLOSE``."""
        mine, other = (
            (self._client, self._server) if role is h11.CLIENT else (self._server, self._client)
        )
        if mine is _DONE and (not self._keep_alive or other is _ERROR or other is _CLOSED):
            return _MUST_CLOSE
        if mine is _IDLE and other is _CLOSED:
            return _MUST_CLOSE
        return mine

    @property
    def our_state(self) -> Any:
        """Our side's state (h11's sentinels)."""
        return self._h11.our_state if self._h11 is not None else self._state(self.our_role)

    @property
    def their_state(self) -> Any:
        """The peer's state (h11's sentinels)."""
        return self._h11.their_state if self._h11 is not None else self._state(self.their_role)

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        """Whether the client waits for ``100 Continue`` (only ever on the h11 path)."""
        return self._h11 is not None and self._h11.they_are_waiting_for_100_continue

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received and not consumed, and whether the peer closed."""
        if self._h11 is not None:
            data, closed = self._h11.trailing_data
            return bytes(data), closed
        return bytes(self._buf), self._eof

    def start_next_cycle(self) -> None:
        """Both sides done with a kept-alive exchange: ready for the next one."""
        if self._h11 is not None:
            self._h11.start_next_cycle()
            return
        if self.our_state is not _DONE or self.their_state is not _DONE:
            raise h11.LocalProtocolError(
                f"not in a reusable state (self/peer: {self.our_state}/{self.their_state})"
            )
        self._server = self._client = _IDLE
        self._request = None
        self._request_done = False

    # --- receiving ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer (``b""``: it closed)."""
        if self._h11 is not None:
            self._h11.receive_data(data)
            return
        if data:
            if self._eof:
                raise RuntimeError("received close, then received more data?")
            self._buf += data
        else:
            self._eof = True

    def _to_h11(self) -> h11.Connection:
        """Hand the connection, from the start of this cycle, to h11."""
        conn = h11.Connection(self.our_role, max_incomplete_event_size=self._max)
        if self._request is not None:  # the client's request, already written
            method, target, headers = self._request
            conn.send(h11.Request(method=method, target=target, headers=headers))
            if self._request_done:
                conn.send(h11.EndOfMessage())
        if self._buf:
            conn.receive_data(bytes(self._buf))
        if self._eof:
            conn.receive_data(b"")
        self._h11 = conn
        self._buf = bytearray()
        return conn

    def _fail(self, message: str) -> None:
        if self.their_role is h11.CLIENT:
            self._client = _ERROR
        else:
            self._server = _ERROR
        raise h11.RemoteProtocolError(message)

    def next_event(self) -> Any:
        """The next event from the peer (h11's events, ``NEED_DATA``, ``PAUSED``)."""
        if self._h11 is not None:
            return self._h11.next_event()
        state = self.their_state
        if state is _ERROR:
            raise h11.RemoteProtocolError("Can't receive data when peer state is ERROR")
        if state is _IDLE and self.our_role is h11.CLIENT:
            return self._to_h11().next_event()  # an answer before any request
        if state is _IDLE or state is _SEND_RESPONSE:
            try:
                return self._head()
            except _Delegate:
                return self._to_h11().next_event()
        if state is _SEND_BODY:
            if self._remaining == 0:
                self._set_their(_DONE)
                return h11.EndOfMessage()
            if self._buf:
                data = bytes(self._buf[: self._remaining])
                del self._buf[: self._remaining]
                self._remaining -= len(data)
                return h11.Data(data=data)
            if self._eof:
                self._fail(
                    "peer closed connection without sending complete message body "
                    f"(received {self._length - self._remaining} bytes, expected {self._length})"
                )
            return h11.NEED_DATA
        # DONE, MUST_CLOSE, CLOSED
        if self._buf:
            if state is _DONE:
                return h11.PAUSED
            self._fail("Got data when expecting EOF")
        if self._eof:
            self._set_their(_CLOSED)
            return h11.ConnectionClosed()
        return h11.NEED_DATA

    _length = 0

    def _set_their(self, state: Any) -> None:
        if self.their_role is h11.CLIENT:
            self._client = state
        else:
            self._server = state

    def _head(self) -> Any:
        buf = self._buf
        if not buf:
            if self._eof:
                self._set_their(_CLOSED)
                return h11.ConnectionClosed()
            return h11.NEED_DATA
        request = self.our_role is h11.SERVER
        first = buf[0]
        if not 0x41 <= first <= 0x5A or (not request and first != 0x48):
            raise _Delegate  # leading empty lines, obviously bad lines: h11 decides
        end = _HEAD_END.search(buf)
        if end is None:
            if self._eof or len(buf) > self._max:
                raise _Delegate
            return h11.NEED_DATA
        head = bytes(buf[: end.end()])
        parser, cb = _parse_head(head, request=request)
        headers, length, keep_alive, hosts = _check_headers(cb.headers)
        if request:
            method = parser.get_method()
            if (
                method in (b"HEAD", b"CONNECT")
                or hosts != 1
                or _TARGET.fullmatch(cb.url) is None
                or not head.startswith(b"%s %s HTTP/1.1\r\n" % (method, cb.url))
            ):
                raise _Delegate  # (llhttp also takes several spaces in the request line)
            event: Any = h11.Request(
                method=method,
                target=cb.url,
                headers=_headers(headers),
                http_version=b"1.1",
                _parsed=True,
            )
            self._server = _SEND_RESPONSE
        else:
            status = parser.get_status_code()
            line = b"HTTP/1.1 %d %s\r\n" % (status, cb.reason)
            if (
                not 200 <= status <= 999
                or _REASON.fullmatch(cb.reason) is None
                or not (head.startswith(line) or head.startswith(b"HTTP/1.1 %d\r\n" % status))
            ):
                raise _Delegate
            if status in _NO_BODY:
                length = 0
            elif length is None:
                raise _Delegate  # until close
            event = h11.Response(
                status_code=status,
                headers=_headers(headers),
                reason=cb.reason,
                http_version=b"1.1",
                _parsed=True,
            )
        del buf[: end.end()]
        self._keep_alive = self._keep_alive and keep_alive
        self._length = self._remaining = length or 0
        self._set_their(_SEND_BODY)
        return event

    # --- sending --------------------------------------------------------------------

    def send(self, event: Any) -> bytes | None:
        """The bytes of ``event`` (h11 checks it fits the message state)."""
        if self._h11 is not None:
            data: bytes | None = self._h11.send(event)
            return data
        if type(event) is h11.Data:
            return self.send_data(event.data)
        if type(event) is h11.EndOfMessage and not event.headers:
            return self.send_eom()
        if type(event) is h11.Response:
            return self.send_response(
                event.status_code, list(event.headers.raw_items()), event.reason
            )
        if type(event) is h11.Request:
            return self.send_request(event.method, event.target, list(event.headers.raw_items()))
        return self._delegate_send(event)

    def _delegate_send(self, event: Any) -> bytes | None:
        if self.our_role is h11.SERVER and self._server is _IDLE and self._client is _IDLE:
            data: bytes | None = self._to_h11().send(event)
            return data
        self._set_our(_ERROR)
        raise h11.LocalProtocolError(f"can't send {type(event).__name__} on this exchange")

    def _set_our(self, state: Any) -> None:
        if self.our_role is h11.CLIENT:
            self._client = state
        else:
            self._server = state

    def send_request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """A request head (the client role)."""
        if self._h11 is None and (
            self.our_role is not h11.CLIENT
            or self._client is not _IDLE
            or method in (b"HEAD", b"CONNECT")
            or _TOKEN.fullmatch(method) is None
            or _TARGET.fullmatch(target) is None
            or not _simple_out(headers)
        ):
            self._h11 = h11.Connection(self.our_role, max_incomplete_event_size=self._max)
        if self._h11 is not None:
            return self._h11.send(h11.Request(method=method, target=target, headers=headers)) or b""
        hosts = 0
        for name, value in headers:
            lname = name.lower()
            if lname == b"host":
                hosts += 1
            elif lname in _UNUSUAL_IN or (lname == b"content-length" and value != b"0"):
                return self._h11_request(method, target, headers)
            elif lname == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                if not tokens <= {b"close", b"keep-alive"}:
                    return self._h11_request(method, target, headers)
                if b"close" in tokens:
                    self._keep_alive = False
        if hosts != 1:
            return self._h11_request(method, target, headers)
        self._request = (method, target, headers)
        self._client = _SEND_BODY
        self._server = _SEND_RESPONSE
        self._send_chunked = False
        self._send_left = 0
        return _write_head(b"%s %s HTTP/1.1\r\n" % (method, target), headers)

    def _h11_request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        self._h11 = h11.Connection(self.our_role, max_incomplete_event_size=self._max)
        return self._h11.send(h11.Request(method=method, target=target, headers=headers)) or b""

    def send_response(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes
    ) -> bytes:
        """A response head (the server role; ``status`` >= 200)."""
        if self._h11 is not None:
            return (
                self._h11.send(h11.Response(status_code=status, headers=headers, reason=reason))
                or b""
            )
        if (
            self.our_role is not h11.SERVER
            or self._server not in (_IDLE, _SEND_RESPONSE)
            or status < 200
        ):
            return (
                self._delegate_send(
                    h11.Response(status_code=status, headers=headers, reason=reason)
                )
                or b""
            )
        if not _simple_out(headers):
            try:
                headers = list(
                    h11.Response(
                        status_code=status, headers=headers, reason=reason
                    ).headers.raw_items()
                )
            except h11.LocalProtocolError:
                self._server = _ERROR
                raise
        chunked, length, close = _framing(headers)
        need_close = False
        if status in _NO_BODY:
            chunked, length = False, 0
        elif chunked or length is None:
            # unknown length: chunked to an HTTP/1.1 peer, until close before any request
            drop = (b"content-length", b"transfer-encoding")
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
            if self._server is _SEND_RESPONSE:
                headers.append((b"Transfer-Encoding", b"chunked"))
                chunked = True
            else:
                chunked = False
                self._http10_out = need_close = True
        if not self._keep_alive or need_close:
            tokens = {b"close"}
            for k, v in headers:
                if k.lower() == b"connection":
                    tokens |= {t.strip().lower() for t in v.split(b",")}
            tokens -= {b"keep-alive", b""}
            headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
            headers += [(b"Connection", t) for t in sorted(tokens)]
        if close:
            self._keep_alive = False
        self._send_chunked = chunked
        self._send_left = None if chunked or self._http10_out else length
        self._server = _SEND_BODY
        return _write_head(b"HTTP/1.1 %d %s\r\n" % (status, reason), headers)

    def send_data(self, data: bytes) -> bytes:
        """Body bytes (framed as the head said)."""
        if self._h11 is not None:
            return self._h11.send(h11.Data(data=data)) or b""
        if self.our_state is not _SEND_BODY:
            self._set_our(_ERROR)
            raise h11.LocalProtocolError(f"can't send Data in state {self.our_state}")
        if self._send_chunked:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if self._send_left is not None:
            if len(data) > self._send_left:
                self._set_our(_ERROR)
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            self._send_left -= len(data)
        return data if type(data) is bytes else bytes(data)

    def send_eom(self) -> bytes:
        """The end of the message."""
        if self._h11 is not None:
            return self._h11.send(h11.EndOfMessage()) or b""
        if self.our_state is not _SEND_BODY:
            self._set_our(_ERROR)
            raise h11.LocalProtocolError(f"can't send EndOfMessage in state {self.our_state}")
        if self._send_left:
            self._set_our(_ERROR)
            raise h11.LocalProtocolError("Too little data for declared Content-Length")
        self._set_our(_DONE)
        if self.our_role is h11.CLIENT:
            self._request_done = True
        if self._http10_out:
            self._keep_alive = False
        return b"0\r\n\r\n" if self._send_chunked else b""
