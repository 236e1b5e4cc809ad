"""Router sans-IO core: exact bytes, round trips over any chunking, limits, hostile input."""

from __future__ import annotations

from typing import Literal

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchy.protocols.router.core import (
    END_FRAME,
    MAX_FRAME_SIZE,
    MAX_HEAD_SIZE,
    MAX_HEADERS,
    MAX_PATH_LENGTH,
    MAX_QUERY_PARAMS,
    SEND_FRAME_SIZE,
    BodyData,
    EndOfMessage,
    Event,
    MessageReader,
    RequestHead,
    ResponseHead,
    encode_body,
    encode_data_frame,
    encode_request_head,
    encode_response_head,
    reason_phrase,
)
from switchy.stack.codec import encode_uvarint
from switchy.stack.errors import ConnectionClosed, MessageTooLarge, ProtocolError, SerializationError


def feed(reader: MessageReader, data: bytes, cuts: list[int] | None = None) -> list[Event]:
    """Feed ``data`` split at ``cuts``; merge adjacent body chunks."""
    points = sorted({c for c in (cuts or []) if 0 < c < len(data)})
    events: list[Event] = []
    prev = 0
    for p in [*points, len(data)]:
        events.extend(reader.receive_data(data[prev:p]))
        prev = p
    merged: list[Event] = []
    for e in events:
        if isinstance(e, BodyData) and merged and isinstance(merged[-1], BodyData):
            merged[-1] = BodyData(merged[-1].data + e.data)
        else:
            merged.append(e)
    return merged


def raw_head(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj)
    return encode_uvarint(len(packed)) + packed


# --- exact bytes (the spec's example) -------------------------------------------------------


def test_spec_example_bytes() -> None:
    head = encode_request_head("GET", "/tracks/7", {"fmt": "short"})
    assert head.hex() == (
        "2c83a66d6574686f64a3474554a470617468a92f747261636b732f37"
        "a57175657279" + "81a3666d74a573686f7274"
    )
    resp = encode_response_head(200, None, 5) + encode_body(b"hello")
    assert resp.hex() == "1282a6737461747573ccc8a66c656e677468" + "05" + "0568656c6c6f" + "00"
    r = MessageReader("response")
    assert feed(r, resp) == [ResponseHead(200, {}, 5), BodyData(b"hello"), EndOfMessage()]
    assert r.done


def test_no_body_message_ends_with_its_head() -> None:
    r = MessageReader("request")
    events = r.receive_data(encode_request_head("DELETE", "/x"))
    assert events == [RequestHead("DELETE", "/x", {}, {}, 0), EndOfMessage()]
    with pytest.raises(ProtocolError, match="after the end"):
        r.receive_data(b"\x00")


def test_unknown_length_body_and_empty_body() -> None:
    r = MessageReader("request")
    data = encode_request_head("POST", "/u", length=None) + END_FRAME
    assert feed(r, data) == [RequestHead("POST", "/u", {}, {}, None), EndOfMessage()]


def test_large_body_is_split_into_send_frames() -> None:
    body = bytes(range(256)) * (SEND_FRAME_SIZE // 100)
    encoded = encode_body(body)
    assert encoded[-1:] == END_FRAME
    assert len(encoded) > len(body) + 2
    r = MessageReader("response")
    events = feed(r, encode_response_head(200, None, len(body)) + encoded, [7, 1000, 300000])
    assert events[1] == BodyData(body)


def test_body_chunks_are_passed_on_without_buffering() -> None:
    r = MessageReader("response")
    r.receive_data(encode_response_head(200, None, None) + encode_uvarint(100_000))
    chunk = b"x" * 1000
    (event,) = r.receive_data(chunk)
    assert isinstance(event, BodyData) and event.data is chunk  # no copy
    assert r.body_received == 100_000 and not r.done


def test_headers_are_lower_cased() -> None:
    r = MessageReader("request")
    (head, _) = r.receive_data(raw_head({"method": "GET", "path": "/", "headers": {"X-A": "1"}}))
    assert isinstance(head, RequestHead) and head.headers == {"x-a": "1"}


def test_reason_phrases() -> None:
    for status in (200, 201, 204, 400, 403, 404, 405, 408, 413, 429, 500, 503):
        assert reason_phrase(status)
    assert reason_phrase(599) == ""


# --- property tests -------------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=40)
segment_chars = st.characters(blacklist_categories=["Cs"], blacklist_characters="/?\x00")
paths = st.lists(st.text(alphabet=segment_chars, max_size=12)).map(
    lambda segs: "/" + "/".join(segs)
)
header_maps = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20), text, max_size=8
)
bodies = st.binary(max_size=3000)


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=paths,
    query=st.dictionaries(text, text, max_size=5),
    headers=header_maps,
    body=bodies,
    declared=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_request_round_trip_any_chunking(
    method: str,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
    declared: bool,
    cuts: list[int],
) -> None:
    length = len(body) if declared else None
    wire = encode_request_head(method, path, query, headers, length)
    if length != 0:
        wire += encode_body(body)
    r = MessageReader("request")
    events = feed(r, wire, cuts)
    assert events[0] == RequestHead(method, path, query, headers, length)
    assert events[-1] == EndOfMessage()
    got = b"".join(e.data for e in events if isinstance(e, BodyData))
    assert got == (body if length != 0 else b"")
    assert r.done
    r.receive_eof()  # complete: no error


@given(
    status=st.integers(min_value=100, max_value=599),
    headers=header_maps,
    chunks=st.lists(st.binary(min_size=1, max_size=500), max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=10),
)
def test_response_round_trip_streamed_frames(
    status: int, headers: dict[str, str], chunks: list[bytes], cuts: list[int]
) -> None:
    wire = encode_response_head(status, headers, None)
    wire += b"".join(encode_data_frame(c) for c in chunks) + END_FRAME
    r = MessageReader("response")
    events = feed(r, wire, cuts)
    assert events[0] == ResponseHead(status, headers, None)
    assert b"".join(e.data for e in events if isinstance(e, BodyData)) == b"".join(chunks)
    assert events[-1] == EndOfMessage()


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=5))
def test_garbage_never_crashes(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes give events or a P2PError (ProtocolError family), nothing else."""
    kinds: list[Literal["request", "response"]] = ["request", "response"]
    for kind in kinds:
        r = MessageReader(kind)
        try:
            feed(r, data, cuts)
            r.receive_eof()
        except (ProtocolError, ConnectionClosed):
            pass


@given(
    body=st.binary(min_size=1, max_size=2000),
    limit=st.integers(min_value=0, max_value=2000),
    declared=st.booleans(),
)
def test_body_limit_is_checked_before_the_bytes(body: bytes, limit: int, declared: bool) -> None:
    wire = encode_request_head("POST", "/", length=len(body) if declared else None)
    wire += encode_body(body)
    r = MessageReader("request", max_body_size=limit)
    if len(body) <= limit:
        feed(r, wire)
        assert r.done
        return
    with pytest.raises(MessageTooLarge):
        # the frame header alone is enough to refuse: no payload byte is needed
        r.receive_data(wire[: len(wire) - len(body) - 1])
        r.set_max_body_size(limit)


# --- limits and hostile input ---------------------------------------------------------------


def test_declared_length_over_the_limit_is_refused_at_once() -> None:
    r = MessageReader("request")
    (head,) = r.receive_data(encode_request_head("PUT", "/f", length=10**12))
    assert isinstance(head, RequestHead) and head.length == 10**12
    with pytest.raises(MessageTooLarge, match="declared body of 1000000000000 bytes"):
        r.set_max_body_size(1 << 20)


def test_limit_set_after_frames_already_parsed() -> None:
    r = MessageReader("request")
    r.receive_data(encode_request_head("PUT", "/f", length=None) + encode_data_frame(b"x" * 100))
    with pytest.raises(MessageTooLarge):
        r.set_max_body_size(50)


@pytest.mark.parametrize(
    ("wire", "error", "match"),
    [
        (b"\x00", SerializationError, "length 0"),
        (encode_uvarint(MAX_HEAD_SIZE + 1), MessageTooLarge, "exceeds the limit"),
        (b"\x80\x00", SerializationError, "minimally"),
        (b"\xff" * 10, SerializationError, "longer"),
        (raw_head([1, 2]), SerializationError, "must be a msgpack map"),
        (b"\x02\xc1\xc1", SerializationError, "not a msgpack value"),
        (b"\x03\x81\xa1a", SerializationError, "not a msgpack value"),
        (raw_head({"path": "/"}), SerializationError, "method and a path"),
        (raw_head({"method": "get", "path": "/"}), SerializationError, "method must be"),
        (raw_head({"method": "GET", "path": "x"}), SerializationError, "start with '/'"),
        (raw_head({"method": "GET", "path": 5}), SerializationError, "path must be a string"),
        (raw_head({"method": "GET", "path": "/a?b"}), SerializationError, "'?'"),
        (raw_head({"method": "GET", "path": "/" + "a" * MAX_PATH_LENGTH}), MessageTooLarge, "path"),
        (raw_head({"method": "GET", "path": "/", "headers": []}), SerializationError, "a map"),
        (raw_head({"method": "GET", "path": "/", "headers": {"a": 1}}), SerializationError, "str"),
        (
            raw_head({"method": "GET", "path": "/", "headers": {"": "v"}}),
            SerializationError,
            "name",
        ),
        (
            raw_head({"method": "GET", "path": "/", "headers": {str(i): "" for i in range(65)}}),
            MessageTooLarge,
            f"limit of {MAX_HEADERS}",
        ),
        (
            raw_head({"method": "GET", "path": "/", "query": {str(i): "" for i in range(65)}}),
            MessageTooLarge,
            f"limit of {MAX_QUERY_PARAMS}",
        ),
        (raw_head({"method": "GET", "path": "/", "length": -1}), SerializationError, "negative"),
        (raw_head({"method": "GET", "path": "/", "length": "5"}), SerializationError, "length"),
        (raw_head({"method": "GET", "path": "/", "length": 1.5}), SerializationError, "length"),
        (raw_head({"method": "GET", "path": "/", "length": 2**64 - 1}), SerializationError, "63"),
        (raw_head({"method": "GET", "path": "/", 1: 2}), SerializationError, "msgpack"),
        (
            raw_head({"method": "GET", "path": "/", "length": 3}) + b"\x05hello",
            ProtocolError,
            "longer than its declared",
        ),
        (
            raw_head({"method": "GET", "path": "/", "length": 9}) + b"\x05hello\x00",
            ProtocolError,
            "9 were declared",
        ),
        (
            raw_head({"method": "GET", "path": "/", "length": None})
            + encode_uvarint(MAX_FRAME_SIZE + 1),
            ProtocolError,
            "data frame",
        ),
    ],
)
def test_malformed_requests(wire: bytes, error: type[Exception], match: str) -> None:
    r = MessageReader("request")
    with pytest.raises(error, match=match):
        r.receive_data(wire)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"headers": {}}, "no status"),
        ({"status": 99}, "100-599"),
        ({"status": True}, "100-599"),
        ({"status": "200"}, "100-599"),
        ({"status": 600}, "100-599"),
    ],
)
def test_malformed_responses(obj: object, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        MessageReader("response").receive_data(raw_head(obj))


def test_truncated_messages_raise_on_eof() -> None:
    r = MessageReader("request")
    r.receive_data(encode_request_head("POST", "/", length=10)[:3])
    with pytest.raises(ConnectionClosed, match="before its head"):
        r.receive_eof()
    r = MessageReader("response")
    r.receive_data(encode_response_head(200, None, 10) + b"\x0aabc")
    with pytest.raises(ConnectionClosed, match="inside its body"):
        r.receive_eof()


def test_encoders_validate_like_the_reader() -> None:
    with pytest.raises(SerializationError):
        encode_request_head("get", "/")
    with pytest.raises(SerializationError):
        encode_request_head("GET", "nope")
    with pytest.raises(SerializationError):
        encode_response_head(42)
    with pytest.raises(MessageTooLarge):
        encode_request_head("GET", "/", headers={f"h{i}": "x" * 300 for i in range(60)})
    with pytest.raises(MessageTooLarge):
        encode_data_frame(b"")
    with pytest.raises(MessageTooLarge):
        encode_data_frame(bytes(MAX_FRAME_SIZE + 1))
    assert encode_body(b"") == END_FRAME
    with pytest.raises(SerializationError, match="cannot be encoded"):
        encode_request_head("GET", "/\ud800")
