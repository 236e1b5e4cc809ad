"""Our side of the interop tests: the py-libp2p virtualenv and the peer subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs

from switchy.conformance import RemotePeerHarness

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
VENV = ROOT / ".interop-venv"
REQUIREMENTS = HERE / "requirements.txt"
PEER_SCRIPT = HERE / "pylibp2p_peer.py"
#: Seconds allowed for creating the venv (a pip install from the registry).
INSTALL_TIMEOUT = 900
#: Seconds allowed for one peer command.
PEER_TIMEOUT = 60.0


def _python() -> Path:
    return VENV / "bin" / "python"


def ensure_interop_venv() -> Path:
    """Create (or refresh) the py-libp2p virtualenv; return its Python.

    The venv is rebuilt when requirements.txt changes (a stamp holds its hash).
    """
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".requirements-sha256"
    if _python().exists() and stamp.exists() and stamp.read_text() == digest:
        return _python()
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=INSTALL_TIMEOUT
    )
    subprocess.run(
        [
            str(_python()),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
        timeout=INSTALL_TIMEOUT,
    )
    # Import py-libp2p once here, so the first test that starts a peer is not the one
    # that pays for loading it into the page cache (over a minute on a loaded machine).
    subprocess.run(
        [str(_python()), str(PEER_SCRIPT), "--help"],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=INSTALL_TIMEOUT,
    )
    stamp.write_text(digest)
    return _python()


async def run_peer(mode: str, *args: str, timeout: float = PEER_TIMEOUT) -> dict[str, Any]:
    """Run one py-libp2p client command against us; return its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        str(_python()),
        str(PEER_SCRIPT),
        mode,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"py-libp2p {mode} did not finish in {timeout}s") from None
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        raise AssertionError(f"py-libp2p {mode} printed no result; stderr: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    if not result.get("ok"):
        raise AssertionError(f"py-libp2p {mode} failed: {result.get('error')}")
    return result


@attrs.define
class PeerProcess:
    """A listening py-libp2p peer."""

    peer_id: str
    addrs: list[str]
    events: list[dict[str, Any]]


def tcp_addr(info: dict[str, Any]) -> str:
    """The TCP address (with ``/p2p/<id>``) in a py-libp2p script's first line."""
    addr: str = next(a for a in info["addrs"] if "/tcp/" in a)
    return addr if "/p2p/" in addr else f"{addr}/p2p/{info['peer_id']}"


@asynccontextmanager
async def pylibp2p_process(
    script: Path, *args: str, on_event: Callable[[dict[str, Any]], None]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, Any]]]:
    """Run a py-libp2p peer script of the interop venv (``script`` with ``args``): wait for
    the JSON line it prints once listening (its peer id and addresses), hand each JSON
    line after it to ``on_event``; yield the process and that first line.  On exit its
    stdin is closed (the scripts stop then; killed after 10 s)."""
    proc = await asyncio.create_subprocess_exec(
        str(_python()),
        str(script),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stdin is not None
    collector: asyncio.Future[None] | None = None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), PEER_TIMEOUT)
        if not line:
            raise AssertionError(f"py-libp2p {script.name} exited before printing its addresses")
        info = json.loads(line)

        async def collect() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                if raw.startswith(b"{"):
                    on_event(json.loads(raw))

        collector = asyncio.ensure_future(collect())
        yield proc, info
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if collector is not None:  # its stdout ended with it
            await asyncio.wait_for(collector, 10)


@asynccontextmanager
async def pylibp2p_listener(
    seed: bytes | None = None, *, relay: bool = False, quic: bool = False, autonat: bool = False
) -> AsyncIterator[PeerProcess]:
    """Start a py-libp2p peer listening on loopback (TCP, or QUIC-v1 with ``quic``; also a
    circuit relay with ``relay``, an AutoNAT v1 server with ``autonat``); stop it on exit."""
    args = ["listen"]
    if seed is not None:
        args += ["--seed", seed.hex()]
    if relay:
        args.append("--relay")
    if quic:
        args.append("--quic")
    if autonat:
        args.append("--autonat")
    events: list[dict[str, Any]] = []
    async with pylibp2p_process(PEER_SCRIPT, *args, on_event=events.append) as (_, info):
        yield PeerProcess(info["peer_id"], info["addrs"], events)


class PyLibp2pRemoteHarness(RemotePeerHarness):
    """The conformance suite's remote peer: a py-libp2p listener (TCP + Noise + yamux)."""

    @asynccontextmanager
    async def remote(self) -> AsyncIterator[str]:
        async with pylibp2p_listener() as peer:
            yield tcp_addr({"peer_id": peer.peer_id, "addrs": peer.addrs})
