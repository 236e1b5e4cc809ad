"""Real Linux NATs: a lab of network namespaces the test builds itself.

::

    h1 (192.168.71.2) ── r1 ──┐                      r1: nftables masquerade (the usual
                              ├── inet (10.77.0.0/24)     home router: port-preserving,
    h2 (192.168.72.2) ── r2 ──┘    relay + 4 AutoNAT      inbound only for established)
                                   servers, a public   r2: masquerade random,fully-random
                                   client                  (symmetric)

``inet`` is the lab's internet: a bridge holding 10.77.0.1-.6 (relay, servers, the public
client), r1 at 10.77.0.11, r2 at 10.77.0.12.  10.77.0.0/24 counts as public in the
peers' config (``public_networks``); the LANs are private ranges.  No namespace has a
route to the machine's own network.  Skips (with the reason) where namespaces, veth
pairs or nftables cannot be used.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.nat_lab_helpers import build_lab, finish, lab_or_skip, next_json, run_in, spawn

SCRIPT = str(Path(__file__).with_name("netns_nat_peer.py"))
SERVER_IPS = ["10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4", "10.77.0.5"]
PUBLIC_CLIENT_IP = "10.77.0.6"


@attrs.frozen
class Lab:
    inet: str
    r1: str
    r2: str
    h1: str
    h2: str


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:5]
    names = Lab(*(f"sn{k}-{tag}" for k in ("inet", "r1", "r2", "h1", "h2")))
    lans = [(names.r1, names.h1, False), (names.r2, names.h2, True)]
    with lab_or_skip(build_lab(names.inet, [*SERVER_IPS, PUBLIC_CLIENT_IP], lans, tag)):
        yield names


def _peer(ns: str, *args: str) -> subprocess.Popen[str]:
    return spawn(ns, SCRIPT, *args)


@pytest.fixture(scope="module")
def servers(lab: Lab) -> Iterator[list[str]]:
    proc = _peer(lab.inet, "servers", *SERVER_IPS)
    try:
        addrs = next_json(proc)["addrs"]
        assert isinstance(addrs, list)
        yield [str(a) for a in addrs]
    finally:
        finish(proc)


def test_the_lab_has_no_way_out(lab: Lab) -> None:
    """No namespace of the lab routes anywhere but the lab."""
    for ns in attrs.astuple(lab):
        routes = subprocess.run(
            ["ip", "-n", ns, "route", "show"], capture_output=True, text=True, check=True
        ).stdout
        for line in routes.splitlines():
            dest = line.split()[0]
            assert dest.startswith(("10.77.0.", "192.168.7")) or (
                dest == "default" and "via 192.168.7" in line
            ), (ns, line)


def test_a_node_in_the_internet_finds_it_is_public(lab: Lab, servers: list[str]) -> None:
    listen = f"/ip4/{PUBLIC_CLIENT_IP}/tcp/4002"
    proc = _peer(lab.inet, "client", "public", listen, *servers)
    try:
        got = next_json(proc)
    finally:
        finish(proc)
    assert got["reachability"] == "public"
    assert got["relays"] == []
    announced = [str(a) for a in got["announced"]]
    assert announced == [listen]
    assert got["verdicts"] == {listen: "public"}


@pytest.mark.parametrize(("host", "router_ip"), [("h1", "10.77.0.11"), ("h2", "10.77.0.12")])
def test_a_node_behind_the_nat_is_private_and_reserves_on_the_relay(
    lab: Lab, servers: list[str], host: str, router_ip: str
) -> None:
    proc = _peer(getattr(lab, host), "client", "private", "/ip4/0.0.0.0/tcp/4001", *servers)
    try:
        got = next_json(proc)
        assert got["reachability"] == "private"
        announced = [str(a) for a in got["announced"]]
        assert not any("/0.0.0.0/" in a for a in announced)  # the wildcard is expanded
        assert f"/ip4/192.168.7{host[1]}.2/tcp/4001" in announced
        relay_id = servers[0].rsplit("/", 1)[1]
        assert got["relays"] == [relay_id]
        circuits = [str(c) for c in got["circuits"]]
        assert circuits and all(f"/p2p/{relay_id}/p2p-circuit/p2p/" in c for c in circuits)
        assert set(circuits) <= {f"{a}/p2p/{c.rsplit('/', 1)[1]}" for a in got["announced"]
                                 for c in circuits}  # fmt: skip
        # the NAT's address was observed (a hole-punching candidate), never confirmed:
        # AutoNAT's dial-backs do not get through
        candidates = [str(c) for c in got["candidates"]]
        assert candidates and all(c.startswith(f"/ip4/{router_ip}/tcp/") for c in candidates)
        assert got["confirmed"] == []
        if host == "h1":  # port-preserving masquerade of a dial from the listening port
            assert candidates == [f"/ip4/{router_ip}/tcp/4001"]
        else:  # fully random: one mapping per server
            assert len(candidates) > 1
        # a public node reaches her through the relay
        ping = run_in(lab.inet, SCRIPT, "ping", circuits[0], timeout=60)
        assert ping.returncode == 0, ping.stderr
        assert json.loads(ping.stdout)["rtt"] > 0
    finally:
        finish(proc)
