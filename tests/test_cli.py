"""The ``switchy`` command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from switchy.stack.cli import parse_size

SWITCHY = [sys.executable, "-m", "switchy.stack.cli"]


def _run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SWITCHY, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_parse_size() -> None:
    assert parse_size("1048576") == 1048576
    assert parse_size("10M") == 10_000_000
    assert parse_size("64KiB") == 65536
    assert parse_size("1G") == 10**9
    for bad in ("", "x", "10Q", "-1"):
        with pytest.raises(Exception):  # noqa: B017 - argparse's error type
            parse_size(bad)


def test_id_creates_then_shows_the_same_identity(tmp_path: Path) -> None:
    key = tmp_path / "k"
    first = _run("id", "--key", str(key), "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["created"] is True and info["peer_id"].startswith("12D3KooW")
    assert (key.stat().st_mode & 0o777) == 0o600
    second = json.loads(_run("id", "--key", str(key), "--json").stdout)
    assert second["peer_id"] == info["peer_id"] and second["created"] is False


def test_id_refuses_a_world_readable_key(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert _run("id", "--key", str(key)).returncode == 0
    os.chmod(key, 0o644)
    r = _run("id", "--key", str(key))
    assert r.returncode != 0
    assert "chmod 600" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("listen", "prefix"),
    [
        ("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/"),
        ("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/udp/"),
    ],
    ids=["tcp", "quic"],
)
def test_listen_ping_perf_and_clean_interrupt(listen: str, prefix: str) -> None:
    proc = subprocess.Popen(
        [*SWITCHY, "listen", listen],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().strip()
        assert addr.startswith(prefix) and "/p2p/12D3KooW" in addr
        assert ("/quic-v1/" in addr) == ("quic" in listen)
        r = _run("ping", addr, "-c", "3", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["count"] == 3 and len(out["rtts_ms"]) == 3
        r = _run("perf", addr, "--upload", "1M", "--download", "2M", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["upload_bytes"] == 1_000_000 and out["download_bytes"] == 2_000_000
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_errors_are_one_line_and_nonzero() -> None:
    r = _run("ping", "/ip4/127.0.0.1/tcp/1")
    assert r.returncode != 0
    assert r.stderr.startswith("switchy: error:") and "Traceback" not in r.stderr
    r = _run("ping", "not-an-address")
    assert r.returncode != 0 and "invalid multiaddr" in r.stderr
    r = _run("ping", "/memory/5")  # a simulator address: no CLI transport dials it
    assert r.returncode != 0 and "no configured transport" in r.stderr


def test_demo_runs() -> None:
    r = _run("demo", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Find peers by name" in r.stdout and "(signatures checked)" in r.stdout
    for step in (
        "Dial, secure, multiplex",
        "Identify",
        "Ping",
        "Echo",
        "Throughput",
        "Authentication",
        "Graceful shutdown",
    ):
        assert step in r.stdout
    assert "refused" in r.stdout


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*SWITCHY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def test_registry_listen_register_and_ping_by_name() -> None:
    registry, reg_addr = _start("registry", "/ip4/127.0.0.1/tcp/0")
    try:
        assert reg_addr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in reg_addr
        listener, addr = _start("listen", "--register", "kitchen", "--registry", reg_addr)
        try:
            assert listener.stderr is not None
            assert "registered 'kitchen'" in listener.stderr.readline()
            r = _run("ping", "kitchen", "--registry", reg_addr, "-c", "2", "--json")
            assert r.returncode == 0, r.stderr
            out = json.loads(r.stdout)
            assert out["peer_id"] == addr.rsplit("/", 1)[1] and out["count"] == 2
            # A second peer cannot take the live name.
            r = _run("listen", "--register", "kitchen", "--registry", reg_addr, timeout=30)
            assert r.returncode == 1 and "NAME_TAKEN" in r.stderr, r.stderr
        finally:
            _stop(listener)
        r = _run("ping", "kitchen", "--registry", reg_addr)
        assert r.returncode == 1
        assert "'kitchen' is not registered" in r.stderr and "Traceback" not in r.stderr
    finally:
        _stop(registry)


def test_name_options_need_a_registry() -> None:
    r = _run("ping", "kitchen")
    assert r.returncode == 2 and "give --registry" in r.stderr
    r = _run("listen", "--register", "kitchen")
    assert r.returncode == 2 and "--register needs --registry" in r.stderr
