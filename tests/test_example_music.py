"""examples/music_service.py runs: in one process (demo) and as a server plus a client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "music_service.py"


def test_demo_runs() -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "demo"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1] == "3 tracks: intro, outro, theme"
    assert lines[2].startswith("downloaded intro: 200000 bytes")
    assert lines[3] == "play -> 200 OK: {'playing': 'intro'}"
    assert lines[4] == "GET /tracks/999 -> 404 Not Found"
    assert lines[-1] == "ok"


def test_server_and_client_by_address(tmp_path: Path) -> None:
    track = os.urandom(123_456)
    (tmp_path / "song.ogg").write_bytes(track)
    (tmp_path / "notes.txt").write_bytes(b"not a track")
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "serve", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        addr = server.stdout.readline().strip()
        save = tmp_path / "copy.ogg"
        r = subprocess.run(
            [sys.executable, str(EXAMPLE), "client", addr, "--save", str(save)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert "1 tracks: song" in r.stdout
        assert save.read_bytes() == track
    finally:
        server.kill()
        server.wait(10)
