"""The sans-IO HTTP core: h11 framing round trips (hypothesis), limits, ranges."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.protocols.http.core import (
    ClientCore,
    HttpError,
    HttpLimits,
    ServerCore,
    is_websocket_upgrade,
    parse_range,
)

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
VALUE = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E) or b"v"
)
HEADERS = st.lists(
    st.tuples(TOKEN.map(lambda t: ("x-" + t).encode()), VALUE), min_size=0, max_size=10
)
CHUNKS = st.lists(st.binary(min_size=1, max_size=300), max_size=6)


def _feed_split(core: ServerCore | ClientCore, data: bytes, cuts: list[int]) -> list[object]:
    """Feed ``data`` cut at ``cuts``; collect events until NEED_DATA/PAUSED each time."""
    events: list[object] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        core.receive(data[a:b])
        while True:
            ev = core.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                break
            events.append(ev)
    return events


def _body(events: Sequence[object]) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]),
    path=TOKEN.map(lambda t: b"/" + t.encode() + b"?q=1"),
    headers=HEADERS,
    chunks=CHUNKS,
    chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8),
)
def test_request_framing_round_trips(
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    chunked: bool,
    cuts: list[int],
) -> None:
    body = b"".join(chunks)
    framing = (
        [(b"transfer-encoding", b"chunked")]
        if chunked
        else [(b"content-length", str(len(body)).encode())]
    )
    client = ClientCore()
    wire = client.request(method, path, [*headers, *framing])
    for c in chunks:
        wire += client.send(h11.Data(data=c))
    wire += client.send(h11.EndOfMessage())
    server = ServerCore()
    events = _feed_split(server, wire, cuts)
    head = events[0]
    assert isinstance(head, h11.Request)
    assert head.method == method and head.target == path
    for name, value in headers:
        assert (name, value) in list(head.headers)
    assert _body(events) == body
    assert isinstance(events[-1], h11.EndOfMessage)


@settings(max_examples=150, deadline=None)
@given(
    status=st.sampled_from([200, 201, 204, 206, 304, 404, 500]),
    headers=HEADERS,
    chunks=CHUNKS,
    chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8),
)
def test_response_framing_round_trips(
    status: int,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    chunked: bool,
    cuts: list[int],
) -> None:
    if status in (204, 304):
        chunks = []
    body = b"".join(chunks)
    client = ClientCore()
    wire_req = client.request(b"GET", b"/", [])
    client.send(h11.EndOfMessage())
    server = ServerCore()
    _feed_split(server, wire_req, [])
    framing = [] if chunked else [(b"content-length", str(len(body)).encode())]
    if status in (204, 304):
        framing = []
    wire = server.response(status, [*headers, *framing])
    for c in chunks:
        wire += server.send(h11.Data(data=c))
    wire += server.send(h11.EndOfMessage())
    assert b"connection: close" in wire.lower()
    events = _feed_split(client, wire, cuts)
    head = events[0]
    assert isinstance(head, h11.Response) and head.status_code == status
    # with a length, or chunked (no length: h11 chunks for an HTTP/1.1 peer): a clear end
    assert isinstance(events[-1], h11.EndOfMessage)
    assert (b"transfer-encoding: chunked" in wire.lower()) == (
        chunked and bool(status not in (204, 304))
    )
    assert _body(events) == body


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_never_crashes_the_server_core(data: bytes) -> None:
    server = ServerCore(HttpLimits(max_head_size=256))
    server.receive(data)
    try:
        for _ in range(50):
            ev = server.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                break
    except HttpError as exc:
        assert 400 <= exc.status < 500
        assert "malformed" in str(exc) or "header" in str(exc)


def test_malformed_request_line_is_400() -> None:
    server = ServerCore()
    server.receive(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(HttpError) as info:
        server.next_event()
    assert info.value.status == 400
    assert b"400" in server.error_response(info.value.status, str(info.value))


def test_header_flood_is_431() -> None:
    server = ServerCore(HttpLimits(max_headers=10))
    server.receive(
        b"GET / HTTP/1.1\r\nhost: p\r\n" + b"".join(b"x-%d: y\r\n" % i for i in range(11)) + b"\r\n"
    )
    with pytest.raises(HttpError, match="header fields") as info:
        server.next_event()
    assert info.value.status == 431


def test_oversized_head_is_refused_without_buffering_more() -> None:
    server = ServerCore(HttpLimits(max_head_size=1024))
    server.receive(b"GET / HTTP/1.1\r\nx-long: " + b"a" * 4096)
    with pytest.raises(HttpError) as info:
        server.next_event()
    assert info.value.status == 431


def test_body_longer_than_announced_is_not_part_of_the_body() -> None:
    server = ServerCore()
    server.receive(b"POST / HTTP/1.1\r\nhost: p\r\ncontent-length: 3\r\n\r\nabcEXTRA")
    events = [server.next_event() for _ in range(3)]
    assert isinstance(events[0], h11.Request)
    assert _body(events) == b"abc"
    assert isinstance(events[2], h11.EndOfMessage)
    assert server.next_event() is h11.PAUSED  # the extra bytes are never a second request


def test_websocket_upgrade_detection() -> None:
    ok = [(b"upgrade", b"WebSocket"), (b"connection", b"keep-alive, Upgrade")]
    assert is_websocket_upgrade(ok)
    assert not is_websocket_upgrade([(b"upgrade", b"websocket")])
    assert not is_websocket_upgrade([(b"connection", b"upgrade"), (b"upgrade", b"h2c")])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        (b"bytes=0-9", (0, 9)),
        (b"bytes=10-", (10, 99)),
        (b"bytes=-10", (90, 99)),
        (b"bytes=50-1000", (50, 99)),
        (b"bytes=0-1,5-6", None),
        (b"items=0-1", None),
        (b"bytes=x-1", None),
        (b"bytes=9-3", None),
    ],
)
def test_parse_range(header: bytes | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


def test_range_past_the_end_is_416() -> None:
    with pytest.raises(HttpError) as info:
        parse_range(b"bytes=100-", 100)
    assert info.value.status == 416
