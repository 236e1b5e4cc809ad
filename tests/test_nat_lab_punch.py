"""Hole punching through real Linux NATs: a lab of network namespaces the test builds.

::

    h1 (192.168.71.2) ── r1 (home) ──┐
    h2 (192.168.72.2) ── r2 (home) ──┼── inet (10.77.0.0/24): the relay (10.77.0.1)
    h3 (192.168.73.2) ── r3 (sym)  ──┤
    h4 (192.168.74.2) ── r4 (sym)  ──┘

``home``: nftables masquerade (endpoint-independent, port-preserving mapping) with
inbound packets accepted only for established flows (port-restricted filtering), the
usual home router; ``sym``: masquerade ``random,fully-random`` (a new random port per
destination: symmetric).  ``A`` is ``switchy ping CIRCUIT`` (a default node), ``B`` a
default node behind another NAT with a reservation on the relay
(tests/netns_punch_peer.py).  Skips (with the reason) where namespaces, veth pairs or
nftables cannot be used; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.nat_lab_helpers import (
    ROOT,
    build_lab,
    finish,
    lab_or_skip,
    next_json,
    run_in,
    spawn,
)

SCRIPT = str(Path(__file__).with_name("netns_punch_peer.py"))
RELAY_IP = "10.77.0.1"
#: (router, host, symmetric) of the four LANs.
LANS = ((1, False), (2, False), (3, True), (4, True))
#: Bound on one lab peer's run.
PEER_TIMEOUT = 120


@attrs.frozen
class PunchLab:
    inet: str
    routers: tuple[str, ...]
    hosts: tuple[str, ...]


@contextlib.contextmanager
def build_punch_lab() -> Iterator[PunchLab]:
    """Build the lab (module docstring), remove it on exit; raises
    :class:`~tests.nat_lab_helpers.LabUnavailable` with the reason where it cannot be built."""
    tag = uuid.uuid4().hex[:5]
    lab = PunchLab(
        f"sp-inet-{tag}",
        tuple(f"sp-r{i}-{tag}" for i, _ in LANS),
        tuple(f"sp-h{i}-{tag}" for i, _ in LANS),
    )
    lans = [(r, h, sym) for (_, sym), r, h in zip(LANS, lab.routers, lab.hosts, strict=True)]
    with build_lab(lab.inet, [RELAY_IP], lans, tag, guard_routers=True):
        yield lab


@pytest.fixture(scope="module")
def punch_lab() -> Iterator[PunchLab]:
    with lab_or_skip(build_punch_lab()) as lab:
        yield lab


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT, "SWITCHY_PUBLIC_NETWORKS": "10.77.0.0/24"}


def _spawn(ns: str, *args: str) -> subprocess.Popen[str]:
    """A lab peer (tests/netns_punch_peer.py) in ``ns``."""
    return spawn(ns, SCRIPT, *args, env=_env())


@contextlib.contextmanager
def lab_relay(lab: PunchLab) -> Iterator[dict[str, str]]:
    """The relay in the lab's internet: its TCP and QUIC addresses."""
    proc = _spawn(lab.inet, "relay", RELAY_IP)
    try:
        addrs = [str(a) for a in next_json(proc)["addrs"]]
        yield {
            "quic": next(a for a in addrs if "/quic-v1" in a),
            "tcp": next(a for a in addrs if "/tcp/" in a),
        }
    finally:
        finish(proc)


@pytest.fixture(scope="module")
def relay(punch_lab: PunchLab) -> Iterator[dict[str, str]]:
    with lab_relay(punch_lab) as addrs:
        yield addrs


def punch(lab: PunchLab, relay_addr: str, kind: str, a: int, b: int, count: int) -> Any:
    """``B`` in LAN ``b`` reserves on the relay; ``switchy ping`` in LAN ``a`` pings its
    circuit address ``count`` times, once a second.  Returns (ping's JSON, B's events)."""
    peer = _spawn(lab.hosts[b - 1], "b", kind, relay_addr)
    try:
        circuit = next_json(peer)["circuit"]
        argv = ["-m", "switchy", "ping", circuit, "-c", str(count), "-i", "1", "--json"]
        ping = run_in(lab.hosts[a - 1], *argv, timeout=PEER_TIMEOUT, env=_env())
        assert ping.returncode == 0, ping.stderr
        events = next_json(peer)["events"]
        if os.environ.get("LAB_DEBUG"):
            print(ping.stdout, json.dumps(events, indent=1))
    finally:
        finish(peer)
    return json.loads(ping.stdout), events


def measure(lab: PunchLab, relay_addr: str, kind: str, a: int, b: int) -> Any:
    """``B`` in LAN ``b`` reserves on the relay; the measuring ``A`` in LAN ``a``
    (``netns_punch_peer.py a``) dials its circuit address, waits for the punch and
    measures ping round trips and one stream's throughput on the relayed connection,
    then on the direct one.  Returns (A's JSON, B's events)."""
    peer = _spawn(lab.hosts[b - 1], "b", kind, relay_addr)
    try:
        circuit = next_json(peer)["circuit"]
        a_side = _spawn(lab.hosts[a - 1], "a", circuit)
        try:
            got = next_json(a_side)
        finally:
            finish(a_side)
        events = next_json(peer)["events"]
    finally:
        finish(peer)
    return got, events


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_two_home_routers_punch_to_a_direct_connection(
    punch_lab: PunchLab, relay: dict[str, str], kind: str
) -> None:
    got, events = punch(punch_lab, relay[kind], kind, 1, 2, 5)
    ok = [e for e in events if e["kind"] == "succeeded"]
    assert ok, events
    assert ok[0]["attempt"] == 1, events  # neither side is public: a punch, the first one
    assert ok[0]["limited"] is False
    # the direct connection goes to A's router (its NAT mapping), not through the relay
    assert ok[0]["remote"].startswith("/ip4/10.77.0.11/"), ok
    assert (kind == "quic") == ("/quic-v1" in ok[0]["remote"])
    assert got["direct_after_ms"] is not None, got
    assert got["direct_addr"].startswith("/ip4/10.77.0.12/"), got
    assert got["direct_rtts_ms"], got  # the later pings went over the direct connection
    assert got["relayed_rtts_ms"], got  # the first one through the relay


@pytest.mark.parametrize("kind", ["tcp", "quic"])
@pytest.mark.parametrize(("a", "b", "count"), [(3, 4, 18), (1, 3, 4)])
def test_behind_a_symmetric_nat_the_connection_stays_relayed_and_works(
    punch_lab: PunchLab, relay: dict[str, str], kind: str, a: int, b: int, count: int
) -> None:
    """Symmetric vs symmetric, and a home router vs a symmetric ``B``: no punch can work
    (each packet toward the peer leaves from a mapping it never learned).  The relayed
    connection carries every ping; with symmetric NATs on both sides ``B`` makes its 3
    attempts (while the ping runs, 18 s) and then backs off; against the home router
    only the short run, until ``A`` leaves."""
    got, events = punch(punch_lab, relay[kind], kind, a, b, count)
    assert not [e for e in events if e["kind"] == "succeeded"], events
    final = [e for e in events if e["final"]]
    assert len(final) == 1 and "backing off" in final[0]["reason"], events
    if count > 4:
        assert final[0]["attempt"] == 3, events
    assert got["direct_after_ms"] is None, got
    assert got["count"] == count and len(got["relayed_rtts_ms"]) == count, got
    assert got["direct_rtts_ms"] == [], got


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_after_the_punch_both_connections_carry_pings_and_a_stream(
    punch_lab: PunchLab, relay: dict[str, str], kind: str
) -> None:
    """The benchmark's measurement: once the punch made the connection direct, the
    relayed one (still up for its grace period) and the direct one each carry pings and
    a stream (``LAB_THROUGHPUT_BYTES``), measured from ``A``; the figures themselves are
    the benchmark's."""
    got, events = measure(punch_lab, relay[kind], kind, 1, 2)
    assert [e for e in events if e["kind"] == "succeeded"], events
    assert got["direct_after_s"] is not None, got
    assert got["direct_addr"].startswith("/ip4/10.77.0.12/"), got
    for path in ("relayed", "direct"):
        assert 0 < got[path]["rtt_min_s"] <= got[path]["rtt_s"], got
        assert got[path]["throughput_Bps"] is not None and got[path]["throughput_Bps"] > 0, got
