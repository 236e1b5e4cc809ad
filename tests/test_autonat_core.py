"""AutoNAT's sans-IO cores without sockets: server session, client session, limits, reachability."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.autonat.addrs import addr_host, is_public_addr, is_relayed
from switchy.protocols.autonat.client import (
    Result,
    V2ClientSession,
    Verdict,
    v1_verdict,
    v2_verdict,
)
from switchy.protocols.autonat.pb import (
    DIAL_DATA_CHUNK,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    V1DialResponse,
    V1Message,
    V1MessageType,
    V1PeerInfo,
    V1Status,
    decode_frame,
    decode_v1,
    decode_v2,
    encode_frame,
    encode_v1,
    encode_v2,
)
from switchy.protocols.autonat.reachability import Reachability, ReachabilityTracker
from switchy.protocols.autonat.server import (
    MAX_V1_DIAL_ADDRS,
    MIN_DIAL_DATA,
    RATE_WINDOW,
    RateLimiter,
    ServerLimits,
    V2ServerSession,
    v1_decide,
)
from switchy.stack.errors import InvalidConfiguration, ProtocolError
from switchy.stack.identity import KeyPair, PeerId

CLIENT = Multiaddr("/ip4/8.8.8.8/tcp/50000")  # observed address of the requester
SAME = Multiaddr("/ip4/8.8.8.8/tcp/4001")
OTHER = Multiaddr("/ip4/9.9.9.9/tcp/4001")
PRIVATE = Multiaddr("/ip4/192.168.1.2/tcp/4001")
PEER = KeyPair.from_seed(bytes(32)).peer_id
PEER2 = KeyPair.from_seed(bytes([1]) * 32).peer_id


def everything(_: Multiaddr) -> bool:
    return True


def session(
    *, dial_data_ok: bool = True, refusal: str | None = None, size: int = MIN_DIAL_DATA
) -> V2ServerSession:
    return V2ServerSession(
        CLIENT,
        can_dial=everything,
        is_public=is_public_addr,
        admit_dial_data=lambda: dial_data_ok,
        dial_data_size=size,
        refusal=refusal,
    )


def answers(data: bytes) -> list[object]:
    out: list[object] = []
    buf = bytearray(data)
    while (frame := decode_frame(buf)) is not None:
        out.append(decode_v2(frame[0]))
        del buf[: frame[1]]
    assert not buf
    return out


def request(*addrs: Multiaddr, nonce: int = 7) -> bytes:
    return encode_frame(encode_v2(DialRequest.of(list(addrs), nonce)))


def test_addr_hosts() -> None:
    assert addr_host(SAME) == addr_host(CLIENT) == "ip4:8.8.8.8"
    assert addr_host(Multiaddr("/ip6/::ffff:8.8.8.8/tcp/1")) == "ip4:8.8.8.8"
    assert addr_host(Multiaddr("/dns4/example.com/tcp/1")) is None
    assert addr_host(Multiaddr("/memory/300004001")) == addr_host(Multiaddr("/memory/300000007"))
    assert not is_public_addr(PRIVATE) and not is_public_addr(Multiaddr("/ip4/127.0.0.1/tcp/1"))
    relayed = Multiaddr(f"/ip4/8.8.8.8/tcp/1/p2p/{PEER}/p2p-circuit")
    assert is_relayed(relayed) and addr_host(relayed) is None


# --- server session -------------------------------------------------------------------------


def test_same_host_address_is_dialed_without_dial_data() -> None:
    s = session()
    events = s.receive_data(request(PRIVATE, SAME, OTHER, nonce=99))
    assert [(e.addr, e.addr_idx, e.nonce, e.dial_data) for e in events] == [(SAME, 1, 99, False)]
    assert s.data_to_send() == b"" and not s.reading
    s.dial_done(DialStatus.OK)
    assert answers(s.data_to_send()) == [DialResponse(ResponseStatus.OK, 1, DialStatus.OK)]
    assert s.done and s.outcome == "dialed: OK"


def test_other_host_needs_dial_data_before_any_dial() -> None:
    s = session(size=MIN_DIAL_DATA)
    assert s.receive_data(request(OTHER)) == []
    assert answers(s.data_to_send()) == [DialDataRequest(0, MIN_DIAL_DATA)]
    chunk = encode_frame(encode_v2(DialDataResponse(bytes(DIAL_DATA_CHUNK))))
    full, rest = divmod(MIN_DIAL_DATA, DIAL_DATA_CHUNK)
    assert s.receive_data(chunk * full) == []  # still short of the amount: no dial yet
    last = encode_frame(encode_v2(DialDataResponse(bytes(DIAL_DATA_CHUNK))))  # may overshoot
    events = s.receive_data(last + chunk * 50)  # a flood after the amount is not taken
    assert [e.addr for e in events] == [OTHER] and events[0].dial_data
    assert rest and s.dial_data_received == (full + 1) * DIAL_DATA_CHUNK
    assert s.receive_data(chunk) == [] and s.dial_data_received == (full + 1) * DIAL_DATA_CHUNK


def test_tiny_dial_data_chunks_are_refused() -> None:
    s = session()
    s.receive_data(request(OTHER))
    with pytest.raises(ProtocolError, match="below the minimum"):
        s.receive_data(encode_frame(encode_v2(DialDataResponse(b"x" * 10))))


def test_dial_data_rate_limit_rejects_without_dialing() -> None:
    s = session(dial_data_ok=False)
    assert s.receive_data(request(OTHER)) == []
    assert answers(s.data_to_send()) == [DialResponse(ResponseStatus.E_REQUEST_REJECTED)]


def test_refusals() -> None:
    s = session(refusal="request over a relayed connection")
    assert not s.reading
    assert answers(s.data_to_send()) == [DialResponse(ResponseStatus.E_REQUEST_REJECTED)]
    assert s.receive_data(request(SAME)) == []  # nothing read, nothing dialed
    s = session()
    relayed = Multiaddr(f"/ip4/8.8.8.8/tcp/1/p2p/{PEER}/p2p-circuit")
    dns = Multiaddr("/dns4/example.com/tcp/1")
    assert s.receive_data(request(PRIVATE, relayed, dns)) == []
    assert answers(s.data_to_send()) == [DialResponse(ResponseStatus.E_DIAL_REFUSED)]


def test_huge_address_list_is_rejected() -> None:
    body = b"".join(b"\x0a" + bytes([len(SAME.to_bytes())]) + SAME.to_bytes() for _ in range(51))
    msg = b"\x0a" + bytes([len(body) & 0x7F | 0x80, len(body) >> 7]) + body
    s = session()
    assert s.receive_data(encode_frame(msg)) == []
    assert answers(s.data_to_send()) == [DialResponse(ResponseStatus.E_REQUEST_REJECTED)]
    assert s.outcome is not None and "more than 50 addresses" in s.outcome


def test_oversized_frame_is_rejected_before_its_body_arrives() -> None:
    s = session()
    assert s.receive_data(b"\xff\xff\x01") == []  # announces ~32 KiB
    assert answers(s.data_to_send()) == [DialResponse(ResponseStatus.E_REQUEST_REJECTED)]


def test_wrong_first_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="expected a DialRequest"):
        session().receive_data(encode_frame(encode_v2(DialDataResponse(b""))))


@given(st.binary(max_size=200))
def test_server_session_survives_garbage(data: bytes) -> None:
    s = session()
    try:
        events = s.receive_data(data)
    except ProtocolError:
        return
    for e in events:  # whatever it dials is on the requester's host or paid for
        assert addr_host(e.addr) == addr_host(CLIENT) or e.dial_data


# --- rate limiter ---------------------------------------------------------------------------


def test_rate_limits_per_peer_overall_and_concurrency() -> None:
    limits = ServerLimits(per_peer=2, total=3, dial_data=1, concurrent_per_peer=1)
    r = RateLimiter(limits)
    assert r.admit(PEER, 0.0) is None
    assert "in progress" in (r.admit(PEER, 0.0) or "")
    r.release(PEER)
    assert r.admit(PEER, 1.0) is None
    r.release(PEER)
    assert "per 60s" in (r.admit(PEER, 2.0) or "")  # third of this peer in a minute
    assert r.admit(PEER2, 2.0) is None
    r.release(PEER2)
    third = KeyPair.from_seed(bytes([2]) * 32).peer_id
    assert "more than 3 requests" in (r.admit(third, 3.0) or "")
    assert r.admit(PEER, RATE_WINDOW + 0.5) is None  # the window slid
    assert r.admit_dial_data(0.0) and not r.admit_dial_data(1.0)
    assert r.admit_dial_data(RATE_WINDOW + 1)
    with pytest.raises(InvalidConfiguration):
        ServerLimits(total=0)


def test_rate_limiter_memory_is_bounded_by_the_overall_limit() -> None:
    r = RateLimiter(ServerLimits(total=5))
    for i in range(100):
        pid = KeyPair.from_seed(i.to_bytes(32, "big")).peer_id
        if r.admit(pid, float(i) / 100) is None:
            r.release(pid)
    assert r.tracked_peers <= 5


# --- v1 decisions ---------------------------------------------------------------------------


def v1_dial(*addrs: Multiaddr, peer: PeerId = PEER) -> V1Message:
    return V1Message(
        V1MessageType.DIAL, V1PeerInfo(peer.to_bytes(), tuple(a.to_bytes() for a in addrs))
    )


def test_v1_dials_only_the_observed_host() -> None:
    d = v1_decide(v1_dial(OTHER, SAME, PRIVATE), PEER, CLIENT, can_dial=everything,
                  is_public=is_public_addr)  # fmt: skip
    assert d.addrs == (SAME,) and d.refusal is None
    d = v1_decide(v1_dial(OTHER), PEER, CLIENT, can_dial=everything, is_public=is_public_addr)
    assert d.addrs == () and d.refusal is not None
    assert d.refusal.dial_response is not None
    assert d.refusal.dial_response.status == V1Status.E_DIAL_REFUSED


def test_v1_refuses_another_peer_id_and_bad_types() -> None:
    d = v1_decide(v1_dial(SAME, peer=PEER2), PEER, CLIENT, can_dial=everything,
                  is_public=is_public_addr)  # fmt: skip
    assert d.refusal is not None and d.refusal.dial_response is not None
    assert d.refusal.dial_response.status == V1Status.E_BAD_REQUEST
    d = v1_decide(V1Message(V1MessageType.DIAL_RESPONSE), PEER, CLIENT, can_dial=everything,
                  is_public=is_public_addr)  # fmt: skip
    assert d.refusal is not None


def test_v1_dials_a_bounded_number_of_addresses() -> None:
    many = [Multiaddr(f"/ip4/8.8.8.8/tcp/{p}") for p in range(1000, 1040)]
    d = v1_decide(v1_dial(*many), PEER, CLIENT, can_dial=everything, is_public=is_public_addr)
    assert len(d.addrs) == MAX_V1_DIAL_ADDRS


# --- client session and verdicts ------------------------------------------------------------


def test_client_session_sends_dial_data_when_asked() -> None:
    c = V2ClientSession([OTHER], 5)
    assert answers(c.data_to_send()) == [DialRequest.of([OTHER], 5)]
    c.receive_data(encode_frame(encode_v2(DialDataRequest(0, 10_000))))
    sent = answers(c.data_to_send())
    assert all(isinstance(m, DialDataResponse) for m in sent)
    assert sum(len(m.data) for m in sent if isinstance(m, DialDataResponse)) >= 10_000
    c.receive_data(encode_frame(encode_v2(DialResponse(ResponseStatus.OK, 0, DialStatus.OK))))
    assert c.response is not None


def test_client_declines_excessive_dial_data_and_bad_indices() -> None:
    with pytest.raises(ProtocolError, match="at most 100000"):
        V2ClientSession([OTHER], 5).receive_data(encode_frame(encode_v2(DialDataRequest(0, 10**9))))
    with pytest.raises(ProtocolError, match="names address 3"):
        V2ClientSession([OTHER], 5).receive_data(
            encode_frame(encode_v2(DialResponse(ResponseStatus.OK, 3, DialStatus.OK)))
        )


def finished(resp: DialResponse) -> V2ClientSession:
    c = V2ClientSession([SAME], 5)
    c.receive_data(encode_frame(encode_v2(resp)))
    return c


def test_v2_verdicts() -> None:
    ok = DialResponse(ResponseStatus.OK, 0, DialStatus.OK)
    local = Multiaddr("/ip4/8.8.8.8/tcp/4001")
    assert v2_verdict(finished(ok), PEER, local).verdict is Verdict.REACHABLE
    # a claimed success without our nonce is discarded
    assert v2_verdict(finished(ok), PEER, None).verdict is Verdict.ERROR
    # the nonce came on a QUIC connection, the address asked about is TCP
    quic = Multiaddr("/ip4/8.8.8.8/udp/4001/quic-v1")
    assert v2_verdict(finished(ok), PEER, quic).verdict is Verdict.ERROR
    err = DialResponse(ResponseStatus.OK, 0, DialStatus.E_DIAL_ERROR)
    assert v2_verdict(finished(err), PEER, None).verdict is Verdict.UNREACHABLE
    refused = DialResponse(ResponseStatus.E_DIAL_REFUSED)
    assert v2_verdict(finished(refused), PEER, None).verdict is Verdict.REFUSED
    assert v2_verdict(finished(DialResponse(77)), PEER, local).verdict is Verdict.ERROR


def test_v1_verdicts() -> None:
    def answer(status: int) -> V1Message:
        return decode_v1(
            encode_v1(V1Message(V1MessageType.DIAL_RESPONSE, None, V1DialResponse(status)))
        )

    assert v1_verdict(answer(V1Status.OK), SAME, PEER).verdict is Verdict.REACHABLE
    assert v1_verdict(answer(V1Status.E_DIAL_ERROR), SAME, PEER).verdict is Verdict.UNREACHABLE
    assert v1_verdict(answer(V1Status.E_DIAL_REFUSED), SAME, PEER).verdict is Verdict.REFUSED
    assert v1_verdict(answer(V1Status.E_BAD_REQUEST), SAME, PEER).verdict is Verdict.ERROR
    assert v1_verdict(V1Message(V1MessageType.DIAL), SAME, PEER).verdict is Verdict.ERROR


# --- reachability ---------------------------------------------------------------------------


def peer(i: int) -> PeerId:
    return KeyPair.from_seed(i.to_bytes(32, "big")).peer_id


def res(server: int, reached: bool, addr: Multiaddr = SAME) -> Result:
    verdict = Verdict.REACHABLE if reached else Verdict.UNREACHABLE
    return Result(addr, peer(server), 2, verdict)


def test_confidence_needs_distinct_servers() -> None:
    t = ReachabilityTracker(confidence=3, window=5)
    for _ in range(5):  # one server saying it five times is one vote
        t.add(res(1, True), 0.0)
    assert t.state(SAME) is Reachability.UNKNOWN
    t.add(res(2, True), 1.0)
    changes = t.add(res(3, True), 2.0)
    assert t.state(SAME) is Reachability.PUBLIC and t.overall is Reachability.PUBLIC
    assert {(c.addr, c.new) for c in changes} == {
        (SAME, Reachability.PUBLIC),
        (None, Reachability.PUBLIC),
    }
    # refusals and errors are no information
    assert t.add(Result(SAME, peer(4), 2, Verdict.REFUSED), 3.0) == []


def test_reachability_flips_when_the_window_turns() -> None:
    t = ReachabilityTracker(confidence=3, window=5)
    for i in range(3):
        t.add(res(i, True), float(i))
    for i in range(3, 6):  # three failures push the oldest success out of the window
        t.add(res(i, False), float(i))
    assert t.state(SAME) is Reachability.PRIVATE and t.overall is Reachability.PRIVATE


def test_old_answers_age_out() -> None:
    t = ReachabilityTracker(confidence=1, window=5, max_age=100.0)
    t.add(res(1, False), 0.0)
    before = t.overall
    changes = t.refresh(100.0)
    assert (before, t.overall) == (Reachability.PRIVATE, Reachability.UNKNOWN) and changes


def test_overall_is_public_if_any_address_is() -> None:
    t = ReachabilityTracker(confidence=1, window=1)
    t.add(res(1, False, SAME), 0.0)
    t.add(res(1, False, OTHER), 0.0)
    seen = [t.overall]
    t.add(res(2, True, OTHER), 1.0)
    seen.append(t.overall)
    t.forget([SAME], 2.0)
    seen.append(t.overall)
    assert seen == [Reachability.PRIVATE, Reachability.PUBLIC, Reachability.PRIVATE]
    assert set(t.addresses) == {SAME}
    with pytest.raises(InvalidConfiguration):
        ReachabilityTracker(confidence=6, window=5)


@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), max_size=60))
def test_tracker_state_agrees_with_the_rule(events: list[tuple[int, bool]]) -> None:
    t = ReachabilityTracker(confidence=3, window=5)
    latest: dict[int, bool] = {}
    order: list[int] = []
    for i, (server, reached) in enumerate(events):
        t.add(res(server, reached), float(i))
        latest[server] = reached
        if server in order:
            order.remove(server)
        order.append(server)
        del order[:-5]
    yes = sum(latest[s] for s in order)
    no = len(order) - yes
    want = (
        Reachability.PUBLIC
        if yes >= 3 and yes > no
        else Reachability.PRIVATE
        if no >= 3 and no > yes
        else Reachability.UNKNOWN
    )
    assert t.state(SAME) is want
