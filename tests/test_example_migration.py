"""examples/tunnel_migration: the same client code through the tunnel and over switchy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tunnel_migration" / "media.py"

pytest.importorskip("aiohttp")
pytest.importorskip("httpx")


def test_the_migration_demo_runs_every_step() -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "demo"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    same = "3 tracks; range 206 10 B; whole 100001 B"
    assert lines[0] == f"1. tunnel: {same} (via tunnel)"
    assert lines[1] == f"2. p2p, server unchanged behind switchy expose: {same} (direct)"
    assert lines[2] == f"3. p2p, the ASGI app served on the node: {same} (direct)"
    assert lines[3] == f"rollback: tunnel again: {same} (via tunnel)"
    assert lines[4] == "live event over /ws: {'event': 'now-playing', 'track': 'song1.ogg'}"
    assert lines[-1] == "ok"
