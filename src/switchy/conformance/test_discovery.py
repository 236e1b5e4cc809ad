"""Discovery contract: a registered name resolves to its registrant (id and addresses)
from another node, connecting by name works, an unknown name fails with
DiscoveryFailed, names of any allowed shape work, many names registered at once all
resolve correctly, and — where the backend owns names — another peer cannot take a
live name over.

Needs a ``discovery_harness`` fixture returning a
:class:`~switchy.conformance.harness.DiscoveryHarness`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from switchy.conformance.harness import DiscoveryHarness, SimNodeHarness
from switchy.protocols.discovery import connect_by_name, discover, register_name
from switchy.stack.conformance import strategies
from switchy.stack.conformance._util import require, within
from switchy.stack.errors import DiscoveryFailed, P2PError


def _with_nodes(
    h: DiscoveryHarness, body: Callable[[Callable[[str], Any]], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """Run ``body(make)``, where ``make(name)`` starts a node with a fresh backend."""

    async def main() -> None:
        nodes = SimNodeHarness.inside(h.simulation)
        await h.setup(nodes)
        started: list[Any] = []

        async def make(name: str) -> Any:
            node = nodes.make_node(name, services=[h.make_backend()])
            await node.start()
            started.append(node)
            return node

        try:
            await body(make)
        finally:
            for node in started:
                await node.close()
            await h.teardown()

    return main


async def _resolve(h: DiscoveryHarness, node: Any, name: str) -> tuple[Any, list[Any]]:
    found = await within(h, discover(node, name), "discovery.resolve", f"resolving {name!r}")
    return found.peer_id, list(found.addrs)


def test_register_resolve_and_connect_by_name(discovery: DiscoveryHarness) -> None:
    async def body(make: Callable[[str], Any]) -> None:
        a, b = await make("a"), await make("b")
        await within(discovery, register_name(a, "living-room"), "discovery.register", "register")
        try:
            peer, addrs = await _resolve(discovery, b, "living-room")
        except DiscoveryFailed as exc:
            require(False, "discovery.register", f"a registered name does not resolve: {exc}")
        require(peer == a.peer_id, "discovery.resolve", f"resolved to {peer}, not {a.peer_id}")
        require(
            {str(x) for x in addrs} & {str(x) for x in a.listen_addrs},
            "discovery.resolve",
            f"resolved addresses {addrs} hold none of {a.listen_addrs}",
        )
        conn = await within(
            discovery, connect_by_name(b, "living-room"), "discovery.connect", "connecting"
        )
        require(conn.remote_peer == a.peer_id, "discovery.connect", "connected to another peer")

    discovery.run(_with_nodes(discovery, body))


def test_unknown_name_fails_clearly(discovery: DiscoveryHarness) -> None:
    async def body(make: Callable[[str], Any]) -> None:
        b = await make("b")
        try:
            await _resolve(discovery, b, "nobody-has-this-name")
        except DiscoveryFailed as exc:
            require(
                "nobody-has-this-name" in str(exc) or exc.tried,
                "discovery.unknown",
                f"DiscoveryFailed does not say what was tried: {exc}",
            )
        else:
            require(False, "discovery.unknown", "an unregistered name resolved")

    discovery.run(_with_nodes(discovery, body))


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=strategies.node_names())
def test_names_of_any_allowed_shape(discovery: DiscoveryHarness, name: str) -> None:
    async def body(make: Callable[[str], Any]) -> None:
        a, b = await make("a"), await make("b")
        await within(discovery, register_name(a, name), "discovery.register", "register")
        peer, _ = await _resolve(discovery, b, name)
        require(peer == a.peer_id, "discovery.resolve", f"{name!r} resolved to another peer")

    discovery.run(_with_nodes(discovery, body))


def test_many_names_at_once(discovery: DiscoveryHarness) -> None:
    async def body(make: Callable[[str], Any]) -> None:
        nodes = [await make(f"n{i}") for i in range(8)]
        await within(
            discovery,
            asyncio.gather(*(register_name(n, f"device-{i}") for i, n in enumerate(nodes))),
            "discovery.register",
            "8 registrations at once",
        )
        client = await make("client")
        found = await within(
            discovery,
            asyncio.gather(*(discover(client, f"device-{i}") for i in range(8))),
            "discovery.resolve",
            "8 lookups at once",
        )
        wrong = [i for i, f in enumerate(found) if f.peer_id != nodes[i].peer_id]
        require(not wrong, "discovery.resolve", f"names {wrong} resolved to the wrong peers")

    discovery.run(_with_nodes(discovery, body))


def test_a_live_name_cannot_be_taken_over(discovery: DiscoveryHarness) -> None:
    if not discovery.owns_names:
        pytest.skip("this backend does not own names (a later registration replaces)")

    async def body(make: Callable[[str], Any]) -> None:
        a, thief, b = await make("a"), await make("thief"), await make("b")
        await within(discovery, register_name(a, "kitchen"), "discovery.register", "register")
        with contextlib.suppress(P2PError):  # refused: fine
            await within(discovery, register_name(thief, "kitchen"), "discovery.owner", "steal")
        peer, _ = await _resolve(discovery, b, "kitchen")
        require(
            peer == a.peer_id,
            "discovery.owner",
            "another peer took over a live name",
        )

    discovery.run(_with_nodes(discovery, body))
