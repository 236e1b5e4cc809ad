"""``switchy expose``, ``gateway`` and ``forward`` run as a user runs them (loopback only)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SWITCHY = [sys.executable, "-m", "switchy.cli"]
LISTEN = "/ip4/127.0.0.1/tcp/0"

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp / "config")}


class Run:
    """A started command: its process, first line of output and (once stopped) stderr."""

    def __init__(self, proc: subprocess.Popen[str], line: str) -> None:
        self.proc = proc
        self.line = line
        self.stderr = ""

    def stop(self) -> str:
        """Stop with SIGINT (once); return stderr."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                _, self.stderr = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, self.stderr = self.proc.communicate()
        return self.stderr


@contextmanager
def started(cmd: list[str], env: dict[str, str]) -> Iterator[tuple[Run, str]]:
    """Start ``cmd``; yield it and its first line of output; stop it with SIGINT."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run = Run(proc, "")
    try:
        assert proc.stdout is not None
        run.line = proc.stdout.readline().strip()
        assert run.line, run.stop()
        yield run, run.line
    finally:
        run.stop()


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=60, check=False)


@needs_curl
def test_expose_http_and_gateway_with_curl_allowlist_and_stable_identity(tmp_path: Path) -> None:
    env = _env(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "song.txt").write_bytes(b"la la la\n" * 1000)
    http_server = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]
    with started([*http_server, "--directory", str(site)], env) as (_, banner):
        port = int(re.search(r"port (\d+)", banner).group(1))  # type: ignore[union-attr]
        expose = [*SWITCHY, "expose", f"http://127.0.0.1:{port}", "--listen", LISTEN]
        with started([*expose, "--key", str(tmp_path / "server.key")], env) as (srv, addr):
            peer = addr.rsplit("/p2p/", 1)[1]
            gateway = [*SWITCHY, "gateway", "--listen", "127.0.0.1:0", "--peer", addr]
            with started([*gateway, "--key", str(tmp_path / "gw.key")], env) as (gw, url):
                base = url.replace("<peer-id>", peer)
                r = _curl(f"{base}song.txt")
                assert r.returncode == 0, r.stderr
                assert r.stdout == b"la la la\n" * 1000
                r = _curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}missing")
                assert r.stdout == b"404"
                r = _curl("-o", "/dev/null", "-w", "%{http_code}", f"{url.split('/p2p')[0]}/x")
                assert r.stdout == b"404"
            assert "loopback only" in gw.stderr
        # the same key: the same peer id after a restart; --allow refuses other peers
        other = "12D3KooWQbrMYHx8dKNmFzh7WZYAcBvmFBvNvTdyqMNBSa3qEsiX"
        allow = ["--key", str(tmp_path / "server.key"), "--allow", other]
        with started([*expose, *allow], env) as (srv, addr2):
            assert addr2.rsplit("/p2p/", 1)[1] == peer
            gateway = [*SWITCHY, "gateway", "--listen", "127.0.0.1:0", "--peer", addr2]
            with started([*gateway, "--key", str(tmp_path / "gw.key")], env) as (_, url):
                r = _curl("-w", "%{http_code}", url.replace("<peer-id>", peer) + "song.txt")
                assert r.stdout.endswith(b"403")
            err = srv.stop()
        assert "not on the allowlist" in err and "Traceback" not in err


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_expose_tcp_and_forward_carry_an_echo_service(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo:
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        try:
            port = echo.server_address[1]
            expose = [*SWITCHY, "expose", "tcp", f"127.0.0.1:{port}", "--listen", LISTEN]
            with started([*expose, "--key", str(tmp_path / "s.key")], env) as (_, addr):
                forward = [*SWITCHY, "forward", "127.0.0.1:0", addr]
                with started([*forward, "--key", str(tmp_path / "f.key")], env) as (_fw, local):
                    host, _, fport = local.rpartition(":")
                    payload = os.urandom(300_000)
                    with socket.create_connection((host, int(fport)), timeout=30) as sock:
                        sock.sendall(payload)
                        sock.shutdown(socket.SHUT_WR)
                        got = b""
                        while chunk := sock.recv(65536):
                            got += chunk
                    assert got == payload
        finally:
            echo.shutdown()


def test_bad_expose_arguments_are_one_line_errors(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for args in (
        ["expose", "ftp://x"],
        ["expose", "tcp", "nohost"],
        ["forward", "1:2", "/ip4/1.2.3.4/tcp/1"],
    ):
        r = subprocess.run(
            [*SWITCHY, *args, "--key", str(tmp_path / "k")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert r.returncode != 0
        assert "Traceback" not in r.stderr and "error" in r.stderr


@needs_curl
def test_the_gateway_finds_a_peer_by_name_at_a_registry_and_expose_limits_uploads(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.json").write_bytes(b'{"tracks": []}')
    http_server = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]
    with (
        started([*SWITCHY, "registry", LISTEN], env) as (_, registry),
        started([*http_server, "--directory", str(site)], env) as (_, banner),
    ):
        port = int(re.search(r"port (\d+)", banner).group(1))  # type: ignore[union-attr]
        expose = [*SWITCHY, "expose", f"http://127.0.0.1:{port}", "--listen", LISTEN]
        expose += ["--register", "living-room", "--registry", registry, "--max-upload", "100"]
        with started([*expose, "--key", str(tmp_path / "server.key")], env) as (srv, _addr):
            gateway = [*SWITCHY, "gateway", "--listen", "127.0.0.1:0", "--registry", registry]
            with started([*gateway, "--key", str(tmp_path / "gw.key")], env) as (_, url):
                base = url.replace("<peer-id>", "living-room")
                r = _curl(f"{base}index.json")
                assert r.returncode == 0, r.stderr
                assert r.stdout == b'{"tracks": []}'
                r = _curl(
                    "-o", "/dev/null", "-w", "%{http_code}", url.replace("<peer-id>", "nobody")
                )
                assert r.stdout == b"404"
                # a larger upload is refused by expose (413) before the local server sees it
                r = _curl(
                    "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "x" * 1000, base
                )
                assert r.stdout == b"413"
        assert "registered 'living-room'" in srv.stderr
