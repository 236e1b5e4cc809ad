"""Fixtures of the conformance suites: they look up the harness fixtures you provide.

A suite whose harness fixture is missing is skipped with the fixture's name.
"""

from __future__ import annotations

import pytest

from stack.conformance.harness import (
    DiscoveryHarness,
    MuxerHarness,
    NodeHarness,
    RemotePeerHarness,
    RouterHarness,
    SecurityHarness,
    TransportHarness,
)


def _harness(request: pytest.FixtureRequest, name: str, kind: type) -> object:
    try:
        harness = request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        pytest.skip(f"no {name!r} fixture: give one returning a {kind.__name__} to run this suite")
    if not isinstance(harness, kind):
        raise TypeError(f"fixture {name!r} must return a {kind.__name__}, got {harness!r}")
    return harness


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> TransportHarness:
    """The transport under test (from your ``transport_harness`` fixture)."""
    return _harness(request, "transport_harness", TransportHarness)  # type: ignore[return-value]


@pytest.fixture
def security(request: pytest.FixtureRequest) -> SecurityHarness:
    """The security transport under test (from your ``security_harness`` fixture)."""
    return _harness(request, "security_harness", SecurityHarness)  # type: ignore[return-value]


@pytest.fixture
def muxer(request: pytest.FixtureRequest) -> MuxerHarness:
    """The stream muxer under test (from your ``muxer_harness`` fixture)."""
    return _harness(request, "muxer_harness", MuxerHarness)  # type: ignore[return-value]


@pytest.fixture
def nodes(request: pytest.FixtureRequest) -> NodeHarness:
    """The node set-up under test (from your ``node_harness`` fixture)."""
    return _harness(request, "node_harness", NodeHarness)  # type: ignore[return-value]


@pytest.fixture
def remote(request: pytest.FixtureRequest) -> RemotePeerHarness:
    """The remote peer under test (from your ``remote_harness`` fixture)."""
    return _harness(request, "remote_harness", RemotePeerHarness)  # type: ignore[return-value]


@pytest.fixture
def router_part(request: pytest.FixtureRequest) -> RouterHarness:
    """The router services under test (from your ``router_harness`` fixture)."""
    return _harness(request, "router_harness", RouterHarness)  # type: ignore[return-value]


@pytest.fixture
def discovery(request: pytest.FixtureRequest) -> DiscoveryHarness:
    """The discovery backend under test (from your ``discovery_harness`` fixture)."""
    return _harness(request, "discovery_harness", DiscoveryHarness)  # type: ignore[return-value]
