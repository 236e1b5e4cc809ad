"""Fixtures of the conformance suites: they look up the harness fixtures you provide.

A suite whose harness fixture is missing is skipped with the fixture's name.
"""

from __future__ import annotations

from switchy.stack.conformance._util import harness_fixture
from switchy.stack.conformance.harness import (
    MuxerHarness,
    NodeHarness,
    SecurityHarness,
    TransportHarness,
)

transport = harness_fixture(
    "transport_harness", TransportHarness, "transport", "The transport under test"
)
security = harness_fixture(
    "security_harness", SecurityHarness, "security", "The security transport under test"
)
muxer = harness_fixture("muxer_harness", MuxerHarness, "muxer", "The stream muxer under test")
nodes = harness_fixture("node_harness", NodeHarness, "nodes", "The node set-up under test")
