"""examples/basic.py and examples/benchmark.py run and print what they say."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_basic_demo_in_one_process() -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "basic.py")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("A is 12D3KooW")
    assert lines[1] == "B asks: HELLO, PEER"


def test_basic_server_and_client() -> None:
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "basic.py"), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        addr = server.stdout.readline().strip()
        assert "/p2p/" in addr
        r = subprocess.run(
            [sys.executable, str(EXAMPLES / "basic.py"), "ask", addr, "über p2p"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "ÜBER P2P"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)


def test_benchmark_prints_figures_for_each_transport() -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "benchmark.py"), "--megabytes", "4", "--pings", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].split() == ["transport", "dial", "ms", "ping", "ms", "p99", "ms", "MB/s"]
    assert [row.split()[0] for row in rows[1:]] == ["tcp", "quic"]
    r = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "benchmark.py"),
            "--megabytes",
            "2",
            "--pings",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert set(figures) == {"tcp", "quic"}
    for f in figures.values():
        assert f["bytes"] == 2 * 1024 * 1024
        assert f["throughput_MBps"] > 0 and f["dial_ms"] > 0
        assert 0 < f["ping_ms_median"] <= f["ping_ms_p99"]
