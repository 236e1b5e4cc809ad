"""multistream-select 1.0: sans-IO cores (exact wire bytes, limits, chunking) and adapters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import switchy.stack.negotiation as negotiation
from switchy.stack.errors import (
    ConnectionClosed,
    InvalidConfiguration,
    MessageTooLarge,
    NegotiationFailed,
    P2PError,
    P2PTimeout,
    ProtocolError,
    SerializationError,
)
from switchy.stack.negotiation import (
    MAX_LINE_LENGTH,
    MAX_PROPOSALS,
    MAX_PROTOCOL_ID_LENGTH,
    MULTISTREAM_HEADER,
    DialerNegotiation,
    ListenerNegotiation,
    NegotiationEvent,
    ProtocolAgreed,
    ProtocolRejected,
    ProtocolsListed,
    confirm_protocol,
    encode_line,
    handle_protocol,
    list_protocols,
    negotiation_pending,
    propose_lazily,
    select_protocol,
    select_protocol_lazy,
    validate_protocol_id,
)
from switchy.stack.pipe import MemoryConnection, memory_pipe
from switchy.stack.registry import ProtocolRegistry
from switchy.stack.stream import Connection

HEADER = b"\x13/multistream/1.0.0\n"
NA = b"\x03na\n"
LS = b"\x03ls\n"


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` in a fresh loop with a safety bound (tests never rely on it)."""

    async def bounded() -> None:
        async with asyncio.timeout(20):
            await main()

    asyncio.run(bounded())


# --- wire bytes ---------------------------------------------------------------------------


def test_exact_wire_bytes() -> None:
    assert MULTISTREAM_HEADER == HEADER == encode_line("/multistream/1.0.0")
    assert encode_line("na") == NA == bytes.fromhex("036e610a")  # spec README
    assert encode_line("ls") == LS == bytes.fromhex("036c730a")  # spec README
    assert encode_line("/echo/1.0") == bytes.fromhex("0a2f6563686f2f312e300a")  # multistream README
    assert DialerNegotiation(["/ipfs/ping/1.0.0"]).data_to_send() == (
        HEADER + b"\x11/ipfs/ping/1.0.0\n"
    )
    assert DialerNegotiation([], list_only=True).data_to_send() == HEADER + LS


def test_two_byte_length_prefix() -> None:
    proto = "/" + "x" * 199  # 200 bytes + newline = 201 = 0xc9 0x01
    line = encode_line(proto)
    assert line[:2] == b"\xc9\x01" and len(line) == 203
    listener = ListenerNegotiation({proto})
    assert listener.receive_data(HEADER + line) == [ProtocolAgreed(proto)]
    assert listener.data_to_send() == HEADER + line


def test_listener_transcript_na_then_agree() -> None:
    listener = ListenerNegotiation({"/a", "/b"})
    events = listener.receive_data(HEADER + encode_line("/x") + encode_line("/b"))
    assert events == [ProtocolRejected("/x"), ProtocolAgreed("/b")]
    assert listener.data_to_send() == HEADER + NA + b"\x03/b\n"
    assert listener.done and listener.agreed == "/b" and listener.rejected == ["/x"]
    assert listener.max_read() == 0


def test_dialer_transcript_na_then_agree() -> None:
    d = DialerNegotiation(["/x", "/b"])
    assert d.data_to_send() == HEADER + b"\x03/x\n"
    assert d.receive_data(HEADER + NA) == [ProtocolRejected("/x")]
    assert d.proposed == "/b"
    assert d.data_to_send() == b"\x03/b\n"  # the next proposal, without a header
    assert d.receive_data(b"\x03/b\n") == [ProtocolAgreed("/b")]
    assert d.done and d.agreed == "/b" and d.proposed is None and d.max_read() == 0


def test_ls_exact_bytes_and_round_trip() -> None:
    listener = ListenerNegotiation({"/a"}.__contains__, lambda: ["/a", "/bc"])
    assert listener.receive_data(HEADER + LS) == []
    body = b"\x03/a\n" + b"\x04/bc\n" + b"\n"
    answer = listener.data_to_send()
    assert answer == HEADER + bytes([len(body)]) + body
    d = DialerNegotiation([], list_only=True)
    assert d.receive_data(answer) == [ProtocolsListed(["/a", "/bc"])]
    # After ls the listener still takes proposals.
    assert listener.receive_data(encode_line("/a")) == [ProtocolAgreed("/a")]


def test_ls_of_nothing_and_default_listing() -> None:
    assert DialerNegotiation([], list_only=True).receive_data(HEADER + b"\x01\n") == [
        ProtocolsListed([])
    ]
    listener = ListenerNegotiation(["/one", "/two"])  # a container lists itself
    listener.receive_data(HEADER + LS)
    listed = DialerNegotiation([], list_only=True).receive_data(listener.data_to_send())
    assert listed == [ProtocolsListed(["/one", "/two"])]
    assert ListenerNegotiation(lambda p: False).receive_data(HEADER + LS) == []


def test_ls_refused_with_na() -> None:
    # go-multistream >= 0.5 dropped ls and answers it like an unknown protocol.
    with pytest.raises(NegotiationFailed, match="does not support ls"):
        DialerNegotiation([], list_only=True).receive_data(HEADER + NA)


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (b"\x05/a\n", ProtocolError, "claims 5 bytes"),
        (b"\x03/a\n\x80", SerializationError, "inside the length"),
        (b"\x02/a", ProtocolError, "newline"),
        (b"\x03\xff\xfe\n", SerializationError, "UTF-8"),
        (b"\x00", ProtocolError, "claims 0 bytes"),
        (b"\x05/a\nb\n\n", ProtocolError, "contains a newline"),
    ],
)
def test_malformed_ls_answers(payload: bytes, error: type[Exception], match: str) -> None:
    message = bytes([len(payload) + 1]) + payload + b"\n"
    with pytest.raises(error, match=match):
        DialerNegotiation([], list_only=True).receive_data(HEADER + message)


def test_leftover_after_agreement_is_reported() -> None:
    listener = ListenerNegotiation({"/a"})
    events = listener.receive_data(HEADER + encode_line("/a") + b"app-data")
    assert events == [ProtocolAgreed("/a", b"app-data")]
    d = DialerNegotiation(["/a"])
    assert d.receive_data(HEADER + encode_line("/a") + b"hello") == [ProtocolAgreed("/a", b"hello")]


def test_dialer_failures() -> None:
    d = DialerNegotiation(["/x", "/y"])
    with pytest.raises(NegotiationFailed, match=r"no protocol in common: tried \['/x', '/y'\]"):
        d.receive_data(HEADER + NA + NA)
    with pytest.raises(NegotiationFailed):  # the error is sticky
        d.receive_data(b"")
    lazy = DialerNegotiation(["/x"], lazy=True)
    with pytest.raises(NegotiationFailed, match="refused the optimistically proposed"):
        lazy.receive_data(HEADER + NA)
    with pytest.raises(NegotiationFailed, match=r"does not speak /multistream/1\.0\.0"):
        DialerNegotiation(["/x"]).receive_data(b"\x13/multistream/2.0.0\n")
    with pytest.raises(ProtocolError, match=r"answered b'/other\\n' to the proposal '/x'"):
        DialerNegotiation(["/x"]).receive_data(HEADER + encode_line("/other"))
    done = DialerNegotiation(["/x"])
    done.receive_data(HEADER + encode_line("/x"))
    with pytest.raises(ProtocolError, match="already finished"):
        done.receive_data(b"more")


def test_dialer_refuses_bad_configuration() -> None:
    with pytest.raises(InvalidConfiguration, match="no protocols"):
        DialerNegotiation([])
    with pytest.raises(InvalidConfiguration, match="exactly one"):
        DialerNegotiation(["/a", "/b"], lazy=True)
    with pytest.raises(InvalidConfiguration, match="not one string"):
        DialerNegotiation("/abc")


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"\x13/multistream/2.0.0\n", NegotiationFailed, "does not speak"),
        (HEADER + b"\x05hello", ProtocolError, "does not end in a newline"),
        (HEADER + b"\x03\xff\xfe\n", SerializationError, "not UTF-8"),
        (HEADER + b"\xff" * 10, SerializationError, "length prefix"),
        (HEADER + b"\x83\x00", SerializationError, "minimally"),
        (
            HEADER + b"\x81\x08" + b"a" * 1025,
            MessageTooLarge,
            "1025 bytes exceeds the limit of 1024",
        ),
        (HEADER + b"\x00", ProtocolError, "empty negotiation message"),
        (b"GET / HTTP/1.1", NegotiationFailed, "first bytes were b'G"),
    ],
)
def test_listener_rejects_garbage(data: bytes, error: type[Exception], match: str) -> None:
    listener = ListenerNegotiation({"/a"})
    with pytest.raises(error, match=match):
        listener.receive_data(data)
    with pytest.raises(error):  # sticky
        listener.receive_data(b"")


def test_oversized_message_refused_from_its_prefix() -> None:
    # The limit applies as soon as the length is known, before the body arrives.
    with pytest.raises(MessageTooLarge):
        ListenerNegotiation({"/a"}).receive_data(HEADER + b"\x81\x08")
    largest = "/" + "x" * (MAX_PROTOCOL_ID_LENGTH - 1)
    assert len(encode_line(largest)) == 2 + MAX_LINE_LENGTH
    assert ListenerNegotiation({largest}).receive_data(HEADER + encode_line(largest)) == [
        ProtocolAgreed(largest)
    ]


def test_listener_limits_proposals() -> None:
    listener = ListenerNegotiation(lambda p: False)
    data = HEADER + b"".join(encode_line(f"/p{i}") for i in range(MAX_PROPOSALS))
    assert len(listener.receive_data(data)) == MAX_PROPOSALS
    with pytest.raises(NegotiationFailed, match=f"more than {MAX_PROPOSALS} proposals"):
        listener.receive_data(LS)  # ls counts too


def test_listener_never_accepts_commands_or_newlines() -> None:
    listener = ListenerNegotiation(lambda p: True)
    events = listener.receive_data(HEADER + NA + b"\x05/a\nb\n" + encode_line("/ok"))
    assert events == [ProtocolRejected("na"), ProtocolRejected("/a\nb"), ProtocolAgreed("/ok")]


def test_listener_accepts_predicate_set_and_registry() -> None:
    registry: ProtocolRegistry[int] = ProtocolRegistry()
    registry.register("/r/1.0.0", 1, match=lambda p: p.startswith("/r/1."))
    for supported in ({"/r/1.2.0"}, {"/r/1.2.0"}.__contains__, registry):
        listener = ListenerNegotiation(supported)
        assert listener.receive_data(HEADER + encode_line("/r/1.2.0")) == [
            ProtocolAgreed("/r/1.2.0")
        ]
    listener = ListenerNegotiation(registry)
    listener.receive_data(HEADER + LS)
    listed = DialerNegotiation([], list_only=True).receive_data(listener.data_to_send())
    assert listed == [ProtocolsListed(["/r/1.0.0"])]


def test_validate_protocol_id() -> None:
    assert validate_protocol_id("/a/1.0.0") == b"/a/1.0.0"
    assert validate_protocol_id("é" * 511 + "/") == ("é" * 511 + "/").encode()  # 1023 bytes
    for bad in ("", "a\nb", "na", "ls", "\ud800", "é" * 512, "/" + "x" * 1023):
        with pytest.raises(InvalidConfiguration):
            validate_protocol_id(bad)
    with pytest.raises(InvalidConfiguration):
        validate_protocol_id(b"/bytes")  # type: ignore[arg-type]


# --- never reading past the negotiation ---------------------------------------------------


def _feed_respecting_max_read(
    core: DialerNegotiation | ListenerNegotiation, data: bytes, cuts: list[int]
) -> tuple[list[NegotiationEvent], int]:
    """Feed ``data`` the way the adapters read it: ``read(max_read())``, chunked by ``cuts``."""
    events: list[NegotiationEvent] = []
    pos = i = 0
    while not core.done and pos < len(data):
        n = min(core.max_read(), cuts[i % len(cuts)])
        assert n > 0
        events += core.receive_data(data[pos : pos + n])
        pos += n
        i += 1
    return events, pos


proto_ids = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\n"),
    min_size=1,
    max_size=300,
).map(lambda s: "/" + s)
small_cuts = st.lists(st.integers(1, 64), min_size=1, max_size=20)


@given(st.lists(proto_ids, min_size=0, max_size=5), proto_ids, st.binary(max_size=50), small_cuts)
def test_listener_max_read_never_takes_application_data(
    refused: list[str], accepted: str, app: bytes, cuts: list[int]
) -> None:
    refused = [p for p in refused if p != accepted]
    transcript = HEADER + LS + b"".join(encode_line(p) for p in [*refused, accepted])
    listener = ListenerNegotiation({accepted})
    events, pos = _feed_respecting_max_read(listener, transcript + app, cuts)
    assert events[-1] == ProtocolAgreed(accepted)  # no leftover: nothing past the proposal
    assert pos == len(transcript)
    assert [e.protocol for e in events[:-1] if isinstance(e, ProtocolRejected)] == refused


@given(st.lists(proto_ids, min_size=1, max_size=5, unique=True), st.binary(max_size=50), small_cuts)
def test_dialer_max_read_never_takes_application_data(
    protocols: list[str], app: bytes, cuts: list[int]
) -> None:
    answers = HEADER + NA * (len(protocols) - 1) + encode_line(protocols[-1])
    dialer = DialerNegotiation(protocols)
    events, pos = _feed_respecting_max_read(dialer, answers + app, cuts)
    assert events[-1] == ProtocolAgreed(protocols[-1])
    assert pos == len(answers)


def _outcome(
    core: DialerNegotiation | ListenerNegotiation, data: bytes, cuts: list[int] | None
) -> tuple[object, bytes, int]:
    """What ``core`` makes of ``data`` read by ``max_read()`` (whole reads when ``cuts`` is
    None, the fast paths' way, else chunked by ``cuts``): events or error, output, bytes read."""
    out = bytearray(core.data_to_send())
    pos = i = 0
    events: list[NegotiationEvent] = []
    try:
        while not core.done and pos < len(data):
            n = core.max_read() if cuts is None else min(core.max_read(), cuts[i % len(cuts)])
            chunk = data[pos : pos + n]
            pos += len(chunk)
            events += core.receive_data(chunk)
            out += core.data_to_send()
            i += 1
    except P2PError as exc:
        return (type(exc), str(exc)), bytes(out), pos
    return events, bytes(out), pos


answer_messages = st.one_of(
    proto_ids.map(encode_line), st.just(NA), st.just(LS), st.binary(max_size=8)
)


@given(
    proto_ids,
    st.booleans(),
    st.lists(answer_messages, max_size=3),
    st.binary(max_size=20),
    small_cuts,
)
def test_listener_fast_path_agrees_with_the_parser(
    proposal: str, supported: bool, more: list[bytes], app: bytes, cuts: list[int]
) -> None:
    data = HEADER + encode_line(proposal) + b"".join(more) + app
    protocols = {proposal} if supported else {"/other"}
    fast = _outcome(ListenerNegotiation(protocols), data, None)
    slow = _outcome(ListenerNegotiation(protocols), data, [1])
    chunked = _outcome(ListenerNegotiation(protocols), data, cuts)
    assert fast == slow == chunked


@given(proto_ids, st.lists(answer_messages, max_size=3), st.binary(max_size=20), small_cuts)
def test_dialer_fast_path_agrees_with_the_parser(
    proposal: str, answers: list[bytes], app: bytes, cuts: list[int]
) -> None:
    if len(proposal.encode()) > MAX_PROTOCOL_ID_LENGTH:
        return
    for data in (HEADER + encode_line(proposal) + app, HEADER + b"".join(answers) + app):
        fast = _outcome(DialerNegotiation([proposal], lazy=True), data, None)
        slow = _outcome(DialerNegotiation([proposal], lazy=True), data, [1])
        chunked = _outcome(DialerNegotiation([proposal], lazy=True), data, cuts)
        assert fast[:2] == slow[:2] == chunked[:2]
        if isinstance(fast[0], list):  # agreed: nothing read past the answer
            assert fast[2] == slow[2] == chunked[2]
        # (refused: the first read may take a byte or so past the ``na``; with one
        # proposal only negotiation follows, and the negotiation failed)


def test_fast_paths_take_the_common_case_in_two_reads() -> None:
    line = encode_line("/bench/noop/1.0.0")
    dialer = DialerNegotiation(["/bench/noop/1.0.0"], lazy=True)
    assert dialer.data_to_send() == HEADER + line
    assert dialer.max_read() == len(HEADER + line)  # the whole agreeing answer at once
    assert dialer.receive_data(HEADER + line) == [ProtocolAgreed("/bench/noop/1.0.0")]
    assert dialer.done and dialer.max_read() == 0
    listener = ListenerNegotiation({"/bench/noop/1.0.0"})
    assert listener.max_read() == len(HEADER) + 1
    assert listener.receive_data(HEADER + line[:1]) == []
    assert listener.mid_message and listener.max_read() == len(line) - 1
    assert listener.receive_data(line[1:]) == [ProtocolAgreed("/bench/noop/1.0.0")]
    assert listener.data_to_send() == HEADER + line


def _feed_chunked(
    core: DialerNegotiation | ListenerNegotiation, data: bytes, cuts: list[int]
) -> tuple[list[NegotiationEvent], bytes]:
    events: list[NegotiationEvent] = []
    out = bytearray()
    pos = i = 0
    while pos < len(data) and not core.done:
        n = cuts[i % len(cuts)]
        events += core.receive_data(data[pos : pos + n])
        out += core.data_to_send()
        pos += n
        i += 1
    return events, bytes(out)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.binary(max_size=30))
def test_any_chunking_gives_the_same_result(cuts: list[int], app: bytes) -> None:
    transcript = HEADER + LS + encode_line("/nope") + encode_line("/b")
    whole = ListenerNegotiation({"/b"})
    expected_events = whole.receive_data(transcript + app)
    expected_out = whole.data_to_send()
    listener = ListenerNegotiation({"/b"})
    events, out = _feed_chunked(listener, transcript + app, cuts)
    assert out == expected_out
    assert events[:-1] == expected_events[:-1] == [ProtocolRejected("/nope")]
    last = events[-1]
    assert isinstance(last, ProtocolAgreed) and last.protocol == "/b"
    assert app.startswith(last.leftover)  # the rest of the chunk that completed the proposal

    dialer = DialerNegotiation(["/nope", "/b"])
    d_events, d_out = _feed_chunked(dialer, HEADER + NA + encode_line("/b") + app, cuts)
    assert d_events[:-1] == [ProtocolRejected("/nope")]
    assert d_out == HEADER + encode_line("/nope") + encode_line("/b")
    assert isinstance(d_events[-1], ProtocolAgreed) and app.startswith(d_events[-1].leftover)


@given(st.binary(max_size=300), st.booleans())
def test_garbage_only_raises_p2p_errors(data: bytes, with_header: bool) -> None:
    if with_header:
        data = HEADER + data
    cores: list[DialerNegotiation | ListenerNegotiation] = [
        ListenerNegotiation({"/a"}),
        DialerNegotiation(["/a", "/b"]),
        DialerNegotiation([], list_only=True),
    ]
    for core in cores:
        with contextlib.suppress(P2PError):
            core.receive_data(data)
            core.max_read()
            core.data_to_send()


@given(proto_ids)
def test_protocol_ids_round_trip(proto: str) -> None:
    if len(proto.encode()) > MAX_PROTOCOL_ID_LENGTH:
        with pytest.raises(InvalidConfiguration):
            DialerNegotiation([proto])
        return
    dialer = DialerNegotiation(["/other", proto])
    listener = ListenerNegotiation({proto}, lambda: [proto])
    events = listener.receive_data(dialer.data_to_send())
    assert events == [ProtocolRejected("/other")]
    assert dialer.receive_data(listener.data_to_send()) == [ProtocolRejected("/other")]
    assert listener.receive_data(dialer.data_to_send()) == [ProtocolAgreed(proto)]
    assert dialer.receive_data(listener.data_to_send()) == [ProtocolAgreed(proto)]
    lister = DialerNegotiation([], list_only=True)
    ls_listener = ListenerNegotiation({proto}, lambda: [proto, "/second"])
    ls_listener.receive_data(lister.data_to_send())
    assert lister.receive_data(ls_listener.data_to_send()) == [ProtocolsListed([proto, "/second"])]


# --- adapters over memory pipes -----------------------------------------------------------


class Recording(Connection):
    """Forwards to a memory connection and records each read size asked and write made."""

    def __init__(self, inner: MemoryConnection) -> None:
        self.inner = inner
        self.local_addr = inner.local_addr
        self.remote_addr = inner.remote_addr
        self.asked: list[int] = []
        self.writes: list[bytes] = []

    async def read(self, max_bytes: int = -1) -> bytes:
        self.asked.append(max_bytes)
        return await self.inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.write(data)

    async def close_write(self) -> None:
        await self.inner.close_write()

    async def reset(self) -> None:
        await self.inner.reset()

    async def close(self) -> None:
        await self.inner.close()


def test_adapters_agree_after_na_and_streams_stay_clean() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        server = asyncio.ensure_future(handle_protocol(b, {"/a", "/b"}))
        assert await select_protocol(a, ["/z", "/b"]) == "/b"
        assert await server == "/b"
        await a.write(b"ping")
        assert await b.read_exactly(4) == b"ping"
        await b.write(b"pong")
        assert await a.read_exactly(4) == b"pong"

    run(main)


def test_listener_answers_in_one_write_and_reads_exactly() -> None:
    async def main() -> None:
        a, raw_b = memory_pipe()
        b = Recording(raw_b)
        await a.write(HEADER + encode_line("/b") + b"application bytes")
        assert await handle_protocol(b, {"/b"}) == "/b"
        assert b.writes == [HEADER + encode_line("/b")]  # header and echo together
        assert b.asked == [21, 3]  # header + the proposal's length, then the proposal
        assert await b.read_exactly(17) == b"application bytes"

    run(main)


def test_listener_sends_header_first_to_a_waiting_dialer() -> None:
    async def main() -> None:
        raw_a, raw_b = memory_pipe()
        b = Recording(raw_b)
        server = asyncio.ensure_future(handle_protocol(b, {"/b"}))
        await raw_a.write(HEADER)  # a strictly sequential dialer waits for the header
        assert await raw_a.read_exactly(20) == HEADER
        await raw_a.write(encode_line("/b"))
        assert await raw_a.read_exactly(4) == b"\x03/b\n"
        assert await server == "/b"
        assert b.writes == [HEADER, b"\x03/b\n"]

    run(main)


def test_dialer_reads_exactly_the_answers() -> None:
    async def main() -> None:
        raw_a, b = memory_pipe()
        a = Recording(raw_a)
        await b.write(HEADER + NA + encode_line("/second/1") + b"server speaks first")
        assert await select_protocol(a, ["/first/1", "/second/1"]) == "/second/1"
        assert await a.read() == b"server speaks first"
        assert await b.read_exactly(len(HEADER) + 10 + 11) == (
            HEADER + encode_line("/first/1") + encode_line("/second/1")
        )

    run(main)


def test_no_protocol_in_common_fails_on_both_sides() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        server = asyncio.ensure_future(handle_protocol(b, {"/a"}))
        with pytest.raises(NegotiationFailed, match=r"tried \['/x', '/y'\]"):
            await select_protocol(a, ["/x", "/y"])
        await a.close()  # the caller closes on failure
        with pytest.raises(NegotiationFailed, match=r"refused \['/x', '/y'\]"):
            await server

    run(main)


def test_listener_reports_a_reset_after_refusal_as_negotiation_failure() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        server = asyncio.ensure_future(handle_protocol(b, {"/a"}))
        with pytest.raises(NegotiationFailed):
            await select_protocol(a, ["/x"], lazy=False)
        await a.reset()
        with pytest.raises(NegotiationFailed):
            await server

    run(main)


def test_stream_ending_before_any_answer() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await b.close_write()
        with pytest.raises(ConnectionClosed, match="dialer"):
            await select_protocol(a, ["/x", "/y"])
        a, b = memory_pipe()
        await a.write(HEADER)
        await a.close_write()
        with pytest.raises(ConnectionClosed, match="listener"):
            await handle_protocol(b, {"/a"})

    run(main)


def test_ls_over_a_pipe_in_registration_order() -> None:
    async def main() -> None:
        registry: ProtocolRegistry[str] = ProtocolRegistry()
        for p in ("/z/1", "/a/1", "/m/1"):
            registry.register(p, p)
        a, b = memory_pipe()
        server = asyncio.ensure_future(
            handle_protocol(b, registry.__contains__, list_protocols=registry.protocols)
        )
        assert await list_protocols(a) == ["/z/1", "/a/1", "/m/1"]
        await a.close()
        with pytest.raises(ConnectionClosed):
            await server

    run(main)


def test_garbage_from_the_dialer_fails_the_listener() -> None:
    async def main() -> None:
        for data, error in [
            (HEADER + b"\x05/abcd", ProtocolError),
            (b"GET / HTTP/1.1\r\n\r\n", NegotiationFailed),
            (HEADER + b"\xff" * 12, SerializationError),
            (HEADER + b"\x90\x20", MessageTooLarge),
        ]:
            a, b = memory_pipe()
            await a.write(data)
            with pytest.raises(error):
                await handle_protocol(b, {"/a"})

    run(main)


def test_timeouts_when_the_peer_never_answers() -> None:
    async def main() -> None:
        a, _b = memory_pipe()
        with pytest.raises(P2PTimeout, match=r"timed out after 0\.02s"):
            await select_protocol(a, ["/a", "/b"], timeout=0.02)
        a, _b = memory_pipe()
        with pytest.raises(P2PTimeout):
            await select_protocol(a, ["/a"], lazy=False, timeout=0.02)
        a, _b = memory_pipe()
        with pytest.raises(P2PTimeout):
            await handle_protocol(a, {"/a"}, timeout=0.02)
        a, _b = memory_pipe()
        with pytest.raises(P2PTimeout):
            await list_protocols(a, timeout=0.02)
        a, _b = memory_pipe()
        await select_protocol(a, ["/a"])  # lazy: returns at once, nothing to wait for
        with pytest.raises(P2PTimeout):
            await confirm_protocol(a, timeout=0.02)
        assert negotiation_pending(a)  # the timeout lost nothing; the check can resume

    run(main)


# --- optimistic (lazy) selection ----------------------------------------------------------


def test_lazy_selection_sends_data_before_the_answer() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        # Nothing listens yet: the lazy dialer must not wait.
        assert await select_protocol(a, ["/echo/1"]) == "/echo/1"
        assert negotiation_pending(a)
        await a.write(b"request")
        await a.close_write()

        async def handler() -> None:
            protocol = await handle_protocol(b, {"/echo/1"})
            assert protocol == "/echo/1"
            assert await b.read_all() == b"request"  # intact, nothing swallowed
            await b.write(b"response")
            await b.close_write()

        server = asyncio.ensure_future(handler())
        assert await a.read_all() == b"response"
        assert not negotiation_pending(a)
        assert "read" not in vars(a)  # the class's own read method again
        await server

    run(main)


def test_lazy_refusal_raises_on_first_read_and_stays_failed() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await select_protocol(a, ["/not-served/1"])
        await a.write(b"\x05wasted")  # the listener takes this for a proposal
        server = asyncio.ensure_future(handle_protocol(b, {"/served/1"}))
        with pytest.raises(NegotiationFailed, match="'/not-served/1'"):
            await a.read()
        with pytest.raises(NegotiationFailed):
            await a.read_exactly(3)
        with pytest.raises(ProtocolError):
            await server

    run(main)


def test_lazy_with_exact_reads_messages_and_iteration() -> None:
    async def main() -> None:
        for reader in ("read_exactly", "recv_message", "iterate"):
            a, b = memory_pipe()
            await select_protocol(a, ["/p"])
            await b.write(HEADER + encode_line("/p") + b"\x05hello")
            await b.close_write()
            if reader == "read_exactly":
                assert await a.read_exactly(6) == b"\x05hello"
            elif reader == "recv_message":
                assert await a.recv_message() == b"hello"
            else:
                assert b"".join([chunk async for chunk in a]) == b"\x05hello"

    run(main)


def test_lazy_concurrent_first_reads_check_once() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await select_protocol(a, ["/p"])
        readers = [asyncio.ensure_future(a.read_exactly(3)) for _ in range(3)]
        await b.write(HEADER)
        await b.write(encode_line("/p") + b"abcdefghi")
        got = await asyncio.gather(*readers)
        assert sorted(got) == [b"abc", b"def", b"ghi"]

    run(main)


def test_lazy_check_survives_cancellation() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await select_protocol(a, ["/p"])
        await b.write(HEADER + b"\x03/")  # part of the echo only
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await a.read()
        await b.write(b"p\ndata")
        assert await a.read() == b"data"

    run(main)


def test_nested_optimistic_proposals_are_checked_in_order() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await select_protocol(a, ["/outer"])
        await select_protocol(a, ["/inner"])
        await b.write(HEADER + encode_line("/outer") + HEADER + encode_line("/inner") + b"x")
        assert await a.read() == b"x"
        assert not negotiation_pending(a)

    run(main)


def test_confirm_protocol() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await confirm_protocol(a)  # nothing pending: no-op
        await select_protocol(a, ["/p"])
        await b.write(HEADER + NA)
        with pytest.raises(NegotiationFailed):
            await confirm_protocol(a)

    run(main)


def test_lazy_falls_back_to_waiting_without_instance_attributes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(negotiation, "_supports_lazy", lambda stream: False)

    async def main() -> None:
        a, b = memory_pipe()
        server = asyncio.ensure_future(handle_protocol(b, {"/p"}))
        assert await select_protocol(a, ["/p"]) == "/p"
        assert await server == "/p"
        assert not negotiation_pending(a)

    run(main)


def test_lazy_helpers_return_the_same_object() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        assert await propose_lazily(a, "/sec/1") is a
        await b.write(HEADER + encode_line("/sec/1") + b"!")
        assert await a.read() == b"!"

    run(main)


# --- real stacks --------------------------------------------------------------------------


def test_over_real_tcp() -> None:
    from multiaddr import Multiaddr

    from switchy.transports.tcp import TcpTransport

    async def main() -> None:
        transport = TcpTransport()
        served: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_conn(conn: Any) -> None:
            protocol = await handle_protocol(conn, {"/tcp-test/1"}, timeout=5)
            await conn.write(protocol.encode())
            await served.put(await conn.read_all())
            await conn.close()

        listener = await transport.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), on_conn)
        conn: Any = await transport.dial(listener.addrs[0])
        await select_protocol(conn, ["/tcp-test/1"])
        await conn.write(b"x" * 100_000)
        await conn.close_write()
        assert await conn.read_all() == b"/tcp-test/1"
        assert await served.get() == b"x" * 100_000
        await conn.close()
        await listener.close()

    run(main)


def test_lazy_stream_through_nodes() -> None:
    from switchy.stack.stream import MuxedStream
    from tests.test_node import nodes

    async def main() -> None:
        async with nodes() as (x, y):
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def handler(stream: MuxedStream) -> None:
                await got.put(await stream.read_all())
                await stream.write(b"ok")

            y.handle("/lazy/1", handler)
            conn = await x.connect(y.full_addrs[0])
            raw = await conn.open_stream()
            s = await select_protocol_lazy(raw, "/lazy/1")
            assert s is raw and s.protocol == "/lazy/1"
            await s.write(b"payload-before-answer")
            await s.close_write()
            assert await got.get() == b"payload-before-answer"
            assert await s.read_all() == b"ok"

            refused = await conn.open_stream()
            await select_protocol(refused, ["/not-served/1"])
            await refused.write(b"wasted")
            with pytest.raises(NegotiationFailed):
                await refused.read()
            await refused.reset()

    run(main)


class Buffered(Connection):
    """A stream whose bytes are all received already: ``read_nowait`` gives them and
    ``read`` (waiting) fails the test, so a listener that waits is caught."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.writes: list[bytes] = []
        self.ended = False

    def read_nowait(self, max_bytes: int = -1) -> bytes | None:
        if not self.data:
            return b"" if self.ended else None
        n = len(self.data) if max_bytes < 0 else max_bytes
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    async def read(self, max_bytes: int = -1) -> bytes:
        out = self.read_nowait(max_bytes)
        if out is None:
            raise AssertionError("the listener waited for bytes it did not need")
        return out

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    async def close_write(self) -> None:
        pass

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


def test_listener_negotiates_from_buffered_bytes_without_waiting() -> None:
    async def main() -> None:
        s = Buffered(HEADER + encode_line("/x/1") + b"app data")
        assert await handle_protocol(s, {"/x/1"}) == "/x/1"
        assert s.writes == [HEADER + encode_line("/x/1")]  # header and echo in one write
        assert bytes(s.data) == b"app data"  # nothing after the proposal was taken

    run(main)


def test_listener_goes_on_waiting_when_the_buffered_bytes_do_not_finish() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await a.write(HEADER + encode_line("/no/1"))  # refused: the dialer must hear na
        server = asyncio.ensure_future(handle_protocol(b, {"/x/1"}))
        assert await a.read_exactly(len(HEADER) + len(NA)) == HEADER + NA
        await a.write(encode_line("/x/1"))
        assert await a.read_exactly(len(encode_line("/x/1"))) == encode_line("/x/1")
        assert await server == "/x/1"

    run(main)


def test_a_buffered_end_is_reported_by_the_waiting_path() -> None:
    async def main() -> None:
        s = Buffered(HEADER)
        s.ended = True
        with pytest.raises(ConnectionClosed, match="multistream-select"):
            await handle_protocol(s, {"/x/1"})
        assert s.writes == [HEADER]  # the dialer was told our header before the end

    run(main)


def test_lazy_proposal_hides_read_nowait_until_the_answer_is_read() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await select_protocol(a, ["/x/1"])
        assert await handle_protocol(b, {"/x/1"}) == "/x/1"
        assert a.read_nowait() is None  # the answer is unread: read() must check it
        await b.write(b"data")
        assert await a.read() == b"data"
        assert "read_nowait" not in vars(a)

    run(main)
