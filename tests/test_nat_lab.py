"""Real Linux NATs: a lab of network namespaces the test builds itself.

::

    h1 (192.168.71.2) ── r1 ──┐                      r1: nftables masquerade (the usual
                              ├── inet (10.77.0.0/24)     home router: port-preserving,
    h2 (192.168.72.2) ── r2 ──┘    relay + 4 AutoNAT      inbound only for established)
                                   servers, a public   r2: masquerade random,fully-random
                                   client                  (symmetric)

``inet`` is the lab's internet: a bridge holding 10.77.0.1-.6 (relay, servers, the public
client), r1 at 10.77.0.11, r2 at 10.77.0.12.  10.77.0.0/24 counts as public in the
peers' config (``public_networks``); the LANs are private ranges.  No namespace has a
route to the machine's own network.  Skips (with the reason) where namespaces, veth
pairs or nftables cannot be used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = str(Path(__file__).parent.parent)
SCRIPT = str(Path(__file__).with_name("netns_nat_peer.py"))
SERVER_IPS = ["10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4", "10.77.0.5"]
PUBLIC_CLIENT_IP = "10.77.0.6"


@attrs.frozen
class Lab:
    inet: str
    r1: str
    r2: str
    h1: str
    h2: str


def _run(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20, input=stdin)


def _nat_rules(wan: str, lan: str, symmetric: bool) -> str:
    flags = " random,fully-random" if symmetric else ""
    return f"""
table ip lab {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" masquerade{flags}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{lan}" oifname "{wan}" accept
    }}
}}
"""


def lab_prerequisites() -> None:
    """Skip (with the reason) where the lab cannot be built: not Linux, no ``ip``, no
    ``nft``, not root."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("the NAT lab needs Linux and iproute2 ('ip')")
    if shutil.which("nft") is None:
        pytest.skip("the NAT lab needs nftables ('nft'); .ci/run installs it")
    if os.geteuid() != 0:
        pytest.skip("the NAT lab needs root to create network namespaces (ip netns)")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab_prerequisites()
    tag = uuid.uuid4().hex[:5]
    names = Lab(*(f"sn{k}-{tag}" for k in ("inet", "r1", "r2", "h1", "h2")))
    made: list[str] = []

    def veth(a: str, dev_a: str, b: str, dev_b: str) -> None:
        _run("ip", "link", "add", dev_a, "netns", a, "type", "veth", "peer", "name", dev_b,
             "netns", b)  # fmt: skip

    try:
        for n in attrs.astuple(names):
            _run("ip", "netns", "add", n)
            made.append(n)
            _run("ip", "-n", n, "link", "set", "lo", "up")
        inet = names.inet
        _run("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", inet, "link", "set", "br0", "up")
        for ip in [*SERVER_IPS, PUBLIC_CLIENT_IP]:
            _run("ip", "-n", inet, "addr", "add", f"{ip}/24", "dev", "br0")
        for i, (router, host, sym) in enumerate(
            ((names.r1, names.h1, False), (names.r2, names.h2, True)), start=1
        ):
            wan, up, lan, hdev = f"w{i}{tag}", f"u{i}{tag}", f"l{i}{tag}", f"h{i}{tag}"
            veth(router, wan, inet, up)
            _run("ip", "-n", inet, "link", "set", up, "master", "br0")
            _run("ip", "-n", inet, "link", "set", up, "up")
            _run("ip", "-n", router, "addr", "add", f"10.77.0.1{i}/24", "dev", wan)
            _run("ip", "-n", router, "link", "set", wan, "up")
            veth(router, lan, host, hdev)
            _run("ip", "-n", router, "addr", "add", f"192.168.7{i}.1/24", "dev", lan)
            _run("ip", "-n", router, "link", "set", lan, "up")
            _run("ip", "-n", host, "addr", "add", f"192.168.7{i}.2/24", "dev", hdev)
            _run("ip", "-n", host, "link", "set", hdev, "up")
            _run("ip", "-n", host, "route", "add", "default", "via", f"192.168.7{i}.1")
            _run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            _run("ip", "netns", "exec", router, "nft", "-f", "-",
                 stdin=_nat_rules(wan, lan, sym))  # fmt: skip
    except (subprocess.CalledProcessError, OSError) as exc:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)
        reason = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        pytest.skip(f"cannot build the NAT lab here: {reason}")
    try:
        yield names
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


def _peer(ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, SCRIPT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        cwd=ROOT,
    )


def _first_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"lab peer failed: {err}")
    out: dict[str, Any] = json.loads(line)
    return out


def _finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(input="", timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def servers(lab: Lab) -> Iterator[list[str]]:
    proc = _peer(lab.inet, "servers", *SERVER_IPS)
    try:
        addrs = _first_json(proc)["addrs"]
        assert isinstance(addrs, list)
        yield [str(a) for a in addrs]
    finally:
        _finish(proc)


def test_the_lab_has_no_way_out(lab: Lab) -> None:
    """No namespace of the lab routes anywhere but the lab."""
    for ns in attrs.astuple(lab):
        routes = subprocess.run(
            ["ip", "-n", ns, "route", "show"], capture_output=True, text=True, check=True
        ).stdout
        for line in routes.splitlines():
            dest = line.split()[0]
            assert dest.startswith(("10.77.0.", "192.168.7")) or (
                dest == "default" and "via 192.168.7" in line
            ), (ns, line)


def test_a_node_in_the_internet_finds_it_is_public(lab: Lab, servers: list[str]) -> None:
    listen = f"/ip4/{PUBLIC_CLIENT_IP}/tcp/4002"
    proc = _peer(lab.inet, "client", "public", listen, *servers)
    try:
        got = _first_json(proc)
    finally:
        _finish(proc)
    assert got["reachability"] == "public"
    assert got["relays"] == []
    announced = [str(a) for a in got["announced"]]
    assert announced == [listen]
    assert got["verdicts"] == {listen: "public"}


@pytest.mark.parametrize(("host", "router_ip"), [("h1", "10.77.0.11"), ("h2", "10.77.0.12")])
def test_a_node_behind_the_nat_is_private_and_reserves_on_the_relay(
    lab: Lab, servers: list[str], host: str, router_ip: str
) -> None:
    proc = _peer(getattr(lab, host), "client", "private", "/ip4/0.0.0.0/tcp/4001", *servers)
    try:
        got = _first_json(proc)
        assert got["reachability"] == "private"
        announced = [str(a) for a in got["announced"]]
        assert not any("/0.0.0.0/" in a for a in announced)  # the wildcard is expanded
        assert f"/ip4/192.168.7{host[1]}.2/tcp/4001" in announced
        relay_id = servers[0].rsplit("/", 1)[1]
        assert got["relays"] == [relay_id]
        circuits = [str(c) for c in got["circuits"]]
        assert circuits and all(f"/p2p/{relay_id}/p2p-circuit/p2p/" in c for c in circuits)
        assert set(circuits) <= {f"{a}/p2p/{c.rsplit('/', 1)[1]}" for a in got["announced"]
                                 for c in circuits}  # fmt: skip
        # the NAT's address was observed (a hole-punching candidate), never confirmed:
        # AutoNAT's dial-backs do not get through
        candidates = [str(c) for c in got["candidates"]]
        assert candidates and all(c.startswith(f"/ip4/{router_ip}/tcp/") for c in candidates)
        assert got["confirmed"] == []
        if host == "h1":  # port-preserving masquerade of a dial from the listening port
            assert candidates == [f"/ip4/{router_ip}/tcp/4001"]
        else:  # fully random: one mapping per server
            assert len(candidates) > 1
        # a public node reaches her through the relay
        ping = subprocess.run(
            ["ip", "netns", "exec", lab.inet, sys.executable, SCRIPT, "ping", circuits[0]],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": ROOT},
            cwd=ROOT,
        )
        assert ping.returncode == 0, ping.stderr
        assert json.loads(ping.stdout)["rtt"] > 0
    finally:
        _finish(proc)
