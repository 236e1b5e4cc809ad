"""Sans-IO reachability: a confidence count per address over a window of recent answers.

For each address the tracker keeps the latest conclusive answer of each server,
for the ``window`` servers heard from most recently, dropping answers older
than ``max_age``.  An address is ``public`` when at least ``confidence`` of
those servers reached it and they outnumber the ones that did not; ``private``
in the opposite case; ``unknown`` otherwise.  One server counts once, so a
single lying server cannot decide.  The node as a whole is ``public`` when one
of its addresses is, ``private`` when every tracked address is, else
``unknown``; an address with fewer than ``confidence`` answers so far does not count in
the node's state (a newly observed address would otherwise flap it to ``unknown``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.autonat.client import Result, Verdict
from switchy.stack.addrbook import Reachability
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import PeerId

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_MAX_AGE",
    "DEFAULT_WINDOW",
    "MAX_TRACKED_ADDRS",
    "Reachability",
    "ReachabilityChange",
    "ReachabilityTracker",
]

#: Servers that must agree before an address is public or private.
DEFAULT_CONFIDENCE: Final = 3
#: Servers whose latest answers count, per address.
DEFAULT_WINDOW: Final = 5
#: Answers older than this (seconds) no longer count.
DEFAULT_MAX_AGE: Final = 3600.0
#: Addresses tracked at most; beyond that the least recently updated is forgotten.
MAX_TRACKED_ADDRS: Final = 64


@attrs.frozen
class ReachabilityChange:
    """The reachability of ``addr`` (``None``: of the node) changed from ``old`` to ``new``."""

    addr: Multiaddr | None
    old: Reachability
    new: Reachability


class ReachabilityTracker:
    """Per-address and overall reachability from AutoNAT answers (see the module docstring)."""

    def __init__(
        self,
        *,
        confidence: int = DEFAULT_CONFIDENCE,
        window: int = DEFAULT_WINDOW,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        if not 1 <= confidence <= window:
            raise InvalidConfiguration(
                f"need 1 <= confidence <= window, got confidence={confidence}, window={window}"
            )
        if max_age <= 0:
            raise InvalidConfiguration(f"max_age must be > 0, got {max_age}")
        self.confidence = confidence
        self.window = window
        self.max_age = max_age
        # addr -> (server -> (time, reached)), most recent server last
        self._answers: OrderedDict[Multiaddr, OrderedDict[PeerId, tuple[float, bool]]] = (
            OrderedDict()
        )
        self._state: dict[Multiaddr, Reachability] = {}
        self._overall = Reachability.UNKNOWN

    def _evaluate(self, addr: Multiaddr, now: float) -> Reachability:
        answers = self._answers.get(addr)
        if not answers:
            return Reachability.UNKNOWN
        for server in [s for s, (t, _) in answers.items() if now - t >= self.max_age]:
            del answers[server]
        yes = sum(1 for _, reached in answers.values() if reached)
        no = len(answers) - yes
        if yes >= self.confidence and yes > no:
            return Reachability.PUBLIC
        if no >= self.confidence and no > yes:
            return Reachability.PRIVATE
        return Reachability.UNKNOWN

    def add(self, result: Result, now: float) -> list[ReachabilityChange]:
        """Count ``result`` (inconclusive ones are ignored); return what changed."""
        if not result.conclusive:
            return []
        addr = result.addr
        answers = self._answers.pop(addr, None) or OrderedDict()
        self._answers[addr] = answers  # most recently updated last
        answers.pop(result.server, None)
        answers[result.server] = (now, result.verdict is Verdict.REACHABLE)
        while len(answers) > self.window:
            answers.popitem(last=False)
        while len(self._answers) > MAX_TRACKED_ADDRS:
            old, _ = self._answers.popitem(last=False)
            self._state.pop(old, None)
        return self.refresh(now)

    def refresh(self, now: float) -> list[ReachabilityChange]:
        """Re-evaluate every address (answers age out); return what changed."""
        changes: list[ReachabilityChange] = []
        for addr in list(self._answers):
            new = self._evaluate(addr, now)
            old = self._state.get(addr, Reachability.UNKNOWN)
            if new is not old:
                changes.append(ReachabilityChange(addr, old, new))
            self._state[addr] = new
        # An address still gathering its first answers (fewer than ``confidence``) does
        # not make a known node unknown: a newly observed address would flap it otherwise.
        settled = [
            st
            for a, st in self._state.items()
            if st is not Reachability.UNKNOWN or len(self._answers.get(a, ())) >= self.confidence
        ]
        overall = self._overall_of(settled)
        if overall is not self._overall:
            changes.append(ReachabilityChange(None, self._overall, overall))
            self._overall = overall
        return changes

    @staticmethod
    def _overall_of(states: Iterable[Reachability]) -> Reachability:
        seen = list(states)
        if Reachability.PUBLIC in seen:
            return Reachability.PUBLIC
        if seen and all(s is Reachability.PRIVATE for s in seen):
            return Reachability.PRIVATE
        return Reachability.UNKNOWN

    def forget(self, keep: Iterable[Multiaddr], now: float) -> list[ReachabilityChange]:
        """Drop every address not in ``keep`` (addresses we no longer have)."""
        wanted = set(keep)
        for addr in [a for a in self._answers if a not in wanted]:
            del self._answers[addr]
            self._state.pop(addr, None)
        return self.refresh(now)

    def state(self, addr: Multiaddr) -> Reachability:
        """The reachability of ``addr`` (``unknown`` for an address never answered about)."""
        return self._state.get(addr, Reachability.UNKNOWN)

    @property
    def overall(self) -> Reachability:
        """The node's reachability."""
        return self._overall

    @property
    def addresses(self) -> dict[Multiaddr, Reachability]:
        """Every tracked address and its reachability."""
        return dict(self._state)

    def confident(self, addr: Multiaddr) -> bool:
        """Whether ``addr`` is public or private (not unknown)."""
        return self.state(addr) is not Reachability.UNKNOWN
