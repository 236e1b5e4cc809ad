"""What the namespace NAT labs share (tests/test_nat_lab.py, tests/test_nat_lab_punch.py and
the tests built on them): the prerequisites, the namespaces and links of a lab whose
"internet" is one bridge with LANs behind nftables routers, and the lab peer processes.

Every LAN ``i`` (from 1) has the same addresses: the router's WAN side ``10.77.0.1<i>/24``
on the internet bridge, its LAN side ``192.168.7<i>.1/24``, the host ``192.168.7<i>.2``
with its default route through the router.  No namespace has a route to the machine's own
network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = str(Path(__file__).parent.parent)
#: Seconds a lab peer has to print its next line or to stop once told to.
PEER_WAIT = 30


class LabUnavailable(Exception):
    """The lab cannot be built on this machine (the message says why)."""


def run(*cmd: str, stdin: str | None = None) -> None:
    """Run one set-up command (bounded); raises :class:`subprocess.CalledProcessError`."""
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20, input=stdin)


def lab_prerequisites() -> None:
    """Skip (with the reason) where a lab cannot be built: not Linux, no ``ip``, no
    ``nft``, not root."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("the NAT lab needs Linux and iproute2 ('ip')")
    if shutil.which("nft") is None:
        pytest.skip("the NAT lab needs nftables ('nft'); .ci/run installs it")
    if os.geteuid() != 0:
        pytest.skip("the NAT lab needs root to create network namespaces (ip netns)")


def router_rules(wan: str, lan: str, symmetric: bool, *, guard_router: bool = False) -> str:
    """A home router's nftables rules: masquerade on ``wan`` (port-preserving, or with
    ``symmetric`` a random port per destination); forward from the WAN only what belongs
    to a flow from the LAN.  With ``guard_router`` the router itself also drops what
    arrives on the WAN outside such a flow (no RST)."""
    flags = " random,fully-random" if symmetric else ""
    guard = f"""
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan}" ct state established,related accept
        iifname "{wan}" drop
    }}""" if guard_router else ""  # fmt: skip
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
    }}{guard}
}}
"""


def _delete(namespaces: Sequence[str]) -> None:
    for n in namespaces:
        subprocess.run(["ip", "netns", "del", n], capture_output=True, check=False)


@contextlib.contextmanager
def build_lab(
    inet: str,
    inet_ips: Sequence[str],
    lans: Sequence[tuple[str, str, bool]],
    tag: str,
    *,
    guard_routers: bool = False,
) -> Iterator[None]:
    """Build a lab, remove it on exit: the namespace ``inet`` with a bridge holding
    ``inet_ips`` (/24), and per ``(router, host, symmetric)`` of ``lans`` a router
    namespace (:func:`router_rules`) and a host namespace behind it (addresses in the
    module docstring).  ``tag`` makes the interface names unique.  Raises
    :class:`LabUnavailable` with the reason where it cannot be built."""
    made: list[str] = []
    try:
        for n in (inet, *(ns for router, host, _ in lans for ns in (router, host))):
            run("ip", "netns", "add", n)
            made.append(n)
            run("ip", "-n", n, "link", "set", "lo", "up")
        run("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", inet, "link", "set", "br0", "up")
        for ip in inet_ips:
            run("ip", "-n", inet, "addr", "add", f"{ip}/24", "dev", "br0")
        for i, (router, host, symmetric) in enumerate(lans, start=1):
            wan, up, lan, hdev = f"w{i}{tag}", f"u{i}{tag}", f"l{i}{tag}", f"h{i}{tag}"
            run("ip", "link", "add", wan, "netns", router, "type", "veth", "peer", "name", up,
                "netns", inet)  # fmt: skip
            run("ip", "-n", inet, "link", "set", up, "master", "br0")
            run("ip", "-n", inet, "link", "set", up, "up")
            run("ip", "-n", router, "addr", "add", f"10.77.0.1{i}/24", "dev", wan)
            run("ip", "-n", router, "link", "set", wan, "up")
            run("ip", "link", "add", lan, "netns", router, "type", "veth", "peer", "name", hdev,
                "netns", host)  # fmt: skip
            run("ip", "-n", router, "addr", "add", f"192.168.7{i}.1/24", "dev", lan)
            run("ip", "-n", router, "link", "set", lan, "up")
            run("ip", "-n", host, "addr", "add", f"192.168.7{i}.2/24", "dev", hdev)
            run("ip", "-n", host, "link", "set", hdev, "up")
            run("ip", "-n", host, "route", "add", "default", "via", f"192.168.7{i}.1")
            run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            rules = router_rules(wan, lan, symmetric, guard_router=guard_routers)
            run("ip", "netns", "exec", router, "nft", "-f", "-", stdin=rules)
    except (subprocess.CalledProcessError, OSError) as exc:
        _delete(made)
        reason = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        raise LabUnavailable(f"cannot build the NAT lab here: {reason}") from None
    try:
        yield
    finally:
        _delete(made)


@contextlib.contextmanager
def lab_or_skip(lab: contextlib.AbstractContextManager[Any]) -> Iterator[Any]:
    """For a lab fixture: check :func:`lab_prerequisites`, enter ``lab`` (what
    :func:`build_lab` returns, or a context manager around it) and skip with the reason
    when it cannot be built."""
    lab_prerequisites()
    try:
        with lab as value:
            yield value
    except LabUnavailable as exc:
        pytest.skip(str(exc))


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    return dict(env) if env is not None else {**os.environ, "PYTHONPATH": ROOT}


def spawn(
    ns: str, script: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``script`` (our Python) with ``args`` in the namespace ``ns``: a lab peer
    (stdin, stdout and stderr piped; ``env`` by default ours with this checkout first on
    ``PYTHONPATH``)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
        cwd=ROOT,
    )


def run_in(
    ns: str, *argv: str, timeout: float, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run our Python with ``argv`` in the namespace ``ns`` to its end (within
    ``timeout`` seconds); its output captured as text."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(env),
        cwd=ROOT,
    )


def next_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The next JSON line of a lab peer (its own waits are bounded); when it ended
    instead, an :class:`AssertionError` with its stderr."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        _, err = proc.communicate(timeout=PEER_WAIT)
        raise AssertionError(f"lab peer failed: {err}")
    out: dict[str, Any] = json.loads(line)
    return out


def finish(proc: subprocess.Popen[str]) -> None:
    """Tell a lab peer to stop (end of its stdin); it must exit 0 without a traceback."""
    try:
        _, err = proc.communicate(input="", timeout=PEER_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=PEER_WAIT)
        raise AssertionError(f"lab peer did not stop: {err}") from None
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
