"""The ``switchy`` command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from switchy.cli import parse_size

SWITCHY = [sys.executable, "-m", "switchy.cli"]


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
            r = _run(
                "listen", "--ephemeral", "--register", "kitchen", "--registry", reg_addr, timeout=30
            )
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


def test_listen_uses_the_identity_switchy_id_made(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    made = json.loads(_run("id", "--json", env=env).stdout)
    assert made["key_file"] == str(tmp_path / "switchy" / "identity.key") and made["created"]

    def listen_once(*extra: str) -> str:
        proc = subprocess.Popen(
            [*SWITCHY, "listen", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        addr = proc.stdout.readline().strip()
        _stop(proc)
        assert "/p2p/" in addr, addr
        return addr.rsplit("/", 1)[1]

    assert listen_once() == made["peer_id"]
    assert listen_once() == made["peer_id"]  # the same peer on every start
    throwaway = listen_once("--ephemeral")
    assert throwaway != made["peer_id"] and listen_once("--ephemeral") != throwaway
    r = _run("listen", "--ephemeral", "--key", str(tmp_path / "k"), env=env)
    assert r.returncode == 2 and "exclude each other" in r.stderr


def test_version() -> None:
    from switchy import __version__

    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"switchy-p2p {__version__}"


def test_log_level_anywhere_shows_lifecycle_without_third_party_chatter() -> None:
    proc, addr = _start("listen", "--log-level", "info")
    try:
        r = _run("ping", addr, "-c", "1", "--log-level", "debug")
        assert r.returncode == 0, r.stderr
        r = _run("--log-format", "json", "-v", "ping", addr, "-c", "1")
        assert r.returncode == 0, r.stderr
        records = [json.loads(line) for line in r.stderr.splitlines()]
        assert records and {"time", "level", "logger", "message"} <= set(records[0])
        assert any(x["message"].startswith("connected to 12D3KooW") for x in records)
        assert all(x["logger"].startswith("switchy.") for x in records)
        assert all(x["level"] != "DEBUG" for x in records)  # -v is info
        r = _run("ping", addr, "-c", "1", "-vv")
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert lines and all(line.split()[1].startswith("switchy.") for line in lines), lines
        assert not any("multiaddr" in line.split()[1] for line in lines)
    finally:
        err = _stop(proc)
    assert "INFO switchy.stack.node: listening on /ip4/127.0.0.1/tcp/" in err
    assert "INFO switchy.stack.node: connected to 12D3KooW" in err
    assert "INFO switchy.stack.node: disconnected from 12D3KooW" in err
    env = {**os.environ, "SWITCHY_LOG_LEVEL": "loud"}
    r = _run("ping", "/ip4/127.0.0.1/tcp/1", env=env)
    assert r.returncode == 2 and "SWITCHY_LOG_LEVEL" in r.stderr and "loud" in r.stderr
    r = _run("ping", "/ip4/127.0.0.1/tcp/1", "--log-level", "loud")
    assert r.returncode == 2 and "unknown log level 'loud'" in r.stderr


def test_switchy_variables_configure_the_cli_and_bad_ones_are_usage_errors() -> None:
    r = _run("ping", "/ip4/127.0.0.1/tcp/1", env={**os.environ, "SWITCHY_DIAL_TIMEOUT": "abc"})
    assert r.returncode == 2, r.stderr
    assert r.stderr == "switchy: error: SWITCHY_DIAL_TIMEOUT='abc' is not a valid float\n"
    r = _run("ping", "/ip4/127.0.0.1/tcp/1", env={**os.environ, "SWITCHY_DIAL_TIMEOUT": "-1"})
    assert r.returncode == 2 and "dial_timeout must be > 0" in r.stderr
    # A valid value takes effect: a peer that accepts TCP and never answers the handshake
    # fails after SWITCHY_HANDSHAKE_TIMEOUT, and the error names that limit.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        env = {**os.environ, "SWITCHY_HANDSHAKE_TIMEOUT": "0.25"}
        r = _run("ping", f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer}", env=env)
    assert r.returncode == 1, r.stderr
    assert "timed out after 0.25s" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ping", "/ip4/1.2.3/tcp/1"), "invalid multiaddr '/ip4/1.2.3/tcp/1': base address"),
        (("ping", "/ip4/127.0.0.1/tcp/99999"), "integer not in range"),
        (("ping", "not-an-address"), "invalid multiaddr 'not-an-address': a multiaddr starts"),
        (("ping", "/memory/5"), "no configured transport can dial /memory/5"),
        (("ping", "/ip4/127.0.0.1/tcp/1", "-c", "0"), "--count: must be at least 1"),
        (("perf", "/ip4/127.0.0.1/tcp/1"), "needs --upload SIZE and/or --download SIZE"),
        (("perf", "/ip4/127.0.0.1/tcp/1", "--upload", "x"), "invalid size 'x'"),
        (("request", "/ip4/127.0.0.1/tcp/1", "GET", "/", "--timeout", "-1"), "positive number"),
        (("request", "/ip4/127.0.0.1/tcp/1", "GET", "/", "--timeout", "0"), "positive number"),
        (("request", "/ip4/127.0.0.1/tcp/1", "GET", "/", "--header", "x"), "NAME:VALUE"),
        (("request", "/ip4/127.0.0.1/tcp/1", "GET", "/", "--data", "@/nonexistent"), "no such"),
        (("demo", "--nodes", "1"), "--nodes: must be from 2 to 50, got 1"),
        (("demo", "--nodes", "51"), "--nodes: must be from 2 to 50, got 51"),
        (("relay", "--limit-duration", "-5"), "--limit-duration: must be at least 0"),
        (("listen", "--register", "kitchen"), "--register needs --registry"),
        (("ping", "/ip4/127.0.0.1/tcp/1", "--key", "/nonexistent/k"), "no key file at"),
    ],
)
def test_bad_input_is_a_one_line_usage_error_with_status_2(
    args: tuple[str, ...], message: str
) -> None:
    r = _run(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr


def test_a_multiaddr_error_names_the_address_once() -> None:
    r = _run("ping", "/ip4/127.0.0.1/tcp/1/p2p/xyz")
    assert r.returncode == 2
    assert r.stderr.count("/ip4/127.0.0.1/tcp/1/p2p/xyz") == 1, r.stderr


def test_a_key_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    for args in (
        ("id", "--key", str(tmp_path)),
        ("ping", "/ip4/127.0.0.1/tcp/1", "--key", str(tmp_path)),
    ):
        r = _run(*args)
        assert r.returncode == 2, r.stderr
        assert f"key file {tmp_path} is a directory" in r.stderr and "Errno" not in r.stderr


def test_network_failures_exit_with_status_1() -> None:
    r = _run("ping", "/ip4/127.0.0.1/tcp/1")  # nothing listens there
    assert r.returncode == 1 and r.stderr.startswith("switchy: error: TCP dial"), r.stderr


def test_help_documents_the_exit_statuses() -> None:
    for args in (("--help",), ("ping", "--help")):
        out = " ".join(_run(*args).stdout.split())
        assert "exit status: 0 success; 1 a runtime or network failure" in out
        assert "2 a usage error or bad input" in out


def test_main_in_process_leaves_logging_as_it_found_it() -> None:
    import logging

    from switchy.cli import main

    root, ours = logging.getLogger(), logging.getLogger("switchy")
    before = (list(root.handlers), root.level, ours.level)
    assert main(["ping", "/ip4/1.2.3/tcp/1", "--log-level", "debug"]) == 2
    assert (list(root.handlers), root.level, ours.level) == before


def test_every_subcommand_takes_the_logging_options_after_its_name() -> None:
    import argparse

    from switchy.cli import build_parser

    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        name
        for name, command in sub.choices.items()
        if "--log-level" not in command._option_string_actions
    ]
    assert not missing, f"subcommands without --log-level: {missing}"
