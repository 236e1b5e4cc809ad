"""Every node-starting command builds its node with the command line's configuration:
``SWITCHY_*`` variables and ``--limit``/``--max-inbound-per-ip``/``--limits-allow``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import switchy.chat
import switchy.presets
from switchy.cli import main
from switchy.presets import default_node
from switchy.protocols.blobs import BlobService, Ticket
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import KeyPair

PEER = KeyPair.generate().peer_id
ADDR = f"/ip4/127.0.0.1/tcp/1/p2p/{PEER}"
TICKET = str(Ticket(PEER, (), b"\0" * 32))


def commands(tmp: Path) -> dict[str, list[str]]:
    """Each command that starts a node, with the arguments it needs to get that far."""
    key = ["--key", str(tmp / "id.key")]  # never the user's own key file
    return {
        "listen": ["listen", "--ephemeral"],
        "relay": ["relay"],
        "registry": ["registry"],
        "serve": ["serve", "--static", str(tmp)],
        "ping": ["ping", ADDR],
        "ping-by-name": ["ping", "some-name", "--registry", ADDR],
        "perf": ["perf", ADDR, "--download", "1"],
        "request": ["request", ADDR, "GET", "/"],
        "nat-status": ["nat-status", ADDR],
        "dht": ["dht", "serve"],
        "expose": ["expose", "http://127.0.0.1:1", *key],
        "gateway": ["gateway", *key],
        "forward": ["forward", "127.0.0.1:0", ADDR, *key],
        "chat": ["chat", "--nick", "ann"],
        "send": ["send", str(tmp / "f.txt")],
        "receive": ["receive", TICKET, "--out", str(tmp)],
    }


class _Stop(InvalidConfiguration):
    """Raised by the fake node factory once it has seen the configuration."""


@pytest.mark.parametrize("where", ["after the command name", "at the end"])
@pytest.mark.parametrize("name", sorted(commands(Path("/nonexistent"))))
def test_every_command_builds_its_node_with_the_environment_and_limit_options(
    name: str,
    where: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[Any] = []

    def fake_default_node(**kw: Any) -> Any:
        seen.append(kw.get("config"))
        raise _Stop("stopped before starting")

    monkeypatch.setattr(switchy.presets, "default_node", fake_default_node)
    monkeypatch.setattr(switchy.chat, "default_node", fake_default_node)
    monkeypatch.setenv("SWITCHY_DIAL_TIMEOUT", "7.5")
    monkeypatch.setenv("SWITCHY_LIMITS", "system.streams=99")
    (tmp_path / "f.txt").write_text("hello")
    argv = commands(tmp_path)[name]
    limits = ["--limit", "system.conns=3", "--max-inbound-per-ip", "5"]
    limits += ["--max-outbound-per-ip", "6"]
    # the options right after the command name, or after everything (`dht serve --limit`)
    at_end = where == "at the end"
    assert main([*argv, *limits] if at_end else [argv[0], *limits, *argv[1:]]) == 2
    assert "stopped before starting" in capsys.readouterr().err
    (config,) = seen
    assert config is not None, f"switchy {name} built its node without the configuration"
    assert config.dial_timeout == 7.5
    assert config.limits == ("system.streams=99", "system.conns=3")
    assert config.max_inbound_per_ip == 5
    assert config.max_outbound_per_ip == 6


def test_receive_honours_a_limit_that_refuses_its_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real transfer: ``--limit system.conns_outbound=0`` makes receive's node refuse to
    dial (exit 1, naming the limit); without it the same ticket is received."""
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    out = tmp_path / "out"
    out.mkdir()

    async def run() -> tuple[int, int]:
        blobs = BlobService()
        async with default_node(services=[blobs], listen=["/ip4/127.0.0.1/tcp/0"]):
            ticket = str(blobs.add_file(str(tmp_path / "f.bin")))
            argv = ["receive", ticket, "--out", str(out)]
            refused = await asyncio.to_thread(main, [*argv, "--limit", "system.conns_outbound=0"])
            received = await asyncio.to_thread(main, argv)
        return refused, received

    refused, received = asyncio.run(asyncio.wait_for(run(), 60))
    assert refused == 1
    assert "scope system, conns_outbound limit 0" in capsys.readouterr().err
    assert received == 0 and (out / "f.bin").read_bytes() == b"x" * 1000
