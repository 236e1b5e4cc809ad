"""``switchy nat-status`` and the reachability lines of ``switchy listen``, on loopback.

Loopback is not public; ``--public-network 127.0.0.0/8`` makes it count, as a lab or a
private network would be configured.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

SWITCHY = [sys.executable, "-m", "switchy.cli"]
LOOP = ["--public-network", "127.0.0.0/8"]


def _run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SWITCHY, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*SWITCHY, "listen", *LOOP, "/ip4/127.0.0.1/tcp/0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    addr = proc.stdout.readline().strip()
    # then the reachability as learned, starting with what is known at start
    assert proc.stdout.readline().strip() == "reachability: unknown"
    return proc, addr


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nat_status_reports_each_address_per_server() -> None:
    proc, server = _server()
    try:
        assert server.startswith("/ip4/127.0.0.1/tcp/")
        closed = f"/ip4/127.0.0.1/tcp/{_closed_port()}"
        r = _run("nat-status", *LOOP, "--listen", "/ip4/127.0.0.1/tcp/0", server, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        (row,) = out["results"]
        assert row["verdict"] == "reachable" and row["version"] == 2
        assert row["addr"].startswith("/ip4/127.0.0.1/tcp/")
        assert server.endswith(row["server"])
        r = _run("nat-status", *LOOP, "--addr", closed, server)
        assert r.returncode == 0, r.stderr
        assert f"{closed}: unreachable by " in r.stdout and "(v2)" in r.stdout
        assert "reachability: unknown" in r.stdout  # one server is not enough to decide
    finally:
        _stop(proc)


def test_nat_status_without_a_public_address_says_what_to_do() -> None:
    proc, server = _server()
    try:
        r = _run("nat-status", "--listen", "/ip4/127.0.0.1/tcp/0", server)
        assert r.returncode == 2
        assert "none of our addresses is public" in r.stderr and "--public-network" in r.stderr
    finally:
        _stop(proc)


def test_nat_status_with_an_unreachable_server_fails_cleanly() -> None:
    r = _run("nat-status", *LOOP, f"/ip4/127.0.0.1/tcp/{_closed_port()}")
    assert r.returncode == 1
    assert r.stderr.startswith("switchy: error:") and "Traceback" not in r.stderr
