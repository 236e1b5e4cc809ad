"""Gossipsub v1.1 peer exchange with signed peer records, and the IP colocation score (P6)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from multiaddr import Multiaddr

from switchy.presets import default_node
from switchy.protocols.pubsub import GOSSIPSUB_V11, PubSub
from switchy.protocols.pubsub.core import GossipSub
from switchy.protocols.pubsub.pb import (
    MAX_PEER_RECORD_SIZE,
    RPC,
    Control,
    PeerInfo,
    Prune,
    SubOpts,
    decode_rpc,
    encode_rpc,
)
from switchy.protocols.pubsub.score import PeerScore, PeerScoreParams, PeerScoreThresholds
from switchy.stack.codec import frame_message
from switchy.stack.envelope import PeerRecord, seal_envelope, seal_peer_record
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import KeyPair, PeerId
from tests.pubsub_helpers import key

T = "topic"
ADDR = Multiaddr("/ip4/192.0.2.7/tcp/4001")


def record_of(k: KeyPair, *addrs: Multiaddr, seq: int = 1) -> bytes:
    """``k``'s own signed peer record."""
    return seal_peer_record(k, PeerRecord(k.peer_id, seq, addrs))


def forged_record(signer: KeyPair, victim: PeerId, *addrs: Multiaddr) -> bytes:
    """A peer record claiming ``victim``'s id, signed by ``signer`` (envelope well formed)."""
    payload = PeerRecord(victim, 1, addrs).encode()
    return seal_envelope(signer, "libp2p-peer-record", b"\x03\x01", payload)


def px_router() -> tuple[GossipSub, PeerId]:
    """A router that accepts PX from its one peer (returned)."""
    b = GossipSub(key(7), thresholds=PeerScoreThresholds(accept_px=0.0))
    a = key(1).peer_id
    b.add_peer(a, GOSSIPSUB_V11, outbound=True)
    return b, a


def prune_with(*infos: PeerInfo) -> RPC:
    return RPC(control=Control(prune=(Prune(T, infos, 60),)))


# --- peer exchange: what a PRUNE offers -------------------------------------------------


def test_prune_offers_the_signed_records_it_knows() -> None:
    records = {key(3).peer_id: record_of(key(3), ADDR)}
    r = GossipSub(key(1), signed_records=records.get)
    pruned, others = key(2).peer_id, [key(3).peer_id, key(4).peer_id]
    for p in [pruned, *others]:
        r.add_peer(p, GOSSIPSUB_V11, outbound=True)
        r.handle_rpc(p, RPC(subscriptions=(SubOpts(True, T),)), 0.0)
    r.outgoing()
    r._send_prune(T, pruned, 0.0)
    (rpc,) = [decode_rpc(data) for peer, data in r.outgoing() if peer == pruned]
    assert rpc.control is not None
    (prune,) = rpc.control.prune
    offered = {PeerId.from_bytes(i.peer_id): i.signed_record for i in prune.peers}
    # the record passes unchanged (still verifiable); a peer without one goes as an id
    assert offered == {key(3).peer_id: records[key(3).peer_id], key(4).peer_id: None}


def test_a_record_above_the_wire_limit_is_not_offered() -> None:
    r = GossipSub(key(1), signed_records=lambda p: b"x" * (MAX_PEER_RECORD_SIZE + 1))
    assert r._record(key(3).peer_id) is None
    assert GossipSub(key(1))._record(key(3).peer_id) is None  # no source of records


# --- peer exchange: what a PRUNE received is worth --------------------------------------


def test_a_valid_signed_record_is_taken_with_its_addresses() -> None:
    b, a = px_router()
    c = key(3)
    b.handle_rpc(a, prune_with(PeerInfo(c.peer_id.to_bytes(), record_of(c, ADDR))), 0.0)
    ((peer, record),) = b.px_candidates()
    assert peer == c.peer_id and record is not None and record.addrs == (ADDR,)
    assert "invalid peer record" not in b.dropped


def test_forged_tampered_and_misattributed_records_are_ignored() -> None:
    b, a = px_router()
    c, d = key(3), key(4)
    tampered = bytearray(record_of(c, ADDR))
    tampered[-1] ^= 1  # the signature's last byte
    entries = (
        # c's id, a record claiming c but signed by the pruning peer
        PeerInfo(c.peer_id.to_bytes(), forged_record(key(1), c.peer_id, ADDR)),
        PeerInfo(c.peer_id.to_bytes(), bytes(tampered)),
        # d's id with c's genuine record: valid, but not d's
        PeerInfo(d.peer_id.to_bytes(), record_of(c, ADDR)),
        PeerInfo(d.peer_id.to_bytes(), b"\x0a\x02not an envelope"),
    )
    b.handle_rpc(a, prune_with(*entries), 0.0)
    assert b.px_candidates() == []
    assert b.dropped["invalid peer record"] == 4


def test_an_entry_without_a_record_offers_the_id_alone_and_duplicates_once() -> None:
    b, a = px_router()
    c = key(3)
    entry = PeerInfo(c.peer_id.to_bytes())
    b.handle_rpc(a, prune_with(entry, entry, PeerInfo(b.local.to_bytes())), 0.0)
    assert b.px_candidates() == [(c.peer_id, None)]  # ourselves left out


def test_px_from_a_peer_below_accept_px_is_not_even_verified() -> None:
    b = GossipSub(key(7))  # accept_px 10: a new peer (score 0) is below it
    a = key(1).peer_id
    b.add_peer(a, GOSSIPSUB_V11, outbound=True)
    b.handle_rpc(a, prune_with(PeerInfo(key(3).peer_id.to_bytes(), b"garbage")), 0.0)
    assert b.px_candidates() == [] and "invalid peer record" not in b.dropped


# --- peer exchange over a network: the record's addresses are dialled, a forged one's not --


def test_pubsub_dials_the_addresses_of_a_verified_record_only() -> None:
    async def main() -> None:
        ps = PubSub(
            thresholds=PeerScoreThresholds(accept_px=0.0),
            score_params=PeerScoreParams(ip_colocation_factor_whitelist=()),
        )
        listen = ["/ip4/127.0.0.1/tcp/0"]
        async with (
            default_node(services=[ps], listen=listen) as b,
            default_node(listen=listen) as pruner,
            default_node(listen=listen) as c,
            default_node(listen=listen) as d,
        ):
            connected = asyncio.Event()
            b.on_connection_event(lambda ev: connected.set() if ev.peer == c.peer_id else None)
            stream = await pruner.open_stream(b.full_addrs[0], GOSSIPSUB_V11)
            hello = encode_rpc(RPC(subscriptions=(SubOpts(True, T),)))
            await stream.write(frame_message(hello, 1 << 20))
            # first a record claiming d (at d's real address) signed by the pruner ...
            forged = forged_record(pruner.key, d.peer_id, *d.listen_addrs)
            rpc = prune_with(PeerInfo(d.peer_id.to_bytes(), forged))
            await stream.write(frame_message(encode_rpc(rpc), 1 << 20))
            # ... then c's genuine record: b learns c's address from it alone
            genuine = record_of(c.key, *c.listen_addrs)
            rpc = prune_with(PeerInfo(c.peer_id.to_bytes(), genuine))
            await stream.write(frame_message(encode_rpc(rpc), 1 << 20))
            await asyncio.wait_for(connected.wait(), 20)
            assert b.connections(c.peer_id)
            assert ps.router.dropped["invalid peer record"] == 1
            # the service told the router where the pruner connects from (P6)
            assert ps.router.score._peers[pruner.peer_id].ips == ("127.0.0.1",)
            # the forged entry came first and was handled before c's: it was never used
            assert not b.connections(d.peer_id) and not b.peerstore.addrs(d.peer_id)
            await stream.reset()

    asyncio.run(asyncio.wait_for(main(), 60))


# --- P6: IP colocation ------------------------------------------------------------------


def scored(
    n: int, ip: str, params: PeerScoreParams | None = None
) -> tuple[PeerScore, list[PeerId]]:
    score = PeerScore(params or PeerScoreParams())
    peers = [key(100 + i).peer_id for i in range(n)]
    for p in peers:
        score.add_peer(p, [ip])
    return score, peers


def test_p6_is_the_squared_surplus_over_the_threshold() -> None:
    params = PeerScoreParams(ip_colocation_factor_weight=-2.0, ip_colocation_factor_threshold=10)
    score, peers = scored(10, "198.51.100.1", params)
    assert all(score.score(p, 0.0) == 0.0 for p in peers)  # at the threshold: no penalty
    for i in range(3):
        score.add_peer(key(200 + i).peer_id, ["198.51.100.1"])
    other = key(300).peer_id
    score.add_peer(other, ["203.0.113.9"])
    assert score.ip_colocation(peers[0]) == 9.0  # 13 peers, 3 over: 3 squared
    assert score.score(peers[0], 0.0) == -18.0
    assert score.score(other, 0.0) == 0.0  # alone at its IP


def test_p6_counts_each_ip_of_a_peer_and_ignores_malformed_ones() -> None:
    params = PeerScoreParams(ip_colocation_factor_threshold=1)
    score = PeerScore(params)
    a, b, c = (key(i).peer_id for i in (1, 2, 3))
    score.add_peer(a, ["198.51.100.1", "2001:db8::1", "not an ip"])
    score.add_peer(b, ["198.51.100.1"])
    score.add_peer(c, ["2001:db8::1"])
    assert score.ip_colocation(a) == 2.0  # one over at each of its two addresses
    assert score.score(a, 0.0) == -2.0
    assert score.ip_colocation(b) == 1.0


def test_p6_whitelist_and_loopback_default() -> None:
    score, peers = scored(20, "127.0.0.1")
    assert score.ip_colocation(peers[0]) == 0.0  # loopback is whitelisted by default
    params = PeerScoreParams(ip_colocation_factor_whitelist=["10.0.0.0/8"])
    score, peers = scored(20, "10.1.2.3", params)
    assert score.score(peers[0], 0.0) == 0.0
    assert params.ip_colocation_factor_whitelist == (ipaddress.ip_network("10.0.0.0/8"),)
    score, peers = scored(20, "127.0.0.1", PeerScoreParams(ip_colocation_factor_whitelist=()))
    assert score.score(peers[0], 0.0) == -100.0  # 10 over: 10 squared, weight -1


def test_p6_weight_zero_turns_it_off_and_bad_parameters_are_refused() -> None:
    score, peers = scored(20, "198.51.100.1", PeerScoreParams(ip_colocation_factor_weight=0.0))
    assert score.score(peers[0], 0.0) == 0.0
    with pytest.raises(InvalidConfiguration, match="ip_colocation_factor_weight"):
        PeerScoreParams(ip_colocation_factor_weight=1.0)
    with pytest.raises(InvalidConfiguration, match="ip_colocation_factor_threshold"):
        PeerScoreParams(ip_colocation_factor_threshold=0.5)
    with pytest.raises(InvalidConfiguration, match="whitelist"):
        PeerScoreParams(ip_colocation_factor_whitelist=["10.0.0.300/8"])


def test_p6_follows_peers_leaving_and_retained_scores_expiring() -> None:
    params = PeerScoreParams(ip_colocation_factor_threshold=2, retain_score=10.0)
    score, peers = scored(4, "198.51.100.1", params)
    assert score.ip_colocation(peers[0]) == 4.0
    # a negatively scored peer is retained when it leaves: it still counts, so a sybil
    # cannot shed the penalty by cycling its connections
    score.remove_peer(peers[3], 0.0)
    assert score.ip_colocation(peers[0]) == 4.0
    score.refresh(11.0)  # the retained counters expire
    assert score.ip_colocation(peers[0]) == 1.0
    score.set_ips(peers[2], ["203.0.113.1"])  # a peer seen at another address now
    assert score.ip_colocation(peers[0]) == 0.0


def test_sybils_at_one_ip_are_kept_out_of_the_mesh() -> None:
    r = GossipSub(key(1))
    sybils = [key(10 + i).peer_id for i in range(14)]
    honest = [key(50 + i).peer_id for i in range(4)]
    for p in sybils:
        r.add_peer(p, GOSSIPSUB_V11, outbound=False, ips=["198.51.100.66"])
    for i, p in enumerate(honest):
        r.add_peer(p, GOSSIPSUB_V11, outbound=True, ips=[f"203.0.113.{i + 1}"])
    for p in sybils + honest:
        r.handle_rpc(p, RPC(subscriptions=(SubOpts(True, T),)), 0.0)
    r.join(T, 0.0)
    r.heartbeat(1.0)
    assert r.mesh[T] == set(honest)  # 14 at one IP (threshold 10): 16 each, below 0
    assert r.peer_score(sybils[0], 1.0) == -16.0
