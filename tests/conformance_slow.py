"""Correct implementations on a slow machine: the conformance suite must pass them.

A busy shared machine moves bytes slower than an idle one; the suite's patience
bounds how long nothing happens, not how long a transfer takes.  The harnesses here
run the built-in parts on simulated links far slower than the patience allows for
a whole transfer (in virtual time: no wall-clock cost, no dependence on the machine).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from switchy.conformance import SimTransportHarness

_T = TypeVar("_T")

#: Bytes per second of every link: the 64 MiB backpressure test takes ~32 s to drain.
SLOW_BANDWIDTH = 2 * 1024 * 1024


class SlowLinkTransportHarness(SimTransportHarness):
    """The simulator's transport on 2 MiB/s links with a patience of 2 s."""

    patience = 2.0

    def run(self, main: Callable[[], Awaitable[_T]]) -> _T:
        async def slowed() -> _T:
            for link in self.simulation.network.links:
                link.bandwidth = SLOW_BANDWIDTH
            return await main()

        return super().run(slowed)
