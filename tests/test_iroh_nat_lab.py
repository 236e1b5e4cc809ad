"""The iroh transport in the namespace NAT lab (the lab of tests/test_nat_lab.py), no relay.

What it shows: from behind a NAT an iroh dial to a public node works (an outbound UDP flow);
toward a node behind a NAT it cannot, because iroh's hole punching exchanges candidate
addresses over a relay connection and there is none (the n0 relays are not reachable from
the lab, and a relay of our own would need a web-PKI certificate the bindings trust).  The
failing dial ends at the node's dial timeout, with our error.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import test_nat_lab
from tests.nat_lab_helpers import next_json, spawn
from tests.test_nat_lab import PUBLIC_CLIENT_IP, Lab

pytest.importorskip("iroh", reason="the iroh wheel (extra switchy-p2p[iroh]) is not installed")

SCRIPT = str(Path(__file__).with_name("netns_iroh_peer.py"))


#: The namespace NAT lab of tests/test_nat_lab.py (module-scoped; skips where it cannot be built).
nat_lab = test_nat_lab.lab


def _peer(ns: str, *args: str) -> subprocess.Popen[str]:
    return spawn(ns, SCRIPT, *args)


def _dial(ns: str, addr: str, timeout: float) -> dict[str, Any]:
    proc = _peer(ns, "dial", addr, str(timeout))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    result: dict[str, Any] = json.loads(out.splitlines()[0])
    return result


def test_from_behind_a_nat_an_iroh_dial_to_a_public_node_pings(nat_lab: Lab) -> None:
    server = _peer(nat_lab.inet, "listen", PUBLIC_CLIENT_IP)
    try:
        addr = next_json(server)["addr"]
        got = _dial(nat_lab.h1, addr, 10.0)
        assert got["ok"], got
    finally:
        server.communicate(input="", timeout=30)


def test_without_a_relay_a_node_behind_a_nat_cannot_be_reached(nat_lab: Lab) -> None:
    server = _peer(nat_lab.h1, "listen", "192.168.71.2")
    try:
        addr = next_json(server)["addr"]
        # its address as the internet would see it: r1 preserves ports, but only lets in
        # flows h1 started
        outside = addr.replace("/ip4/192.168.71.2/", "/ip4/10.77.0.11/")
        got = _dial(nat_lab.inet, outside, 2.0)
        assert not got["ok"]
        assert got["error"].startswith("ConnectionFailed: ") and "within 2.0s" in got["error"]
    finally:
        server.communicate(input="", timeout=30)
