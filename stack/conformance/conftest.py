"""Fixtures of the conformance suites: they look up the harness fixtures you provide.

A suite whose harness fixture is missing is skipped with the fixture's name.
"""

from __future__ import annotations

from typing import Any

import pytest

from switchy.stack.conformance.harness import (
    DiscoveryHarness,
    Harness,
    MuxerHarness,
    NodeHarness,
    RemotePeerHarness,
    RouterHarness,
    SecurityHarness,
    TransportHarness,
)


def _harness_fixture(fixture: str, kind: type, name: str, what: str) -> Any:
    """A fixture ``name`` returning the ``kind`` harness of the user's ``fixture``."""

    def lookup(request: pytest.FixtureRequest) -> Harness:
        try:
            harness = request.getfixturevalue(fixture)
        except pytest.FixtureLookupError:
            pytest.skip(
                f"no {fixture!r} fixture: give one returning a {kind.__name__} to run this suite"
            )
        if not isinstance(harness, kind) or not isinstance(harness, Harness):
            raise TypeError(f"fixture {fixture!r} must return a {kind.__name__}, got {harness!r}")
        return harness

    lookup.__doc__ = f"{what} (from your ``{fixture}`` fixture)."
    return pytest.fixture(name=name)(lookup)


transport = _harness_fixture(
    "transport_harness", TransportHarness, "transport", "The transport under test"
)
security = _harness_fixture(
    "security_harness", SecurityHarness, "security", "The security transport under test"
)
muxer = _harness_fixture("muxer_harness", MuxerHarness, "muxer", "The stream muxer under test")
nodes = _harness_fixture("node_harness", NodeHarness, "nodes", "The node set-up under test")
remote = _harness_fixture(
    "remote_harness", RemotePeerHarness, "remote", "The remote peer under test"
)
router_part = _harness_fixture(
    "router_harness", RouterHarness, "router_part", "The router services under test"
)
discovery = _harness_fixture(
    "discovery_harness", DiscoveryHarness, "discovery", "The discovery backend under test"
)
