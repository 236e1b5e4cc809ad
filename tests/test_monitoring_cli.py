"""``--metrics HOST:PORT`` on the serving commands: /metrics and /healthz of a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

SWITCHY = [sys.executable, "-m", "switchy.cli"]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read()


def _start(*args: str) -> tuple[subprocess.Popen[str], str, str]:
    """Start ``switchy ARGS``; its first address (stdout) and its metrics URL (stderr)."""
    proc = subprocess.Popen(
        [*SWITCHY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    url = ""
    for line in proc.stderr:  # the metrics line comes before the node's addresses
        if line.startswith("metrics: "):
            url = line.removeprefix("metrics: ").strip()
            break
    return proc, proc.stdout.readline().strip(), url


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


@pytest.mark.parametrize(
    ("command", "family"),
    [
        (("listen", "--ephemeral"), "libp2p_swarm_connections_opened_total"),
        (("relay",), "libp2p_relaysvc_status 1.0"),
        (("registry",), "libp2p_swarm_handshake_latency_seconds"),
        (("serve", "--static", "{tmp}"), "switchy_router_requests_total"),
    ],
    ids=["listen", "relay", "registry", "serve"],
)
def test_serving_commands_export_metrics_and_health(
    command: tuple[str, ...], family: str, tmp_path: Path
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    proc, addr, url = _start(*args, "/ip4/127.0.0.1/tcp/0", "--metrics", "127.0.0.1:0")
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
        assert "/p2p/12D3KooW" in addr
        if command[0] == "listen":  # a real connection and ping, then the totals
            r = subprocess.run(
                [*SWITCHY, "ping", addr, "-c", "2", "--json"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
        status, body = _get(url)
        text = body.decode()
        assert status == 200 and family in text
        if command[0] == "listen":
            opened = [
                line for line in text.splitlines()
                if line.startswith("libp2p_swarm_connections_opened_total{")
                and 'dir="inbound"' in line
            ]  # fmt: skip
            assert sum(float(line.rsplit(" ", 1)[1]) for line in opened) == 1
            ping = 'libp2p_swarm_streams_opened_total{dir="inbound",protocol="/ipfs/ping/1.0.0"}'
            assert ping in text
        status, body = _get(url.removesuffix("/metrics") + "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        err = _stop(proc)
    assert "Traceback" not in err


def test_a_malformed_metrics_address_is_a_usage_error() -> None:
    r = subprocess.run(
        [*SWITCHY, "relay", "--metrics", "9464"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "invalid metrics address '9464'" in r.stderr and "Traceback" not in r.stderr
