"""The sans-IO gossipsub router: mesh invariants under random events, delivery, bad input."""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.protocols.pubsub.core import (
    GOSSIPSUB_V10,
    GOSSIPSUB_V11,
    GOSSIPSUB_V12,
    MAX_MESSAGE_SIZE,
    GossipParams,
    GossipSub,
    SignaturePolicy,
    ValidationResult,
)
from switchy.protocols.pubsub.pb import (
    RPC,
    Control,
    Graft,
    IHave,
    IWant,
    Message,
    PeerInfo,
    Prune,
    SubOpts,
    decode_rpc,
    encode_rpc,
    signing_bytes,
)
from switchy.protocols.pubsub.score import PeerScoreThresholds
from switchy.stack.errors import InvalidConfiguration, MessageTooLarge
from tests.pubsub_helpers import Net, key

T = "topic"


def full_mesh_net(n: int, seed: int = 0, **kw: Any) -> Net:
    net = Net(n, seed, **kw)
    for i in range(n):
        for j in range(i + 1, n):
            net.connect(i, j)
    for r in net.routers:
        r.join(T, net.now)
    net.pump()
    net.heartbeat(3)
    return net


def check_invariants(net: Net) -> None:
    for r in net.routers:
        p = r.params
        for topic, mesh in r.mesh.items():
            assert topic in r.joined
            assert topic not in r.fanout
            assert mesh <= set(r.peers), "mesh peers are connected"
            assert mesh <= r.topics.get(topic, set()), "mesh peers are subscribed"
            assert len(mesh) <= p.d_hi
            assert not mesh & r.direct, "direct peers stay outside the mesh"
            eligible = [
                x
                for x in r.topics.get(topic, ())
                if r.peer_score(x, net.now) >= 0 and x not in r.direct
            ]
            if len(eligible) >= p.d_lo:
                assert len(mesh) >= p.d_lo, (len(mesh), len(eligible))
            for x in mesh:
                assert r.peer_score(x, net.now) >= 0
        for fan in r.fanout.values():
            assert fan <= set(r.peers)
            assert len(fan) <= p.d


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(0, 6), min_size=5, max_size=40))
def test_mesh_invariants_under_random_events(seed: int, ops: list[int]) -> None:
    rng = random.Random(seed)
    n = 16
    net = Net(n, seed)
    for i in range(n):
        for j in rng.sample(range(n), 8):
            net.connect(i, j)
    for op in ops:
        a, b = rng.randrange(n), rng.randrange(n)
        if op == 0:
            net.connect(a, b)
        elif op == 1:
            net.disconnect(a, b)
        elif op == 2:
            net.routers[a].join(T, net.now)
        elif op == 3:
            net.routers[a].leave(T, net.now)
        elif op == 4:
            net.routers[a].publish(T, rng.randbytes(8), net.now)
        elif op == 6 and a != b:  # a reciprocal direct peering agreement
            ra, rb = net.routers[a], net.routers[b]
            ra.set_direct(ra.direct | {rb.local}, net.now)
            rb.set_direct(rb.direct | {ra.local}, net.now)
        net.pump()
        net.heartbeat()
        check_invariants(net)
    # Once quiet, meshes are symmetric: GRAFT and PRUNE keep both ends in agreement.
    net.heartbeat(3)
    for r in net.routers:
        for x in r.mesh.get(T, ()):
            assert r.local in net.by_id[x].mesh.get(T, set())


def test_every_subscriber_receives_each_message_once() -> None:
    net = Net(30, 1)
    rng = random.Random(1)
    for i in range(30):
        for j in rng.sample(range(30), 5):
            net.connect(i, j)
    for r in net.routers:
        r.join(T, net.now)
    net.pump()
    net.heartbeat(5)
    sent = [net.routers[rng.randrange(30)].publish(T, bytes([k]), net.now) for k in range(20)]
    net.pump()
    for r in net.routers:
        ids = [m.msg_id for m in net.got[r.local]]
        assert sorted(ids) == sorted(sent)


def test_gossip_repairs_a_missed_message() -> None:
    # c is outside a's mesh (D=1) but gossip (IHAVE/IWANT) brings it the message.
    params = GossipParams(d=1, d_lo=1, d_hi=1, d_score=0, d_out=0, d_lazy=1, flood_publish=False)
    net = Net(3, 2, params=params)
    net.connect(0, 1)
    net.connect(0, 2)
    for r in net.routers:
        r.join(T, net.now)
    net.pump()
    net.heartbeat(2)
    a = net.routers[0]
    assert len(a.mesh[T]) == 1
    outside = next(r for r in net.routers[1:] if r.local not in a.mesh[T])
    net.links.discard(frozenset((a.local, outside.local)))  # lose the direct copy
    a.publish(T, b"x", net.now)
    net.pump()
    net.links.add(frozenset((a.local, outside.local)))
    assert not net.got[outside.local] or outside.local in a.mesh[T]
    net.heartbeat(2)
    assert [m.data for m in net.got[outside.local]] == [b"x"]


def test_signing_is_verified_strictly() -> None:
    a0 = GossipSub(key(1))
    good = Message(topic=T, data=b"hi", from_=a0.local.to_bytes(), seqno=(1).to_bytes(8, "big"))
    signed = attrs.evolve(good, signature=a0.key.sign(signing_bytes(good)))
    stranger = key(99)
    bad = {
        "tampered": attrs.evolve(signed, data=b"ho"),
        "unsigned": good,
        "forged": attrs.evolve(good, signature=stranger.sign(signing_bytes(good))),
        "wrong key": attrs.evolve(signed, key=stranger.public_key.to_protobuf()),
        "short seqno": attrs.evolve(signed, seqno=b"\x01"),
        "bad from": attrs.evolve(signed, from_=b"\x00\x01"),
    }
    for name, m in bad.items():
        net = full_mesh_net(2)
        a, b = net.routers
        assert a.local == a0.local
        b.handle_rpc(a.local, RPC(publish=(m,)), net.now)
        assert b.deliveries() == [], name
        assert b.dropped["invalid signature"] == 1, name
        assert b.peer_score(a.local, net.now) < 0, name
        # The forged copy came first with the same id: the real message still gets in.
        b.handle_rpc(a.local, RPC(publish=(signed,)), net.now)
        assert [x.data for x in b.deliveries()] == [b"hi"], name


def test_invalid_message_floods_end_in_the_graylist() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    stranger = key(99)
    for k in range(100):
        m = Message(topic=T, data=b"x", from_=a.local.to_bytes(), seqno=k.to_bytes(8, "big"))
        m = attrs.evolve(m, signature=stranger.sign(signing_bytes(m)))
        b.handle_rpc(a.local, RPC(publish=(m,)), net.now)
    # Every invalid message costs P4 (squared): three of them reach the graylist, after
    # which the peer's RPCs are not even decoded into work.
    assert b.dropped["invalid signature"] == 3
    assert b.dropped["graylisted"] == 97
    assert b.peer_score(a.local, net.now) < b.thresholds.graylist


def test_unsigned_policy_refuses_signed_messages() -> None:
    r = GossipSub(key(1), policy=SignaturePolicy.STRICT_NO_SIGN, message_id=lambda m: m.data)
    other = GossipSub(key(2))
    r.add_peer(other.local, "/meshsub/1.1.0", outbound=True)
    r.join(T, 0.0)
    signed_id = other.publish(T, b"x", 0.0)
    assert signed_id
    signed = other._mcache[signed_id].msg
    r.handle_rpc(other.local, RPC(publish=(signed,)), 0.0)
    assert r.deliveries() == [] and r.dropped["invalid signature"] == 1
    r.handle_rpc(other.local, RPC(publish=(Message(topic=T, data=b"plain"),)), 0.0)
    assert [m.data for m in r.deliveries()] == [b"plain"]


def test_validators_accept_reject_ignore() -> None:
    net = full_mesh_net(3)
    a, b, c = net.routers
    b.set_validator(
        T,
        lambda m: {b"ok": ValidationResult.ACCEPT, b"bad": ValidationResult.REJECT}.get(
            m.data, ValidationResult.IGNORE
        ),
    )
    for data in (b"ok", b"bad", b"meh"):
        a.publish(T, data, net.now)
    net.pump()
    assert [m.data for m in net.got[b.local]] == [b"ok"]
    assert b.dropped["rejected"] == 1 and b.dropped["ignored"] == 1
    assert b.peer_score(a.local, net.now) < 0  # the rejected one counts (P4)
    assert sorted(m.data for m in net.got[c.local]) == [b"bad", b"meh", b"ok"]


def test_duplicate_flood_is_delivered_once_and_not_forwarded() -> None:
    net = full_mesh_net(3)
    a, b, _c = net.routers
    msg_id = a.publish(T, b"x", net.now)
    net.pump()
    m = a._mcache[msg_id].msg
    before = net.rpcs
    for _ in range(1000):
        b.handle_rpc(a.local, RPC(publish=(m,)), net.now)
    net.pump()
    assert [x.data for x in net.got[b.local]] == [b"x"]
    assert net.rpcs == before  # nothing forwarded
    assert b.dropped["duplicate"] >= 1000


def test_ihave_flood_and_iwant_limits() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    params = b.params
    fake = [i.to_bytes(8, "big") for i in range(params.max_ihave_length * 2)]
    asked: list[bytes] = []
    for k in range(params.max_ihave_messages + 5):
        b.handle_rpc(a.local, RPC(control=Control(ihave=(IHave(T, tuple(fake[k::3])),))), net.now)
        for _peer, data in b.outgoing():
            ctl = decode_rpc(data).control
            assert ctl is not None
            asked += [i for w in ctl.iwant for i in w.ids]
    assert len(asked) == params.max_ihave_length == len(set(asked))
    assert b.dropped["ihave flood"] == 5
    # IWANT for messages never had: nothing is sent.
    b.handle_rpc(a.local, RPC(control=Control(iwant=(IWant(tuple(fake[:100])),))), net.now)
    assert b.outgoing() == []
    assert b.dropped["iwant for unknown message"] == 100
    # IWANT for one we have: served at most gossip_retransmission times.
    mid = b.publish(T, b"x", net.now)
    b.outgoing()
    served = 0
    for _ in range(10):
        b.handle_rpc(a.local, RPC(control=Control(iwant=(IWant((mid,)),))), net.now)
        served += len(b.outgoing())
    assert served == params.gossip_retransmission


def test_broken_iwant_promises_are_penalised() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    now = net.now
    lowest = 0.0
    for k in range(30):
        ihave = IHave(T, tuple(bytes([k, j]) * 4 for j in range(10)))
        b.handle_rpc(a.local, RPC(control=Control(ihave=(ihave,))), now)
        b.outgoing()
        now += 1.0
        b.heartbeat(now)  # the promise of the IWANT of 3 s ago is broken: P7
        lowest = min(lowest, b.peer_score(a.local, now))
    # The peer fell below the gossip threshold, where its gossip is ignored (no IWANTs),
    # and out of the mesh (negative score).
    assert lowest < b.thresholds.gossip
    assert a.local not in b.mesh[T]
    assert b.dropped["ihave below gossip threshold"] >= 1


def test_graft_spam_during_backoff() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    b.handle_rpc(a.local, RPC(control=Control(prune=(Prune(T, (), 60),))), net.now)
    assert a.local not in b.mesh[T]
    # b pruned a: a grafting again inside the backoff is refused and penalised (P7).
    b._send_prune(T, a.local, net.now)
    b.outgoing()
    answered = 0
    for _ in range(10):
        b.handle_rpc(a.local, RPC(control=Control(graft=(Graft(T),))), net.now + 1)
        for _peer, data in b.outgoing():
            ctl = decode_rpc(data).control
            assert ctl is not None and [p.topic for p in ctl.prune] == [T]
            answered += 1
    assert a.local not in b.mesh[T]
    # Each early GRAFT costs two behaviour penalties (inside the flood threshold), so
    # the spammer soon lands in the graylist and is not even answered any more.
    assert b.dropped["graft during backoff"] == answered == 5
    assert b.peer_score(a.local, net.now + 1) < b.thresholds.graylist


def test_graft_for_a_topic_not_joined_is_pruned() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    b.handle_rpc(a.local, RPC(control=Control(graft=(Graft("other"),))), net.now)
    assert "other" not in b.mesh
    assert b.outgoing()


def test_peer_exchange_only_from_well_scored_peers() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    offered = tuple(PeerInfo(key(50 + i).peer_id.to_bytes()) for i in range(3))
    b.handle_rpc(a.local, RPC(control=Control(prune=(Prune(T, offered, 60),))), net.now)
    assert b.px_candidates() == []  # a's score (about 0) is below accept_px
    b2 = GossipSub(key(7), thresholds=PeerScoreThresholds(accept_px=0.0))
    b2.add_peer(a.local, "/meshsub/1.1.0", outbound=True)
    b2.handle_rpc(a.local, RPC(control=Control(prune=(Prune(T, offered, 60),))), 0.0)
    assert b2.px_candidates() == [(key(50 + i).peer_id, None) for i in range(3)]


def test_v10_peers_get_prunes_without_px_or_backoff() -> None:
    net = Net(2)
    net.connect(0, 1, GOSSIPSUB_V10)
    a, b = net.routers
    a.join(T, 0.0)
    b.join(T, 0.0)
    net.pump()
    net.heartbeat()
    assert b.local in a.mesh[T]
    a.leave(T, net.now)
    ((_, data),) = a.outgoing()
    assert (
        encode_rpc(RPC(subscriptions=(SubOpts(False, T),), control=Control(prune=(Prune(T),))))
        == data
    )


def test_oversized_publish_and_reused_id() -> None:
    r = GossipSub(key(1))
    with pytest.raises(MessageTooLarge, match="exceeds"):
        r.publish(T, b"x" * (MAX_MESSAGE_SIZE + 1), 0.0)
    r2 = GossipSub(key(2), policy=SignaturePolicy.STRICT_NO_SIGN, message_id=lambda m: m.data)
    r2.publish(T, b"same", 0.0)
    with pytest.raises(InvalidConfiguration, match="already"):
        r2.publish(T, b"same", 0.0)


def test_malformed_rpc_is_penalised_not_raised() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    for _ in range(20):
        assert (b.handle_bytes(a.local, b"\x0a\xff", net.now) or "").startswith("malformed RPC")
    assert b.peer_score(a.local, net.now) < 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(InvalidConfiguration):
        GossipParams(d=3, d_lo=4)
    with pytest.raises(InvalidConfiguration):
        PeerScoreThresholds(gossip=-1, publish=0)


def test_invalid_messages_packed_in_one_rpc_stop_at_the_graylist() -> None:
    net = full_mesh_net(2)
    a, b = net.routers
    stranger = key(99)
    msgs = []
    for k in range(500):
        m = Message(topic=T, data=b"x", from_=a.local.to_bytes(), seqno=k.to_bytes(8, "big"))
        msgs.append(attrs.evolve(m, signature=stranger.sign(signing_bytes(m))))
    assert b.handle_rpc(a.local, RPC(publish=tuple(msgs)), net.now) == "peer is graylisted"
    assert b.dropped["invalid signature"] == 3  # three signature checks, not 500
    assert b.dropped["graylisted"] == 497


def _dup_count(protocol: str) -> tuple[int, int, list[int]]:
    net = Net(30, 2)
    rng = random.Random(2)
    for i in range(30):
        for j in rng.sample(range(30), 6):
            net.connect(i, j, protocol)
    for r in net.routers:
        r.join(T, net.now)
    net.pump()
    net.heartbeat(5)
    sent = [net.routers[rng.randrange(30)].publish(T, bytes(2000), net.now) for _ in range(5)]
    net.pump()
    delivered = [len(net.got[r.local]) for r in net.routers]
    dups = sum(r.dropped.get("duplicate", 0) for r in net.routers)
    skipped = sum(r.dropped.get("idontwant", 0) for r in net.routers)
    assert len(sent) == 5
    return dups, skipped, delivered


def test_idontwant_cuts_duplicates_of_large_messages() -> None:
    """v1.2 peers tell their mesh they have a large message, and are then skipped when it is
    forwarded: every message still arrives once everywhere, with fewer duplicates."""
    dups11, skipped11, got11 = _dup_count(GOSSIPSUB_V11)
    dups12, skipped12, got12 = _dup_count(GOSSIPSUB_V12)
    assert got11 == got12 == [5] * 30
    assert skipped11 == 0 and skipped12 > 0
    assert dups12 < dups11


def test_idontwant_rules() -> None:
    """IDONTWANT goes to v1.2 mesh peers only, for messages of at least
    idontwant_min_size bytes; ids taken per peer and heartbeat are bounded; they expire."""
    net = Net(4, 3, params=GossipParams(idontwant_min_size=100, max_idontwant_messages=3))
    net.connect(0, 1, GOSSIPSUB_V12)
    net.connect(0, 2, GOSSIPSUB_V12)
    net.connect(0, 3, GOSSIPSUB_V11)
    for r in net.routers:
        r.join(T, net.now)
    net.pump()
    net.heartbeat(2)
    a = net.routers[0]
    assert a.mesh[T] == {net.routers[i].local for i in (1, 2, 3)}
    src = net.routers[1]
    small = src.publish(T, b"s" * 10, net.now)
    big = src.publish(T, b"b" * 200, net.now)
    # what a queues right after the big message arrived from 1
    for peer, data in src.outgoing():
        net.by_id[peer].handle_bytes(src.local, data, net.now)
    assert a.peers[net.routers[2].local].idontwant == [big]
    assert a.peers[net.routers[3].local].idontwant == []  # a v1.1 peer
    assert a.peers[src.local].idontwant == []  # the sender has it
    assert small not in a.peers[net.routers[2].local].idontwant
    net.pump()
    # limits: at most 3 ids per heartbeat from one peer
    ids = tuple(bytes([i]) * 20 for i in range(10))
    a.handle_rpc(src.local, RPC(control=Control(idontwant=(IWant(ids),))), net.now)
    assert len(a.peers[src.local].dont_send) == 3
    assert a.dropped["idontwant over limit"] == 1
    net.heartbeat(GossipParams().idontwant_ttl + 1)
    assert a.peers[src.local].dont_send == {}


# --- v1.1 direct peers ------------------------------------------------------------------


def direct_net(flood_publish: bool = False) -> Net:
    """a - b - c in a line, plus a direct agreement between a and c (also linked)."""
    net = Net(3, 5, params=GossipParams(flood_publish=flood_publish))
    a, _b, c = net.routers
    a.set_direct([c.local], net.now)
    c.set_direct([a.local], net.now)
    net.connect(0, 1)
    net.connect(1, 2)
    net.connect(0, 2)
    for r in net.routers:
        r.join(T, net.now)
    net.pump()
    net.heartbeat(3)
    return net


def test_direct_peers_are_never_in_the_mesh_but_get_every_message() -> None:
    net = direct_net()
    a, b, c = net.routers
    assert c.local not in a.mesh[T] and a.local not in c.mesh[T]
    assert a.local in b.mesh[T] and c.local in b.mesh[T]  # b has no agreement
    # Cut b off: the direct link alone carries a's message to c, both ways.
    net.links -= {frozenset((a.local, b.local)), frozenset((b.local, c.local))}
    a.publish(T, b"to c", net.now)
    c.publish(T, b"to a", net.now)
    net.pump()
    for r in (a, c):
        assert sorted(m.data for m in net.got[r.local]) == [b"to a", b"to c"]


def test_messages_received_are_forwarded_to_direct_peers() -> None:
    net = direct_net()
    a, b, c = net.routers
    net.links.discard(frozenset((b.local, c.local)))
    b.publish(T, b"via a", net.now)  # b -> a (mesh) -> c (direct, not in a's mesh)
    net.pump()
    assert [m.data for m in net.got[c.local]] == [b"via a"]
    assert c.local not in a.mesh[T]


def test_a_graft_from_a_direct_peer_is_answered_with_prune() -> None:
    net = direct_net()
    a, _b, c = net.routers
    a.handle_rpc(c.local, RPC(control=Control(graft=(Graft(T),))), net.now)
    assert c.local not in a.mesh[T]
    assert a.dropped["graft from a direct peer"] == 1
    [(peer, data)] = a.outgoing()
    ctl = decode_rpc(data).control
    assert peer == c.local and ctl is not None and [p.topic for p in ctl.prune] == [T]
    assert ctl.prune[0].peers == ()  # no peer exchange for it
    assert a.peer_score(c.local, net.now) == 0  # refused, not penalised


def test_direct_peers_get_no_gossip_and_are_not_graylisted() -> None:
    net = direct_net()
    a, _b, c = net.routers
    a.publish(T, b"x", net.now)
    net.pump()
    a.heartbeat(net.now + 1)
    for peer, data in a.outgoing():
        ctl = decode_rpc(data).control
        assert peer != c.local or ctl is None or not ctl.ihave
    a.score.add_penalty(c.local, 100.0)
    assert a.peer_score(c.local, net.now) < a.thresholds.graylist
    a.handle_rpc(c.local, RPC(publish=(Message(topic=T, data=b"junk"),)), net.now)
    assert "graylisted" not in a.dropped  # handled (and refused: unsigned), not graylisted
    assert a.dropped["invalid signature"] == 1


def test_set_direct_prunes_a_meshed_peer() -> None:
    net = full_mesh_net(3)
    a, b, _c = net.routers
    assert b.local in a.mesh[T]
    a.set_direct([b.local], net.now)
    assert b.local not in a.mesh[T]
    net.pump()
    assert a.local not in b.mesh[T]  # b got the PRUNE


def test_disconnected_direct_peers_are_offered_for_reconnects() -> None:
    net = direct_net()
    a, _b, c = net.routers
    net.disconnect(0, 2)
    ticks = a.params.direct_connect_ticks
    seen: list[list[Any]] = []
    for _ in range(2 * ticks):
        net.heartbeat()
        seen.append(a.direct_to_connect())
    offered = [i for i, x in enumerate(seen) if x]
    assert len(offered) == 2 and offered[1] - offered[0] == ticks
    assert seen[offered[0]] == [c.local]
    net.connect(0, 2)
    for _ in range(ticks):
        net.heartbeat()
        assert a.direct_to_connect() == []  # attached again: nothing to do


# --- deferred (asynchronous) validation -----------------------------------------------


def deferred_net() -> Net:
    net = full_mesh_net(3)
    net.routers[1].defer_validation(T)
    return net


def test_deferred_validation_accept_delivers_and_forwards_on_the_verdict() -> None:
    net = deferred_net()
    a, b, c = net.routers
    net.links.discard(frozenset((a.local, c.local)))  # c hears only through b
    msg_id = a.publish(T, b"wait", net.now)
    net.pump()
    [waiting] = b.validations()
    assert waiting.msg_id == msg_id and waiting.data == b"wait"
    assert net.got[b.local] == [] and net.got[c.local] == []
    assert b.validation_result(msg_id, ValidationResult.ACCEPT, net.now)
    net.pump()
    assert [m.data for m in net.got[b.local]] == [b"wait"]
    assert [m.data for m in net.got[c.local]] == [b"wait"]
    assert not b.validation_result(msg_id, ValidationResult.ACCEPT, net.now)  # once


def test_deferred_reject_penalises_the_sender_and_the_copies() -> None:
    net = deferred_net()
    a, b, c = net.routers
    msg_id = a.publish(T, b"bad", net.now)
    net.pump()  # c forwards its copy to b while b still validates
    assert len(b.validations()) == 1  # the copy is not validated twice
    assert b.dropped["duplicate"] >= 1
    b.validation_result(msg_id, ValidationResult.REJECT, net.now)
    net.pump()
    assert net.got[b.local] == []
    assert b.peer_score(a.local, net.now) < 0 and b.peer_score(c.local, net.now) < 0  # P4
    assert b.dropped["rejected"] == 1


def test_deferred_ignore_and_timeout_drop_without_penalty() -> None:
    net = deferred_net()
    a, b, _c = net.routers
    first = a.publish(T, b"meh", net.now)
    a.publish(T, b"slow", net.now)
    net.pump()
    assert len(b.validations()) == 2
    b.validation_result(first, ValidationResult.IGNORE, net.now)
    net.now += b.params.validation_timeout
    b.heartbeat(net.now)
    assert b.dropped["validation timeout"] == 1 and b.dropped["ignored"] == 2
    assert b._pending == {}
    assert net.got[b.local] == []
    assert b.peer_score(a.local, net.now) >= 0


def test_deferred_validations_are_bounded() -> None:
    net = Net(2, params=GossipParams(max_pending_validations=3))
    net.connect(0, 1)
    a, b = net.routers
    for r in net.routers:
        r.join(T, net.now)
    b.defer_validation(T)
    net.pump()
    for k in range(5):
        a.publish(T, bytes([k]), net.now)
    net.pump()
    assert len(b.validations()) == 3
    assert b.dropped["validation throttled"] == 2
    assert b.peer_score(a.local, net.now) >= 0


def test_a_sync_validator_runs_before_the_deferred_one() -> None:
    net = deferred_net()
    a, b, _c = net.routers
    b.set_validator(T, lambda m: ValidationResult.REJECT)
    a.publish(T, b"x", net.now)
    net.pump()
    assert b.validations() == [] and b.dropped["rejected"] == 1


def test_bad_direct_and_validation_parameters_are_refused() -> None:
    for kw in ({"direct_connect_ticks": 0}, {"max_pending_validations": 0}):
        with pytest.raises(InvalidConfiguration):
            GossipParams(**kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration):
        GossipParams(validation_timeout=0.0)


def test_rejected_messages_end_in_the_graylist() -> None:
    # validly signed messages that the validator REJECTs: each costs P4, and after enough
    # of them the sender is graylisted (its RPCs no longer looked at), one RPC at a time
    # or packed into one
    for packed in (False, True):
        net = full_mesh_net(2)
        a, b = net.routers
        b.set_validator(T, lambda m: ValidationResult.REJECT)
        msgs = []
        for k in range(100):
            m = Message(topic=T, data=b"x", from_=a.local.to_bytes(), seqno=k.to_bytes(8, "big"))
            msgs.append(attrs.evolve(m, signature=a.key.sign(signing_bytes(m))))
        if packed:
            assert b.handle_rpc(a.local, RPC(publish=tuple(msgs)), net.now) == (
                "peer is graylisted"
            )
        else:
            answers = [b.handle_rpc(a.local, RPC(publish=(m,)), net.now) for m in msgs]
            assert answers[:2] == [None, None]
            assert answers[3:] == ["peer is graylisted"] * 97
        assert b.dropped["rejected"] == 3, packed
        assert b.dropped["graylisted"] == 97
        assert "invalid signature" not in b.dropped
        assert b.peer_score(a.local, net.now) < b.thresholds.graylist
        assert net.got[b.local] == []
