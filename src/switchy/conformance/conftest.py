"""Fixtures of the protocol suites: they look up the harness fixtures you provide.

A suite whose harness fixture is missing is skipped with the fixture's name.
"""

from __future__ import annotations

from switchy.conformance.harness import DiscoveryHarness, RemotePeerHarness, RouterHarness
from switchy.stack.conformance._util import harness_fixture

remote = harness_fixture(
    "remote_harness", RemotePeerHarness, "remote", "The remote peer under test"
)
router_part = harness_fixture(
    "router_harness", RouterHarness, "router_part", "The router services under test"
)
discovery = harness_fixture(
    "discovery_harness", DiscoveryHarness, "discovery", "The discovery backend under test"
)
