"""The httptools connection (protocols/http/fast.py) against h11: same events, same errors.

Differential properties: random, often malformed, requests and responses are fed to a
:class:`FastConnection` and to an :class:`h11.Connection` cut at the same places; every
event, error (message and status hint), state and the bytes left over must agree, and so
must the bytes of the heads and bodies each writes.  Plus checks that the plain exchange
really takes the fast path (else the speed-up would silently vanish).
"""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("httptools")

from switchy.protocols.http import core
from switchy.protocols.http.core import HttpError, ServerCore
from switchy.protocols.http.fast import FastConnection

MAX = 16 * 1024

GOOD_NAMES = st.sampled_from([b"x-a", b"X-Custom-Header", b"accept", b"User-Agent", b"cookie"])
ODD_NAMES = st.sampled_from(
    [
        b"host",
        b"Host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"expect",
        b"upgrade",
        b"bad name",
        b"x:y",
        b"",
        b"x\x00",
        b"\xe9t\xe9",
        b"a\tb",
        b"[x]",
    ]
)
GOOD_VALUES = st.sampled_from([b"a", b"1", b"*/*", b"a b", b"x=1; y=2", b"", b"caf\xe9"])
VALUE_BYTES = st.sampled_from(
    [
        b"a",
        b"1",
        b" ",
        b"\t",
        b"z",
        b"/",
        b",",
        b"\x01",
        b"\x7f",
        b"\x80",
        b"\xff",
        b"\x0b",
        b"close",
        b"keep-alive",
        b"chunked",
        b"gzip",
        b"100-continue",
        b"websocket",
        b"0",
        b"5",
        b"+5",
        b"\r",
        b"\n",
    ]
)
ODD_VALUES = st.lists(VALUE_BYTES, max_size=5).map(b"".join)
ODD_SEPARATORS = st.sampled_from([b":", b" :", b":  ", b": \t"])
#: Which part of a message is odd (most are plain: the fast path must be exercised too).
ODDITIES = st.sampled_from(
    ["none"] * 6 + ["start", "version", "eol", "header", "separator", "prefix", "framing", "host"]
)


@st.composite
def _headers(draw: st.DrawFn, odd: str) -> list[bytes]:
    lines = [
        n + b": " + v for n, v in draw(st.lists(st.tuples(GOOD_NAMES, GOOD_VALUES), max_size=4))
    ]
    if odd == "header":
        lines.append(draw(ODD_NAMES) + b": " + draw(ODD_VALUES))
    elif odd == "separator":
        lines.append(draw(GOOD_NAMES) + draw(ODD_SEPARATORS) + draw(GOOD_VALUES))
    return lines


def _body_lines(draw: st.DrawFn, odd: str) -> tuple[list[bytes], bytes]:
    body = draw(st.binary(max_size=40))
    framing = draw(
        st.sampled_from(
            ["none", "length", "length", "chunked"]
            if odd != "framing"
            else ["chunked", "bad-length"]
        )
    )
    if framing == "length":
        return [b"content-length: %d" % len(body)], body
    if framing == "bad-length":
        bad = draw(st.sampled_from([b"+1", b"1, 1", b"x", b" 3", b"99", b"1,2"]))
        return [b"content-length: " + bad], body
    if framing == "chunked":
        chunked = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
        return [b"transfer-encoding: chunked"], chunked
    return [], b""


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request: mostly plain, else with one odd part."""
    odd = draw(ODDITIES)
    methods = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]
    if odd == "start":
        methods = [b"HEAD", b"CONNECT", b"FOO", b"get", b"G\x00T", b"GET  "]
    method = draw(st.sampled_from(methods))
    parts = [b"a", b"%20", b"?q=1", b"/"] + (
        [b"#", b"\x7f", b"\x80", b" "] if odd == "start" else []
    )
    target = b"/" + draw(st.lists(st.sampled_from(parts), max_size=4).map(b"".join))
    version = b"HTTP/1.1"
    if odd == "version":
        version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/1.10"]))
    eol = b"\n" if odd == "eol" else b"\r\n"
    lines = [method + b" " + target + b" " + version]
    if odd != "host":
        lines.append(b"host: example")
    elif draw(st.booleans()):
        lines += [b"host: a", b"host: b"]
    framing, body = _body_lines(draw, odd)
    lines += framing + draw(_headers(odd))
    if draw(st.booleans()):
        rest = lines[1:]
        draw(st.randoms()).shuffle(rest)
        lines = lines[:1] + rest
    prefix = draw(st.sampled_from([b"\r\n", b" ", b"\n"])) if odd == "prefix" else b""
    tail = draw(st.sampled_from([b""] * 4 + [b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"junk"]))
    return prefix + eol.join(lines) + eol + eol + body + tail


def _cuts(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _summary(event: Any) -> object:
    """What must agree of an event (h11's ``Data`` holds a bytearray, ours bytes)."""
    if isinstance(event, h11.Request):
        return ("Request", event.method, event.target, list(event.headers), event.http_version)
    if isinstance(event, h11.Response | h11.InformationalResponse):
        return (type(event).__name__, event.status_code, list(event.headers), event.reason)
    if isinstance(event, h11.Data):
        return ("Data", bytes(event.data))
    if isinstance(event, h11.EndOfMessage):
        return ("EndOfMessage", list(event.headers))
    return event


def _run(conn: Any, pieces: list[bytes], eof: bool, cycles: int = 2) -> list[object]:
    """Feed ``pieces`` (then EOF); record events, errors and states; answer each request
    with a small response so keep-alive cycles go on."""
    out: list[object] = []

    def drain() -> bool:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                out.append(("error", str(exc), exc.error_status_hint, conn.their_state))
                return False
            out.append((_summary(event), conn.our_state, conn.their_state))
            if event is h11.PAUSED and conn.our_state is h11.SEND_RESPONSE:
                continue_cycle()
                continue
            if isinstance(event, h11.EndOfMessage) and conn.our_role is h11.SERVER:
                continue_cycle()
                continue
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return True
            if isinstance(event, h11.ConnectionClosed):
                return False

    def continue_cycle() -> None:
        if conn.our_state is not h11.SEND_RESPONSE:
            return
        try:
            sent = conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")]))
            sent = (sent or b"") + (conn.send(h11.Data(data=b"ok")) or b"")
            sent += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            out.append(("send-error", str(exc)))
            return
        out.append(("sent", sent, conn.our_state, conn.their_state))
        states: tuple[Any, Any] = (conn.our_state, conn.their_state)  # the send moved them
        if states == (h11.DONE, h11.DONE) and len(out) < 60:
            conn.start_next_cycle()
            out.append(("cycle", conn.our_state, conn.their_state))

    for piece in pieces:
        conn.receive_data(piece)
        if not drain():
            break
    else:
        if eof:
            conn.receive_data(b"")
            drain()
    data, closed = conn.trailing_data
    out.append(("trailing", bytes(data), closed))
    return out


@settings(max_examples=400, deadline=None)
@given(data=requests(), cuts=st.lists(st.integers(0, 400), max_size=4), eof=st.booleans())
def test_both_parsers_agree_on_requests(data: bytes, cuts: list[int], eof: bool) -> None:
    """Same events, errors (message and status), states and leftovers for any request."""
    pieces = _cuts(data, cuts)
    fast = _run(FastConnection(h11.SERVER, MAX), pieces, eof)
    slow = _run(h11.Connection(h11.SERVER, max_incomplete_event_size=MAX), pieces, eof)
    assert fast == slow


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """A response to a GET: mostly plain, else with one odd part."""
    odd = draw(ODDITIES)
    statuses = [b"200", b"201", b"204", b"304", b"404", b"500"]
    reasons = [b" OK", b"", b" ", b" Not Found", b" caf\xe9"]
    if odd == "start":
        statuses += [b"100", b"101", b"103", b"2000", b"abc", b"20"]
        reasons += [b" \x0b", b"\x00"]
    status, reason = draw(st.sampled_from(statuses)), draw(st.sampled_from(reasons))
    version = b"HTTP/1.1"
    if odd == "version":
        version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 "]))
    eol = b"\n" if odd == "eol" else b"\r\n"
    lines = [version + b" " + status + reason]
    framing, body = _body_lines(draw, odd)
    lines += framing + draw(_headers(odd))
    tail = draw(st.sampled_from([b""] * 4 + [b"junk"]))
    return eol.join(lines) + eol + eol + body + tail


@settings(max_examples=300, deadline=None)
@given(
    data=responses(),
    cuts=st.lists(st.integers(0, 300), max_size=4),
    eof=st.booleans(),
    close=st.booleans(),
)
def test_both_parsers_agree_on_responses(
    data: bytes, cuts: list[int], eof: bool, close: bool
) -> None:
    """A client: the same request bytes, then the same events for any response."""
    headers = [(b"host", b"example"), (b"accept", b"*/*")]
    if close:
        headers.append((b"connection", b"close"))
    results = []
    for conn in (FastConnection(h11.CLIENT, MAX), h11.Connection(h11.CLIENT)):
        sent = conn.send(h11.Request(method=b"GET", target=b"/x", headers=headers))
        sent = (sent or b"") + (conn.send(h11.EndOfMessage()) or b"")
        results.append(
            [sent, conn.our_state, conn.their_state, *_run(conn, _cuts(data, cuts), eof)]
        )
    assert results[0] == results[1]


HEADER_OUT = st.tuples(
    st.sampled_from(
        [
            b"content-type",
            b"X-A",
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"Host",
            b"bad name",
            b"date",
        ]
    ),
    st.sampled_from(
        [
            b"text/plain",
            b"2",
            b"chunked",
            b"close",
            b"keep-alive",
            b"gzip",
            b"a\r\nb",
            b" x",
            b"",
            b"2, 2",
            b"close, foo",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    request_close=st.booleans(),
    status=st.sampled_from([200, 204, 304, 404, 500]),
    headers=st.lists(HEADER_OUT, max_size=5),
    body=st.lists(st.binary(max_size=5), max_size=3),
    before_request=st.booleans(),
)
def test_both_write_the_same_responses(
    request_close: bool,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: list[bytes],
    before_request: bool,
) -> None:
    """A server's response head, body and end: the same bytes, errors and states."""
    request = b"GET / HTTP/1.1\r\nhost: x\r\n" + (
        b"connection: close\r\n" if request_close else b""
    )
    results = []
    for conn in (FastConnection(h11.SERVER, MAX), h11.Connection(h11.SERVER)):
        trace: list[object] = []
        if not before_request:
            conn.receive_data(request + b"\r\n")
            trace.append(_summary(conn.next_event()))
            trace.append(_summary(conn.next_event()))
        try:
            event = h11.Response(status_code=status, headers=headers, reason=b"R")
        except h11.LocalProtocolError as exc:
            trace.append(("invalid", str(exc)))
            results.append(trace)
            continue
        try:
            trace.append(conn.send(event))
            for part in body:
                trace.append(conn.send(h11.Data(data=part)))
            trace.append(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            trace.append(("error", str(exc)))
        trace.append((conn.our_state, conn.their_state))
        results.append(trace)
    assert results[0] == results[1]


def test_a_plain_exchange_takes_the_fast_path() -> None:
    """GET and POST with a length, the answer with a length or chunked: no h11 involved."""
    server = FastConnection(h11.SERVER, MAX)
    server.receive_data(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert isinstance(server.next_event(), h11.Request)
    assert bytes(server.next_event().data) == b"abc"
    assert isinstance(server.next_event(), h11.EndOfMessage)
    server.send_response(200, [(b"content-type", b"text/plain")], b"OK")
    assert server.send_data(b"hi") == b"2\r\nhi\r\n"
    assert server.send_eom() == b"0\r\n\r\n"
    assert server._h11 is None
    client = FastConnection(h11.CLIENT, MAX)
    client.send_request(b"GET", b"/", [(b"host", b"x")])
    client.send_eom()
    client.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi")
    assert client.next_event().status_code == 200
    assert bytes(client.next_event().data) == b"hi"
    assert isinstance(client.next_event(), h11.EndOfMessage)
    assert client.our_state is client.their_state is h11.MUST_CLOSE
    assert client._h11 is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "Host"),  # no Host
        (b"GET /a\x7f HTTP/1.1\r\nhost: x\r\n\r\n", "request line"),
        (b"GET / HTTP/1.1\r\nhost: x\r\nbad name: 1\r\n\r\n", "header line"),
        (b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1, 2\r\n\r\n", "Content-Length"),
        (b"GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", "Transfer-Encoding"),
        (b"\x00GET / HTTP/1.1\r\n\r\n", "request line"),
    ],
)
def test_malformed_requests_get_h11s_answer_on_both_paths(raw: bytes, fragment: str) -> None:
    """A malformed request is an HttpError with a status and a message naming the fault,
    whichever parser runs."""
    answers = []
    for parser in ("h11", "httptools"):
        saved = core.HTTP_PARSER
        core.HTTP_PARSER = parser
        try:
            server = ServerCore()
        finally:
            core.HTTP_PARSER = saved
        server.receive(raw)
        with pytest.raises(HttpError) as info:
            for _ in range(3):
                server.next_event()
        answers.append((info.value.status, str(info.value)))
        assert "malformed HTTP from the peer" in str(info.value)
        assert fragment.lower() in str(info.value).lower()
        assert info.value.status in (400, 501)
    assert answers[0] == answers[1]
