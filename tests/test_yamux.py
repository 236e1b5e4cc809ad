"""yamux: the sans-IO session and the asyncio adapter over an in-memory secured pipe."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    ConnectionClosed,
    P2PError,
    ProtocolError,
    StreamRefused,
    StreamReset,
)
from switchy.stack.identity import KeyPair
from switchy.stack.mux.yamux import Yamux, YamuxConnection, YamuxStream
from switchy.stack.mux.yamux_core import (
    FLAG_SYN,
    HEADER,
    INITIAL_WINDOW,
    TYPE_DATA,
    DataReceived,
    GoAwayReceived,
    PongReceived,
    StreamEnded,
    StreamOpened,
    YamuxSession,
)
from switchy.stack.mux.yamux_core import (
    StreamReset as ResetEvent,
)
from switchy.stack.pipe import memory_pipe
from switchy.stack.stream import MuxedStream


def frame(type_: int, flags: int, sid: int, length: int, body: bytes = b"") -> bytes:
    return HEADER.pack(0, type_, flags, sid, length) + body


def pair() -> tuple[YamuxSession, YamuxSession]:
    return YamuxSession(True), YamuxSession(False)


def pump(a: YamuxSession, b: YamuxSession) -> tuple[list[object], list[object]]:
    ea: list[object] = []
    eb: list[object] = []
    while a.has_output() or b.has_output():
        eb += b.receive_data(a.data_to_send())
        ea += a.receive_data(b.data_to_send())
    return ea, eb


def test_open_send_fin_and_ack() -> None:
    a, b = pair()
    sid = a.open_stream()
    assert sid == 1
    assert a.send_data(sid, b"hello") == 5
    a.close_stream(sid)
    _, eb = pump(a, b)
    assert eb == [StreamOpened(1), DataReceived(1, b"hello"), StreamEnded(1)]
    assert a.unacked_outbound == 1  # not acknowledged until accepted
    b.accept_stream(1)
    pump(a, b)
    assert a.unacked_outbound == 0
    assert b.open_stream() == 2


def test_window_limits_and_updates() -> None:
    a, b = pair()
    sid = a.open_stream()
    pump(a, b)
    big = b"x" * (INITIAL_WINDOW + 1000)
    sent = 0
    while sent < len(big):
        n = a.send_data(sid, big[sent:])
        if n == 0:
            break
        sent += n
    assert sent == INITIAL_WINDOW
    _, eb = pump(a, b)
    got = sum(len(e.data) for e in eb if isinstance(e, DataReceived))
    assert got == INITIAL_WINDOW
    b.consume(sid, got, now=0.0)  # fast reader: window grows
    pump(a, b)
    assert a.send_window(sid) > INITIAL_WINDOW


def test_slow_reader_does_not_grow_window() -> None:
    a, b = pair()
    sid = a.open_stream()
    pump(a, b)
    half = INITIAL_WINDOW // 2
    queued = 0
    while queued < half:
        queued += a.send_data(sid, b"x" * (half - queued))
    _, eb = pump(a, b)
    assert sum(len(e.data) for e in eb if isinstance(e, DataReceived)) == half
    b.consume(sid, half, now=10.0)  # long after the stream opened
    pump(a, b)
    assert a.send_window(sid) == INITIAL_WINDOW


def test_data_beyond_window_is_a_protocol_error() -> None:
    _, b = pair()
    b.receive_data(frame(1, FLAG_SYN, 1, 0))
    with pytest.raises(ProtocolError, match="window"):
        b.receive_data(frame(TYPE_DATA, 0, 1, INITIAL_WINDOW + 1, b"x" * (INITIAL_WINDOW + 1)))
    assert b.terminated
    out = b.data_to_send()
    types = [out[i + 1] for i in range(0, len(out), 12)]
    assert types[-1] == 3  # a GoAway frame went out


def test_oversized_header_rejected_before_body_arrives() -> None:
    _, b = pair()
    with pytest.raises(ProtocolError):
        b.receive_data(frame(TYPE_DATA, FLAG_SYN, 1, 1 << 30))


@pytest.mark.parametrize(
    "data",
    [
        HEADER.pack(1, 0, 0, 1, 0),  # bad version
        HEADER.pack(0, 9, 0, 1, 0),  # bad type
        HEADER.pack(0, 1, FLAG_SYN, 2, 0),  # wrong parity for a dialer's stream
        HEADER.pack(0, 2, FLAG_SYN, 5, 0),  # ping on a stream
        HEADER.pack(0, 1, 0, 0, 0),  # window update on stream 0
    ],
)
def test_protocol_violations(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        YamuxSession(False).receive_data(data)


def test_ping_go_away_reset_and_limits() -> None:
    a, b = pair()
    opaque = a.ping()
    ea, _ = pump(a, b)
    assert ea == [PongReceived(opaque)]
    sid = a.open_stream()
    a.reset_stream(sid)
    _, eb = pump(a, b)
    assert ResetEvent(sid) in eb
    b.go_away()
    ea, _ = pump(a, b)
    assert GoAwayReceived(0) in ea
    with pytest.raises(ConnectionClosed):
        a.open_stream()
    small = YamuxSession(False, max_streams=1)
    small.receive_data(frame(1, FLAG_SYN, 1, 0) + frame(1, FLAG_SYN, 3, 0))
    assert small.stream_ids() == [1]


def test_a_reset_before_the_ack_is_a_refusal_and_after_it_is_not() -> None:
    """The RST of a stream we opened that the peer never acknowledged means it refused
    our SYN (``refused``); a RST after the ACK, or of the peer's own stream, does not."""
    a, b = pair()
    small = YamuxSession(False, max_streams=0)  # refuses every SYN
    sid = a.open_stream()
    assert small.receive_data(a.data_to_send()) == [ResetEvent(sid, by_us=True)]
    assert a.receive_data(small.data_to_send()) == [ResetEvent(sid, refused=True)]
    assert a.unacked_outbound == 0
    accepted = a.open_stream()
    pump(a, b)
    b.accept_stream(accepted)
    pump(a, b)  # the ACK arrived
    b.reset_stream(accepted)
    ea, _ = pump(a, b)
    assert ea == [ResetEvent(accepted, refused=False)]
    theirs = b.open_stream()
    pump(a, b)
    b.reset_stream(theirs)
    ea, _ = pump(a, b)
    assert ea == [ResetEvent(theirs, refused=False)]


@given(st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_any_chunking_gives_same_events(cuts: list[int]) -> None:
    a = YamuxSession(True)
    sids = [a.open_stream() for _ in range(3)]
    for i, sid in enumerate(sids):
        a.send_data(sid, bytes([i]) * (i * 40 + 1))
        a.close_stream(sid)
    a.ping()
    wire = a.data_to_send()
    whole = YamuxSession(False).receive_data(wire)
    b = YamuxSession(False)
    events: list[object] = []
    pos = 0
    i = 0
    while pos < len(wire):
        n = cuts[i % len(cuts)]
        events += b.receive_data(wire[pos : pos + n])
        pos += n
        i += 1

    def merged(evs: Sequence[object]) -> list[object]:
        out: list[object] = []
        for e in evs:
            last = out[-1] if out else None
            if (
                isinstance(e, DataReceived)
                and isinstance(last, DataReceived)
                and last.stream_id == e.stream_id
            ):
                out[-1] = DataReceived(e.stream_id, last.data + e.data)
                continue
            out.append(e)
        return out

    assert merged(events) == merged(whole)


@given(st.binary(max_size=300))
def test_garbage_only_raises_p2p_errors(data: bytes) -> None:
    with contextlib.suppress(P2PError):
        YamuxSession(False).receive_data(data)


class SessionPair(RuleBasedStateMachine):
    """Random opens, writes, reads, closes: every byte arrives in order, windows hold."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = pair()
        self.sent: dict[int, bytearray] = {}
        self.received: dict[int, bytearray] = {}
        self.unread: dict[int, int] = {}
        self.closed: set[int] = set()

    @rule()
    def open(self) -> None:
        if len(self.sent) < 8:
            sid = self.a.open_stream()
            self.sent[sid] = bytearray()

    @rule(data=st.binary(min_size=1, max_size=70_000), pick=st.integers(0, 7))
    def write(self, data: bytes, pick: int) -> None:
        live = sorted(s for s in self.sent if s not in self.closed)
        if not live:
            return
        sid = live[pick % len(live)]
        n = self.a.send_data(sid, data)
        self.sent[sid] += data[:n]

    @rule(pick=st.integers(0, 7))
    def close(self, pick: int) -> None:
        live = sorted(s for s in self.sent if s not in self.closed)
        if live:
            sid = live[pick % len(live)]
            self.a.close_stream(sid)
            self.closed.add(sid)

    @rule(now=st.floats(0, 1))
    def deliver_and_read(self, now: float) -> None:
        for ev in self.b.receive_data(self.a.data_to_send(), now):
            if isinstance(ev, DataReceived):
                self.received.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                self.unread[ev.stream_id] = self.unread.get(ev.stream_id, 0) + len(ev.data)
        for sid, n in self.unread.items():
            self.b.consume(sid, n, now)
        self.unread.clear()
        self.a.receive_data(self.b.data_to_send(), now)

    @invariant()
    def prefix_delivered(self) -> None:
        for sid, got in self.received.items():
            assert self.sent[sid][: len(got)] == got


TestSessionPair = SessionPair.TestCase
TestSessionPair.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)


@asynccontextmanager
async def muxed(
    cfg: NetworkConfig | None = None,
) -> AsyncIterator[tuple[YamuxConnection, YamuxConnection]]:
    from switchy.stack.security.noise import NoiseSecurity

    cfg = cfg or NetworkConfig(keepalive_interval=0)
    a, b = memory_pipe()
    ka, kb = KeyPair.generate(), KeyPair.generate()
    sec = NoiseSecurity()
    sa, sb = await asyncio.gather(sec.secure_outbound(a, ka, None), sec.secure_inbound(b, kb))
    ma = Yamux().create(sa, is_initiator=True, config=cfg)
    mb = Yamux().create(sb, is_initiator=False, config=cfg)
    assert isinstance(ma, YamuxConnection) and isinstance(mb, YamuxConnection)
    try:
        yield ma, mb
    finally:
        await ma.abort()
        await mb.abort()


def test_streams_both_directions_many_messages() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            tasks: set[asyncio.Future[None]] = set()

            async def serve(conn: YamuxConnection) -> None:
                while True:
                    try:
                        s = await conn.accept_stream()
                    except ConnectionClosed:
                        return

                    async def echo(s: object = s) -> None:
                        from switchy.stack.stream import MuxedStream

                        assert isinstance(s, MuxedStream)
                        async for chunk in s:
                            await s.write(chunk)
                        await s.close_write()

                    tasks.add(asyncio.ensure_future(echo()))

            servers = [asyncio.ensure_future(serve(ma)), asyncio.ensure_future(serve(mb))]

            async def client(conn: YamuxConnection, i: int) -> None:
                s = await conn.open_stream()
                msgs = [bytes([i % 256]) * (j * 131 % 5000 + 1) for j in range(20)]
                reader = asyncio.ensure_future(s.read_all(limit=1 << 24))
                for m in msgs:
                    await s.write(m)
                await s.close_write()
                assert await reader == b"".join(msgs)

            await asyncio.gather(*(client(ma if i % 2 else mb, i) for i in range(40)))
            for t in servers:
                t.cancel()

    asyncio.run(main())


def test_reset_and_half_close() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            s = await ma.open_stream()
            await s.write(b"abc")
            r = await mb.accept_stream()
            assert await r.read_exactly(3) == b"abc"
            await s.close_write()
            assert await r.read() == b""
            await r.write(b"still open")
            assert await s.read_exactly(10) == b"still open"
            with pytest.raises(ConnectionClosed):
                await s.write(b"after close")
            s2 = await ma.open_stream()
            await s2.write(b"x")
            r2 = await mb.accept_stream()
            await r2.reset()
            with pytest.raises(StreamReset) as info:
                while True:
                    await s2.read()
            assert not isinstance(info.value, StreamRefused)  # accepted, then reset

    asyncio.run(main())


def test_an_inbound_syn_over_the_resource_budget_is_reset_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SYN the resource manager refuses is answered with a RST; the refusing side keeps
    no stream for it: no stream object is even made, the session forgets it, nothing
    stays charged, and the connection serves on."""
    from switchy.stack.limits import LimitConfig, ResourceManager
    from switchy.stack.mux import yamux

    made: list[tuple[YamuxConnection, int]] = []
    init = yamux.YamuxStream.__init__

    def counting_init(self: yamux.YamuxStream, conn: YamuxConnection, stream_id: int) -> None:
        made.append((conn, stream_id))
        init(self, conn, stream_id)

    monkeypatch.setattr(yamux.YamuxStream, "__init__", counting_init)
    limits = ResourceManager(LimitConfig.scaled().with_overrides(["connection.streams_inbound=1"]))

    async def main() -> None:
        async with muxed() as (ma, mb):
            mb.resource_scope = limits.open_connection("inbound")
            first = await ma.open_stream()
            await first.write(b"one")
            accepted = await mb.accept_stream()
            assert isinstance(accepted, yamux.YamuxStream)
            assert await accepted.read_exactly(3) == b"one"
            refused = await ma.open_stream()
            await refused.write(b"two")
            with pytest.raises(StreamRefused, match="refused by the peer"):
                while await refused.read():
                    pass
            assert limits.blocked[("connection", "streams_inbound")] == 1
            assert [sid for conn, sid in made if conn is mb] == [accepted.stream_id]
            assert list(mb._streams) == [accepted.stream_id]
            assert mb._session.stream_ids() == [accepted.stream_id]
            assert not mb._accept_queue
            assert mb.resource_scope.scope.used("streams_inbound") == 1
            await first.write(b"still served")
            assert await accepted.read_exactly(12) == b"still served"
            await accepted.reset()
        assert limits.usage() == {"system": {}}

    asyncio.run(main())


def test_a_stream_closed_before_the_peers_fin_is_forgotten_when_the_fin_comes() -> None:
    """One request per stream, answered and closed before the asker's FIN (HTTP expose):
    the stream and its resource scope go when the FIN comes (they stayed until the
    connection closed: 512 such requests exhausted the peer's inbound stream limit)."""

    async def main() -> None:
        async with muxed() as (ma, mb):
            for _ in range(3):
                s = await ma.open_stream()
                await s.write(b"question")
                r = await mb.accept_stream()
                assert isinstance(s, YamuxStream) and isinstance(r, YamuxStream)
                assert await r.read_exactly(8) == b"question"
                await r.write_last(b"answer")
                await r.close()
                assert r._id in mb._streams  # the asker has not closed yet
                assert await s.read_all(limit=100) == b"answer"
                await s.close()
                await mb.ping()  # the pong comes after the FIN
                assert r._id not in mb._streams
                assert s._id not in ma._streams

    asyncio.run(main())


def test_write_last_and_write_soon_coalesce_and_keep_the_contract() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):

            def count_writes_below(conn: YamuxConnection) -> list[int]:
                sizes: list[int] = []
                inner_write = conn._conn.write
                inner_nowait = conn._conn.try_write_nowait

                async def counting_write(data: bytes | bytearray | memoryview) -> None:
                    sizes.append(len(data))
                    await inner_write(data)

                def counting_nowait(data: bytes | bytearray | memoryview) -> bool:
                    taken = inner_nowait(data)
                    if taken:
                        sizes.append(len(data))
                    return taken

                conn._conn.write = counting_write  # type: ignore[method-assign]
                conn._conn.try_write_nowait = counting_nowait  # type: ignore[method-assign]
                return sizes

            below, below_b = count_writes_below(ma), count_writes_below(mb)
            s = await ma.open_stream()
            await s.write(b"x")
            r = await mb.accept_stream()
            assert await r.read_exactly(1) == b"x"
            below.clear()
            await s.write_last(b"request")
            assert await r.read_all() == b"request"  # then end of stream
            assert len(below) == 1  # data frame and FIN: one write below
            with pytest.raises(ConnectionClosed):
                await s.write(b"after write_last")
            with pytest.raises(ConnectionClosed):
                await s.write_soon(b"after write_last")
            # write_soon holds the bytes for the next write, or flushes them by itself.
            below_b.clear()
            await r.write_soon(b"answer ")
            await r.write_last(b"and end")
            assert await s.read_all() == b"answer and end"
            assert len(below_b) == 1  # the held bytes went out with the last write
            s2 = await ma.open_stream()
            await s2.write_soon(b"alone")
            r2 = await mb.accept_stream()
            assert await r2.read_exactly(5) == b"alone"  # no other write needed
            # write_last with no data is close_write.
            await s2.write_last(b"")
            assert await r2.read() == b""

    asyncio.run(main())


def test_try_write_soon_nowait_commits_whole_or_nothing_and_coalesces() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            s = await ma.open_stream()
            await s.write(b"x")
            r = await mb.accept_stream()
            assert await r.read_exactly(1) == b"x"
            sizes: list[int] = []
            inner = mb._conn.try_write_nowait

            def counting(data: bytes | bytearray | memoryview) -> bool:
                taken = inner(data)
                if taken:
                    sizes.append(len(data))
                return taken

            mb._conn.try_write_nowait = counting  # type: ignore[method-assign]
            assert r.try_write_soon_nowait(b"answer ")  # committed, held for this turn
            assert sizes == []
            await r.write_last(b"and end")
            assert await s.read_all() == b"answer and end"
            assert len(sizes) == 1  # the held bytes went out with the last write
            # More than the peer's window: nothing is committed, write_soon must be used.
            s2 = await ma.open_stream()
            await s2.write(b"y")
            r2 = await mb.accept_stream()
            assert await r2.read_exactly(1) == b"y"
            assert not r2.try_write_soon_nowait(b"z" * (INITIAL_WINDOW + 1))
            assert r2.try_write_soon_nowait(b"alone")  # flushed by itself
            assert await s2.read_exactly(5) == b"alone"
            await r2.close_write()
            assert not r2.try_write_soon_nowait(b"after close")  # closed: refused, not lost
            assert await s2.read() == b""

    asyncio.run(main())


def test_clogged_reader_stops_writer_with_bounded_memory() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            s = await ma.open_stream()
            await s.write(b"start")
            r = await mb.accept_stream()
            total = 8 * 1024 * 1024
            written = 0

            async def writer() -> None:
                nonlocal written
                chunk = b"y" * 65536
                while written < total:
                    await s.write(chunk)
                    written += len(chunk)
                await s.close_write()

            task = asyncio.ensure_future(writer())
            done, _ = await asyncio.wait([task], timeout=0.3)
            assert not done, "writer was not stopped by a reader that does not read"
            assert written <= INITIAL_WINDOW  # exactly one window in flight
            got = len(await r.read_all(limit=1 << 30))
            await task
            assert got == total + 5

    asyncio.run(main())


def test_large_transfer_integrity_and_window_growth() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            s = await ma.open_stream()
            data = bytes(range(256)) * (32 * 4096)  # 32 MiB
            sender = asyncio.ensure_future(_send_all(s, data))
            r = await mb.accept_stream()
            got = await r.read_all(limit=1 << 30)
            await sender
            assert got == data
            assert ma._session.send_window(s.stream_id) >= 0  # type: ignore[attr-defined]

    asyncio.run(main())


async def _send_all(s: object, data: bytes) -> None:
    from switchy.stack.stream import MuxedStream

    assert isinstance(s, MuxedStream)
    view = memoryview(data)
    for off in range(0, len(data), 1 << 20):
        await s.write(view[off : off + (1 << 20)])
    await s.close_write()


def test_close_with_open_streams_and_go_away() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            s = await ma.open_stream()
            await s.write(b"x")
            r = await mb.accept_stream()
            await ma.close()
            assert ma.is_closed
            with pytest.raises(ConnectionClosed):
                await ma.open_stream()
            await mb.wait_closed()
            with pytest.raises(ConnectionClosed):
                await mb.accept_stream()
            assert await r.read(1) == b"x"
            with pytest.raises(StreamReset):
                await r.read()

    asyncio.run(main())


def test_ping_measures_rtt() -> None:
    async def main() -> None:
        async with muxed() as (ma, _mb):
            rtt = await ma.ping(timeout=5)
            assert rtt >= 0
            assert ma.stats.latency_samples == 1

    asyncio.run(main())


def test_serve_streams_hands_inbound_streams_to_the_callback() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            early = await ma.open_stream()
            assert isinstance(early, YamuxStream)
            await early.write(b"queued")
            await ma.ping()  # mb answered it after the SYN: the stream waits in its queue
            assert len(mb._accept_queue) == 1
            got: list[YamuxStream] = []
            arrived = asyncio.Event()
            closed = asyncio.Event()

            def on_stream(stream: MuxedStream) -> None:
                assert isinstance(stream, YamuxStream)
                got.append(stream)
                arrived.set()

            assert mb.serve_streams(on_stream, closed.set)
            assert [s.stream_id for s in got] == [early.stream_id]  # handed over at once
            assert await got[0].read_exactly(6) == b"queued"
            arrived.clear()
            later = await ma.open_stream()
            assert isinstance(later, YamuxStream)
            await later.write(b"direct")
            await arrived.wait()
            assert [s.stream_id for s in got] == [early.stream_id, later.stream_id]
            assert await got[1].read_exactly(6) == b"direct"
            await got[1].write(b"answer")  # accepted: the opener gets its ACK and data
            assert await later.read_exactly(6) == b"answer"
            assert not mb._accept_queue
            assert not closed.is_set()
            await ma.close()
            await closed.wait()  # called once the connection ended
            assert mb.is_closed

    asyncio.run(main())


def test_serve_streams_on_a_closed_connection_reports_the_end() -> None:
    async def main() -> None:
        async with muxed() as (_, mb):
            await mb.abort()
            closed = asyncio.Event()
            assert mb.serve_streams(lambda s: None, closed.set)
            await closed.wait()

    asyncio.run(main())


def test_frames_of_one_turn_leave_in_one_write_below() -> None:
    async def main() -> None:
        async with muxed() as (ma, mb):
            sizes: list[int] = []
            inner = ma._conn.try_write_nowait

            def counting(data: bytes | bytearray | memoryview) -> bool:
                taken = inner(data)
                if taken:
                    sizes.append(len(data))
                return taken

            ma._conn.try_write_nowait = counting  # type: ignore[method-assign]
            first = await ma.open_stream()
            assert isinstance(first, YamuxStream)
            await first.write(b"a")  # the turn's first send goes at once
            assert len(sizes) == 1
            streams = [await ma.open_stream() for _ in range(5)]
            for s in streams:
                await s.write(b"b")
                await s.close_write()
            assert len(sizes) == 1  # held for the turn's flush
            for _ in range(6):
                r = await mb.accept_stream()
                assert isinstance(r, YamuxStream)
                if r.stream_id != first.stream_id:
                    assert await r.read_all() == b"b"
            assert len(sizes) == 2  # all ten frames went in one write

    asyncio.run(main())
