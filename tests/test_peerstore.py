"""The peer store stays bounded under a stream of fresh identities, and never forgets a
peer the node keeps (a connected one)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.stack.identity import KeyPair, PeerId
from switchy.stack.peerstore import MAX_ADDRS_PER_PEER, PeerStore

IDS = [KeyPair.from_seed(bytes([i]) * 32).peer_id for i in range(40)]
ADDR = Multiaddr("/ip4/127.0.0.1/tcp/4001")


def test_least_recently_used_records_go_first_and_kept_peers_stay() -> None:
    kept = IDS[0]
    store = PeerStore(max_peers=3, keep=lambda p: p == kept)
    for peer in IDS[:3]:
        store.add_addrs(peer, [ADDR])
    store.get(IDS[1])  # used again: IDS[2] is now the oldest the store may forget
    store.add_addrs(IDS[3], [ADDR])
    assert store.peers() == [IDS[0], IDS[1], IDS[3]]
    assert store.addrs(kept) == [ADDR]
    for peer in IDS[4:20]:  # a stream of fresh identities
        store.set_protocols(peer, ["/x/1"])
    assert len(store.peers()) == 3 and kept in store


def test_every_record_kept_grows_past_the_bound_rather_than_forget() -> None:
    store = PeerStore(max_peers=2, keep=lambda p: True)
    for peer in IDS[:5]:
        store.get(peer)
    assert store.peers() == IDS[:5]


@given(st.lists(st.integers(0, 39), max_size=200), st.integers(1, 10))
def test_the_store_never_holds_more_than_its_bound(ops: list[int], bound: int) -> None:
    store = PeerStore(max_peers=bound)
    for i in ops:
        store.add_addrs(IDS[i], [ADDR] * 2)
        assert len(store.peers()) <= bound
        assert IDS[i] in store and len(store.addrs(IDS[i])) <= MAX_ADDRS_PER_PEER


def test_a_node_keeps_the_records_of_its_connected_peers() -> None:
    from switchy.stack.node import Node
    from switchy.transports.tcp import TcpTransport

    node = Node(transports=[TcpTransport()])
    peer: PeerId = IDS[5]
    node._connections[peer] = []  # as if connected
    node.peerstore._max_peers = 2
    node.peerstore.get(peer)
    for other in IDS[6:12]:
        node.peerstore.get(other)
    assert peer in node.peerstore and len(node.peerstore.peers()) == 2
