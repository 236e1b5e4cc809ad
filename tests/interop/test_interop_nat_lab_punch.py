"""Interop in the punching lab: py-libp2p 0.8.1 as ``B`` behind one home router (it
reserves on our relay), ``switchy ping`` as ``A`` behind the other; py-libp2p's DCUtR
and ours punch through both NATs over TCP (simultaneous open: py-libp2p dials from its
listen port as the responder, we dial as the client)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.harness import PEER_SCRIPT
from tests.nat_lab_helpers import ROOT
from tests.test_nat_lab_punch import PunchLab, _env, punch_lab, relay

pytestmark = pytest.mark.interop

__all__ = ["punch_lab", "relay"]  # the fixtures, imported for this module


def test_pylibp2p_as_b_behind_a_home_router_punches_with_us(
    interop_python: Path, punch_lab: PunchLab, relay: dict[str, str]
) -> None:
    argv = ["dcutr-listen", relay["tcp"], "--ip", "0.0.0.0", "--port", "4001"]
    peer = subprocess.Popen(
        ["ip", "netns", "exec", punch_lab.hosts[1], str(interop_python), str(PEER_SCRIPT), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert peer.stdout is not None
        info = json.loads(peer.stdout.readline())
        argv = ["-m", "switchy", "ping", info["addrs"][0], "-c", "20", "-i", "1", "--json"]
        ping = subprocess.run(
            ["ip", "netns", "exec", punch_lab.hosts[0], sys.executable, *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(),
            cwd=ROOT,
        )
        assert ping.returncode == 0, ping.stderr
        got = json.loads(ping.stdout)
    finally:
        out, _ = peer.communicate(input="", timeout=30)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any("direct" in line for line in lines), lines  # py-libp2p sees it direct too
    # about 12 s: py-libp2p's auto-drive loop looks every 2 s, and first spends its 10 s
    # dial timeout on our (private, unreachable) LAN address, the unilateral step
    assert got["direct_after_ms"] is not None, got
    assert got["direct_addr"].startswith("/ip4/10.77.0.12/tcp/4001"), got
    assert got["direct_rtts_ms"], got
