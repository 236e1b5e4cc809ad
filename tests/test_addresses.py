"""Multiaddr helpers and the IP helpers."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.stack.addresses import (
    ip_address_of,
    ip_of,
    multiaddr_from_bytes,
    normalized_ip,
    parse_multiaddr,
    split_peer,
    with_peer,
)
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


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("2a151515"),  # str() "works" (/ip6zone/...), len() raises
        bytes.fromhex("04010203"),  # /ip4 cut short
        bytes.fromhex("ffff"),  # no such protocol
        Multiaddr("/ip4/1.2.3.4/tcp/80").to_bytes() + b"\x06",  # a trailing half component
    ],
)
def test_multiaddr_from_bytes_takes_only_bytes_that_round_trip(raw: bytes) -> None:
    assert multiaddr_from_bytes(raw, 1024) is None


def test_multiaddr_from_bytes_takes_good_addresses_within_the_size() -> None:
    for text in ("/ip4/1.2.3.4/tcp/80", "/ip6/::1/udp/4001/quic-v1", "/dns4/example.com/tcp/1"):
        raw = Multiaddr(text).to_bytes()
        assert multiaddr_from_bytes(raw, len(raw)) == Multiaddr(text)
        assert multiaddr_from_bytes(raw, len(raw) - 1) is None


def test_the_decoders_skip_an_address_that_does_not_round_trip() -> None:
    from switchy.protocols.dcutr.pb import HolePunchType, decode_holepunch
    from switchy.protocols.kad.pb import KadPeer, decode_message
    from switchy.stack.codec import pb_bytes, pb_varint

    lazy = bytes.fromhex("2a151515")
    good = Multiaddr("/ip4/1.2.3.4/tcp/80")
    punch = decode_holepunch(pb_varint(1, 100) + pb_bytes(2, lazy) + pb_bytes(2, good.to_bytes()))
    assert (punch.type, punch.obs_addrs) == (HolePunchType.CONNECT, (good,))
    peer_id = KeyPair.generate().peer_id
    kad_peer = pb_bytes(1, peer_id.to_bytes()) + pb_bytes(2, lazy) + pb_bytes(2, good.to_bytes())
    message = decode_message(pb_varint(1, 4) + pb_bytes(8, kad_peer))
    assert message.closer_peers == (KadPeer(peer_id, (good,), 0),)


# --- IP helpers -----------------------------------------------------------------------------


def test_normalized_ip_drops_the_zone_and_unwraps_ipv4_mapped_addresses() -> None:
    assert normalized_ip("1.2.3.4") == ipaddress.IPv4Address("1.2.3.4")
    assert normalized_ip("::ffff:1.2.3.4") == ipaddress.IPv4Address("1.2.3.4")
    assert normalized_ip("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    assert normalized_ip("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    for bad in ("", "example.com", "1.2.3", "1.2.3.4.5", "::g", "%eth0", "/ip4/1.2.3.4"):
        assert normalized_ip(bad) is None, bad


def test_ip_of_and_ip_address_of_read_the_first_component_only() -> None:
    assert ip_of(Multiaddr("/ip4/1.2.3.4/tcp/1")) == "1.2.3.4"
    assert ip_of(Multiaddr("/ip6/::1/udp/1/quic-v1")) == "::1"
    mapped = Multiaddr("/ip6/::ffff:1.2.3.4/tcp/1")
    assert ip_of(mapped) == "::ffff:1.2.3.4"
    # as written: the mapped address stays IPv6 (normalized_ip unwraps it)
    assert ip_address_of(mapped) == ipaddress.IPv6Address("::ffff:1.2.3.4")
    assert normalized_ip(ip_of(mapped) or "") == ipaddress.IPv4Address("1.2.3.4")
    for other in (
        "/dns4/example.com/tcp/1",
        "/memory/7",
        f"/p2p/{PID}/p2p-circuit",
        f"/p2p/{PID}/ip4/1.2.3.4/tcp/1",  # an IP that is not first
        "",
    ):
        assert ip_of(Multiaddr(other)) is None, other
        assert ip_address_of(Multiaddr(other)) is None, other


def test_ip_of_a_malformed_address_is_none() -> None:
    lenient = Multiaddr(bytes.fromhex("2a151515"))  # parses lazily; its components do not
    assert ip_of(lenient) is None
    assert ip_address_of(lenient) is None


@given(st.ip_addresses())
def test_normalized_ip_round_trips_every_address(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    got = normalized_ip(str(ip))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        assert got == ip.ipv4_mapped
    else:
        assert got == ip
    if isinstance(ip, ipaddress.IPv6Address):
        assert normalized_ip(f"{ip}%eth0") == got


@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_ip_of_finds_the_ip_of_any_ip_multiaddr(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    addr = Multiaddr(f"/ip{ip.version}/{ip}/tcp/{port}")
    text = ip_of(addr)
    assert text is not None
    assert ipaddress.ip_address(text) == ip
    assert ip_address_of(addr) == ip


@given(st.text(max_size=40))
def test_normalized_ip_never_raises(text: str) -> None:
    got = normalized_ip(text)
    assert got is None or isinstance(got, ipaddress.IPv4Address | ipaddress.IPv6Address)
