"""Interop in the NAT lab: py-libp2p 0.8.1's identify tells a node behind the lab's NAT
its observed address, which our address book keeps as a candidate (one observer does not
confirm it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.harness import PEER_SCRIPT
from tests.nat_lab_helpers import ROOT
from tests.test_nat_lab import SCRIPT, Lab, lab

pytestmark = pytest.mark.interop

__all__ = ["lab"]  # the fixture, imported for this module


def test_pylibp2p_observes_our_nat_mapping(interop_python: Path, lab: Lab) -> None:
    peer = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lab.inet,
            str(interop_python),
            str(PEER_SCRIPT),
            "listen",
            "--ip",
            "10.77.0.3",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert peer.stdout is not None
        info = json.loads(peer.stdout.readline())
        addr = next(a for a in info["addrs"] if a.startswith("/ip4/10.77.0.3/tcp/"))
        if "/p2p/" not in addr:
            addr += f"/p2p/{info['peer_id']}"
        ours = subprocess.run(
            ["ip", "netns", "exec", lab.h1, sys.executable, SCRIPT, "observe", addr],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": ROOT},
            cwd=ROOT,
        )
        assert ours.returncode == 0, ours.stderr
        got = json.loads(ours.stdout.strip().splitlines()[-1])
    finally:
        peer.communicate(input="", timeout=30)
    # we dialed from our listening port; the masquerading router kept the port
    assert got["local"] == "/ip4/192.168.71.2/tcp/4001"
    external = "/ip4/10.77.0.11/tcp/4001"
    assert got["reported"] == [external]  # what py-libp2p told us
    assert got["candidates"] == [external] and got["observers"] == {external: 1}
    assert got["confirmed"] == []  # a single observer cannot make us announce it
