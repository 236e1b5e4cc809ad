"""Interop in the punching lab, the other role: py-libp2p 0.8.1 as ``A`` behind one home
router dials our ``B`` (a default node behind the other home router, with a
reservation on our relay) through the relay; ``B`` accepted the relayed connection and
starts DCUtR; py-libp2p answers CONNECT with its NAT-mapped listen address and dials at
SYNC from its listen port, we dial from ours: a simultaneous open through both NATs,
py-libp2p the client."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.interop.harness import PEER_SCRIPT
from tests.nat_lab_helpers import finish, next_json
from tests.test_nat_lab_punch import PunchLab, _spawn, punch_lab, relay

pytestmark = pytest.mark.interop

__all__ = ["punch_lab", "relay"]  # the fixtures, imported for this module


def test_pylibp2p_as_a_behind_a_home_router_punches_with_us(
    interop_python: Path, punch_lab: PunchLab, relay: dict[str, str]
) -> None:
    b = _spawn(punch_lab.hosts[1], "b", "tcp", relay["tcp"])
    try:
        circuit = next_json(b)["circuit"]
        argv = ["dcutr", circuit, "--ip", "0.0.0.0", "--port", "4001", "--wait", "30",
                "-c", "3", "--timeout", "90"]  # fmt: skip
        cmd = ["ip", "netns", "exec", punch_lab.hosts[0], str(interop_python), str(PEER_SCRIPT)]
        a = subprocess.run(
            [*cmd, *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        got = json.loads(a.stdout.splitlines()[-1])
        events = next_json(b)["events"]
    finally:
        finish(b)
    assert a.returncode == 0 and got["ok"], (got, a.stderr[-2000:])
    ok = [e for e in events if e["kind"] == "succeeded"]
    assert ok, events
    assert ok[0]["limited"] is False, ok
    # the direct connection goes to A's router (its mapping of py-libp2p's listen port)
    assert ok[0]["attempt"] == 1, ok  # the exchange (neither side is public), first try
    assert ok[0]["remote"].startswith("/ip4/10.77.0.11/tcp/4001"), ok
    assert got["direct"] is True, got
    assert got["direct_addr"].startswith("/ip4/10.77.0.12/tcp/4001"), got
    assert len(got["rtts_us"]) == 3, got
