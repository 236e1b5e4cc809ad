"""Multiaddr helpers."""

from __future__ import annotations

import pytest
from multiaddr import Multiaddr

from switchy.stack.addresses import parse_multiaddr, split_peer, with_peer
from switchy.stack.errors import InvalidConfiguration, InvalidPeerId
from switchy.stack.identity import KeyPair

PID = KeyPair.from_seed(bytes(32)).peer_id


def test_split_and_join() -> None:
    addr = Multiaddr(f"/ip4/127.0.0.1/tcp/4001/p2p/{PID}")
    base, peer = split_peer(addr)
    assert base == Multiaddr("/ip4/127.0.0.1/tcp/4001")
    assert peer == PID
    assert with_peer(base, PID) == addr
    assert with_peer(addr, PID) == addr


def test_no_peer() -> None:
    assert split_peer("/ip6/::1/tcp/1") == (Multiaddr("/ip6/::1/tcp/1"), None)


def test_relay_address_keeps_inner_peer() -> None:
    inner = KeyPair.from_seed(b"\x01" * 32).peer_id
    addr = f"/ip4/1.2.3.4/tcp/1/p2p/{inner}/p2p-circuit/p2p/{PID}"
    base, peer = split_peer(addr)
    assert peer == PID
    assert str(base).endswith(f"/p2p/{inner}/p2p-circuit")


def test_errors() -> None:
    with pytest.raises(InvalidConfiguration, match="invalid multiaddr"):
        parse_multiaddr("/ip4/999.1.1.1/tcp/1")
    with pytest.raises(InvalidConfiguration):
        parse_multiaddr("not an address")
    with pytest.raises((InvalidPeerId, InvalidConfiguration)):
        split_peer("/ip4/1.2.3.4/tcp/1/p2p/QmNotARealPeerIdAtAll")
