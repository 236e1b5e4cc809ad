"""Example: running switchy's conformance suite against your own parts.

This module plays the third party.  It wraps the TCP transport in a transport of
"its own" (one that counts bytes) and gives the suite a harness for it, plus the
built-in Noise and yamux harnesses.  Run from this folder::

    PYTHONPATH=. python -m pytest --pyargs switchy.stack.conformance -p my_fixtures

(``my_fixtures`` must be importable: pytest does not put the current folder on the
module path by itself, hence ``PYTHONPATH=.``.)
"""

from __future__ import annotations

from typing import Any

import pytest
from multiaddr import Multiaddr

from switchy.conformance import NoiseHarness, TcpTransportHarness, YamuxHarness
from switchy.stack.identity import PeerId
from switchy.stack.transport import ConnectionHandler, Listener, Transport
from switchy.transports.tcp import TcpTransport


class CountingTcpTransport(TcpTransport):
    """A "third-party" transport: TCP that counts the connections it made."""

    connections_made = 0

    async def dial(self, addr: Multiaddr, *, remote_peer: PeerId | None = None) -> Any:
        conn = await super().dial(addr, remote_peer=remote_peer)
        CountingTcpTransport.connections_made += 1
        return conn

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        return await super().listen(addr, handler)


class CountingTcpHarness(TcpTransportHarness):
    """The harness: how the suite builds our transport."""

    def make(self) -> Transport:
        return CountingTcpTransport(self.config())


@pytest.fixture
def transport_harness() -> CountingTcpHarness:
    """Run the transport suite on our transport."""
    return CountingTcpHarness()


@pytest.fixture
def security_harness() -> NoiseHarness:
    """Run the security suite on Noise."""
    return NoiseHarness()


@pytest.fixture
def muxer_harness() -> YamuxHarness:
    """Run the muxer suite on yamux."""
    return YamuxHarness()
