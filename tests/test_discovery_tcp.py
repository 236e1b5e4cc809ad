"""The registry and the Node discovery API over real loopback TCP sockets."""

from __future__ import annotations

import asyncio

import pytest

from switchy.presets import default_node
from switchy.protocols.discovery import connect_by_name, register_name
from switchy.protocols.discovery.backends import RegistryBackend
from switchy.protocols.discovery.claims import seal_name_claim
from switchy.protocols.discovery.client import register
from switchy.protocols.discovery.registry import RegistryService
from switchy.protocols.ping import ping
from switchy.stack.errors import DiscoveryFailed, RequestRefused

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def test_register_connect_by_name_and_refusals_over_tcp() -> None:
    async def main() -> None:
        async with default_node(services=[RegistryService()], listen=[LOOPBACK]) as hub:
            reg = str(hub.full_addrs[0])
            async with (
                default_node(services=[RegistryBackend([reg])], listen=[LOOPBACK]) as a,
                default_node(services=[RegistryBackend([reg])]) as b,
            ):
                await register_name(a, "printer")
                conn = await connect_by_name(b, "printer")
                assert conn.remote_peer == a.peer_id
                assert len(await ping(b, "/p2p/" + str(a.peer_id), count=2)) == 2
                # B presents A's (valid, signed) claim as its own: refused, A keeps the name.
                forged = seal_name_claim(a.key, "scanner", tuple(a.listen_addrs), 1)
                with pytest.raises(RequestRefused, match="BAD_RECORD") as info:
                    await register(b, reg, "scanner", 60, forged)
                assert "not by the registering peer" in str(info.value)
                with pytest.raises(RequestRefused, match="NAME_TAKEN"):
                    await register_name(b, "printer")
            async with default_node(services=[RegistryBackend([reg])]) as c:
                with pytest.raises(DiscoveryFailed, match="'printer' is not registered"):
                    await connect_by_name(c, "printer")

    asyncio.run(asyncio.wait_for(main(), 30))
