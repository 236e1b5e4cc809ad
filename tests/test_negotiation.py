"""multistream-select: sans-IO cores and the asyncio adapters."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stack.errors import (
    MessageTooLarge,
    NegotiationFailed,
    P2PError,
    P2PTimeout,
    ProtocolError,
)
from stack.negotiation import (
    MAX_PROPOSALS,
    DialerNegotiation,
    ListenerNegotiation,
    ProtocolAgreed,
    ProtocolRejected,
    encode_line,
    handle_protocol,
    list_protocols,
    select_protocol,
    select_protocol_lazy,
)
from stack.pipe import memory_pipe
from stack.registry import ProtocolRegistry

HEADER = b"\x13/multistream/1.0.0\n"


def test_wire_bytes() -> None:
    assert encode_line("/multistream/1.0.0") == HEADER
    assert encode_line("na") == b"\x03na\n"
    d = DialerNegotiation(["/a"])
    assert d.data_to_send() == HEADER + b"\x03/a\n"


def _converse(dialer: DialerNegotiation, listener: ListenerNegotiation) -> list[object]:
    events: list[object] = []
    while not dialer.done:
        out = dialer.data_to_send()
        if out:
            events += listener.receive_data(out)
        back = listener.data_to_send()
        if not back:
            break
        events += dialer.receive_data(back)
    return events


def test_core_agree_after_na() -> None:
    d = DialerNegotiation(["/x", "/b"])
    listener = ListenerNegotiation({"/a", "/b"}.__contains__)
    events = _converse(d, listener)
    assert ProtocolRejected("/x") in events
    assert ProtocolAgreed("/b") in events
    assert d.done and listener.done


def test_core_no_common_protocol() -> None:
    d = DialerNegotiation(["/x", "/y"])
    listener = ListenerNegotiation({"/a"}.__contains__)
    with pytest.raises(NegotiationFailed, match="/x, /y"):
        _converse(d, listener)


def test_core_leftover_after_agreement() -> None:
    listener = ListenerNegotiation({"/a"}.__contains__)
    events = listener.receive_data(HEADER + encode_line("/a") + b"app-data")
    assert events == [ProtocolAgreed("/a", b"app-data")]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x13/multistream/2.0.0\n", NegotiationFailed),
        (b"\x05hello", ProtocolError),
        (HEADER + b"\x03\xff\xfe\n", ProtocolError),
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", P2PError),
        (b"\x81\x08" + b"a" * 1025, MessageTooLarge),
    ],
)
def test_core_rejects_garbage(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        ListenerNegotiation({"/a"}.__contains__).receive_data(data)


def test_core_limits_proposals() -> None:
    listener = ListenerNegotiation(lambda p: False)
    data = HEADER + b"".join(encode_line(f"/p{i}") for i in range(MAX_PROPOSALS + 1))
    with pytest.raises(NegotiationFailed, match="proposals"):
        listener.receive_data(data)


def test_invalid_protocol_ids_refused() -> None:
    for bad in ("", "a\nb", "/" + "x" * 2000):
        with pytest.raises(ProtocolError):
            DialerNegotiation([bad])


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_any_chunking_gives_same_result(cuts: list[int]) -> None:
    transcript = HEADER + encode_line("/nope") + encode_line("/b") + b"tail"
    listener = ListenerNegotiation({"/b"}.__contains__)
    events: list[object] = []
    pos = 0
    i = 0
    while pos < len(transcript) and not listener.done:
        n = cuts[i % len(cuts)]
        events += listener.receive_data(transcript[pos : pos + n])
        pos += n
        i += 1
    agreed = [e for e in events if isinstance(e, ProtocolAgreed)]
    assert len(agreed) == 1 and agreed[0].protocol == "/b"
    assert agreed[0].leftover + transcript[pos:] == b"tail"
    assert listener.data_to_send() == HEADER + b"\x03na\n" + encode_line("/b")


@given(st.binary(max_size=200))
def test_garbage_only_raises_p2p_errors(data: bytes) -> None:
    for core in (ListenerNegotiation({"/a"}.__contains__), DialerNegotiation(["/a"])):
        with contextlib.suppress(P2PError):
            core.receive_data(data)


@given(st.text(min_size=1, max_size=100).filter(lambda s: "\n" not in s))
def test_protocol_ids_round_trip(name: str) -> None:
    proto = "/" + name
    listener = ListenerNegotiation({proto}.__contains__)
    assert listener.receive_data(HEADER + encode_line(proto)) == [ProtocolAgreed(proto)]


def test_adapters_agree_list_and_fail() -> None:
    async def main() -> None:
        supported = {"/a", "/b"}
        a, b = memory_pipe()
        server = asyncio.ensure_future(
            handle_protocol(b, supported.__contains__, list_protocols=lambda: ["/a", "/b"])
        )
        assert await select_protocol(a, ["/z", "/b"]) == "/b"
        assert await server == "/b"

        a, b = memory_pipe()
        server = asyncio.ensure_future(
            handle_protocol(b, supported.__contains__, list_protocols=lambda: ["/a", "/b"])
        )
        assert await list_protocols(a) == ["/a", "/b"]
        server.cancel()

        a, b = memory_pipe()
        server = asyncio.ensure_future(handle_protocol(b, supported.__contains__))
        with pytest.raises(NegotiationFailed):
            await select_protocol(a, ["/x"])
        server.cancel()

    asyncio.run(main())


def test_lazy_dialer_data_reaches_handler_intact() -> None:
    async def main() -> None:
        from tests.test_node import nodes

        async with nodes() as (x, y):
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def handler(stream: object) -> None:
                from stack.stream import MuxedStream

                assert isinstance(stream, MuxedStream)
                await got.put(await stream.read_all())
                await stream.write(b"ok")

            y.handle("/lazy/1", handler)
            conn = await x.connect(y.full_addrs[0])
            raw = await conn.open_stream()
            s = await select_protocol_lazy(raw, "/lazy/1")
            await s.write(b"payload-before-answer")
            await s.close_write()
            assert await got.get() == b"payload-before-answer"
            assert await s.read_all() == b"ok"

            raw = await conn.open_stream()
            s = await select_protocol_lazy(raw, "/not-served/1")
            await s.write(b"wasted")
            with pytest.raises(NegotiationFailed):
                await s.read()

    asyncio.run(main())


def test_timeout_when_peer_never_answers() -> None:
    async def main() -> None:
        a, _b = memory_pipe()
        with pytest.raises(P2PTimeout):
            await select_protocol(a, ["/a"], timeout=0.05)
        a2, _b2 = memory_pipe()
        with pytest.raises(P2PTimeout):
            await handle_protocol(a2, lambda p: True, timeout=0.05)

    asyncio.run(main())


def test_registry() -> None:
    reg: ProtocolRegistry[str] = ProtocolRegistry()
    reg.register("/app/1.0.0", "h1", match=lambda p: p.startswith("/app/1."))
    reg.register("/other/1", "h2")
    assert reg.get("/app/1.0.0") == "h1"
    assert reg.get("/app/1.2.0") == "h1"
    assert "/app/2.0.0" not in reg
    assert reg.protocols() == ["/app/1.0.0", "/other/1"]
    reg.unregister("/app/1.0.0")
    assert reg.get("/app/1.2.0") is None
    from stack.errors import InvalidConfiguration

    for bad in ("", "noslash", "/a\nb"):
        with pytest.raises(InvalidConfiguration):
            reg.register(bad, "x")
