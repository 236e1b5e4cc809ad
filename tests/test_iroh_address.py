"""The iroh multiaddr form and the peer id / endpoint id mapping (no iroh package needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.stack.errors import InvalidConfiguration, InvalidPeerId
from switchy.stack.identity import KeyPair, PeerId, PublicKey
from switchy.transports.iroh.address import (
    IrohAddr,
    endpoint_id_of,
    iroh_multiaddr,
    parse_iroh_addr,
    peer_id_of,
)


@given(st.binary(min_size=32, max_size=32))
def test_endpoint_id_and_peer_id_map_both_ways(seed: bytes) -> None:
    key = KeyPair.from_seed(seed)
    assert endpoint_id_of(key.peer_id) == key.public_bytes
    assert peer_id_of(key.public_bytes) == key.peer_id


def test_non_ed25519_peers_and_bad_ids_are_refused() -> None:
    secp = PublicKey(2, b"\x02" + b"\x11" * 32).to_peer_id()
    with pytest.raises(InvalidPeerId, match="not an Ed25519 key"):
        endpoint_id_of(secp)
    with pytest.raises(InvalidPeerId, match="32 bytes, got 31"):
        peer_id_of(b"\x00" * 31)


@given(
    st.sampled_from(["127.0.0.1:4001", "[::1]:9", "10.1.2.3:65535", None]),
    st.one_of(st.none(), st.sampled_from(["https://relay.example/", "https://r.x:8443/a?b=c"])),
    st.booleans(),
)
def test_addresses_round_trip_text_and_binary(
    sock: str | None, relay: str | None, with_peer: bool
) -> None:
    peer = KeyPair.from_seed(b"\x07" * 32).peer_id if with_peer else None
    addr = iroh_multiaddr(sock, peer=peer, relay_url=relay)
    assert parse_iroh_addr(addr) == IrohAddr(peer, sock, relay)
    assert parse_iroh_addr(Multiaddr(str(addr))) == IrohAddr(peer, sock, relay)
    assert parse_iroh_addr(Multiaddr(addr.to_bytes())) == IrohAddr(peer, sock, relay)


def test_the_documented_forms() -> None:
    peer = KeyPair.from_seed(b"\x01" * 32).peer_id
    listen = parse_iroh_addr(Multiaddr("/ip4/0.0.0.0/udp/0/iroh"))
    assert listen == IrohAddr(None, "0.0.0.0:0", None)
    by_id = parse_iroh_addr(Multiaddr(f"/iroh/p2p/{peer}"))
    assert by_id == IrohAddr(peer, None, None)
    relayed = parse_iroh_addr(Multiaddr(f"/iroh-relay/https%3A%2F%2Fr.example%2F/iroh/p2p/{peer}"))
    assert relayed == IrohAddr(peer, None, "https://r.example/")


@pytest.mark.parametrize(
    "text",
    [
        "/ip4/127.0.0.1/udp/1/quic-v1",
        "/ip4/127.0.0.1/tcp/1/iroh",
        "/ip4/127.0.0.1/udp/1/iroh/http",
        "/dns4/example.com/udp/1/iroh",
        "/memory/4001",
    ],
)
def test_other_addresses_are_not_iroh(text: str) -> None:
    assert parse_iroh_addr(Multiaddr(text)) is None


def test_a_malformed_socket_address_is_refused() -> None:
    with pytest.raises(InvalidConfiguration, match="host:port"):
        iroh_multiaddr("localhost")
    assert isinstance(PeerId.from_string(str(KeyPair.generate().peer_id)), PeerId)
