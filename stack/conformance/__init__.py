"""The conformance suite of the core: pytest suites that judge any transport, security
layer, stream muxer or node set-up built for this stack.

Suites (modules of this package, each needing one harness fixture):

* ``test_transport`` — ``transport_harness`` → :class:`TransportHarness`;
* ``test_security`` — ``security_harness`` → :class:`SecurityHarness`;
* ``test_muxer`` — ``muxer_harness`` → :class:`MuxerHarness`;
* ``test_node`` — ``node_harness`` → :class:`NodeHarness` (message integrity,
  connection lifecycle, the protocol-handler contract, partitions where the
  harness can make them).

The suites of the protocols (router, discovery, a remote peer), the virtual-time
harness and the harnesses of the project's own parts are in
:mod:`switchy.conformance`, above the core (which knows no concrete transport or
protocol).

Using it on your own part: write a module with the fixture(s), e.g.
``my_fixtures.py``::

    import pytest
    from switchy.stack.conformance import TransportHarness

    class MyHarness(TransportHarness):
        listen_addr = "/ip4/127.0.0.1/tcp/0"
        def make(self): return MyTransport()
        def unreachable_addr(self): return "/ip4/127.0.0.1/tcp/9"

    @pytest.fixture
    def transport_harness(): return MyHarness()

and run ``pytest --pyargs switchy.stack.conformance -p my_fixtures`` (with ``my_fixtures``
importable, e.g. ``PYTHONPATH=.``).  Suites without a fixture are skipped.  A failure's
message starts with ``contract '<name>' broken:`` and says what happened.

Harnesses here run each test in real time on a fresh event loop (:meth:`Harness.run`);
mix in :class:`switchy.conformance.VirtualTimeHarness` to run on the simulator's loop
in virtual time.  :mod:`switchy.stack.conformance.strategies` has the hypothesis
strategies the suites use.
"""

from __future__ import annotations

from switchy.stack.conformance._util import ContractViolation
from switchy.stack.conformance.harness import (
    Harness,
    MuxerHarness,
    NodeHarness,
    SecurityHarness,
    TransportHarness,
)

__all__ = [
    "ContractViolation",
    "Harness",
    "MuxerHarness",
    "NodeHarness",
    "SecurityHarness",
    "TransportHarness",
]
