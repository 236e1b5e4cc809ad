"""``switchy ping`` through a relay: it reports when the connection became direct and the
round trips before and after (loopback; the lab punches through real NATs)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest

from switchy.presets import default_node
from switchy.protocols.identify import IdentifyService
from switchy.stack.config import NetworkConfig
from switchy.stack.node import Node
from switchy.transports.relay import RelayConfig, RelayService
from switchy.transports.tcp import TcpTransport

LOCAL = "/ip4/127.0.0.1/tcp/0"
#: Loopback counts as public here, so the relayed peer's dial to the pinging node's
#: loopback address (DCUtR's unilateral step) can make the connection direct.
PUBLIC = "127.0.0.0/8"


async def _ping_through_relay(*, punch: bool) -> dict[str, Any]:
    relay = Node(
        transports=[TcpTransport()],
        services=[IdentifyService(), RelayService(RelayConfig(limit_data=0))],
        listen=[LOCAL],
    )
    config = NetworkConfig(public_networks=(PUBLIC,))
    b = default_node(
        transports=[TcpTransport(config)], config=config, listen=[LOCAL], hole_punching=punch
    )
    async with relay, b:
        (circuit,) = await b.listen(f"{relay.full_addrs[0]}/p2p-circuit")
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "switchy", "ping", f"{circuit}/p2p/{b.peer_id}"),
            *("-c", "4", "-i", "0.5", "--json"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "SWITCHY_PUBLIC_NETWORKS": PUBLIC},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    got: dict[str, Any] = json.loads(out)
    return got


@pytest.mark.parametrize("punch", [True, False], ids=["punching", "off"])
def test_ping_through_a_relay_reports_the_switch_to_direct(punch: bool) -> None:
    got = asyncio.run(_ping_through_relay(punch=punch))
    assert got["count"] == 4
    assert len(got["relayed_rtts_ms"]) + len(got["direct_rtts_ms"]) == 4
    if punch:
        assert got["direct_after_ms"] is not None and got["direct_after_ms"] < 1500, got
        assert got["direct_addr"].startswith("/ip4/127.0.0.1/tcp/"), got
        assert got["direct_rtts_ms"], got  # the pings after the switch went direct
    else:  # the relayed side does not punch: the connection stays relayed
        assert got["direct_after_ms"] is None and got["direct_addr"] is None, got
        assert len(got["relayed_rtts_ms"]) == 4, got


def test_ping_of_a_direct_address_keeps_its_output() -> None:
    async def main() -> dict[str, Any]:
        async with default_node(listen=[LOCAL]) as b:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "switchy", "ping", str(b.full_addrs[0])),
                *("-c", "2", "--json"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        got: dict[str, Any] = json.loads(out)
        return got

    got = asyncio.run(main())
    assert set(got) == {"peer_id", "count", "rtts_ms", "min_ms", "median_ms", "max_ms"}
