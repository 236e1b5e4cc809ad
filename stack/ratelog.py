"""Rate-limited logging for conditions a remote peer can repeat at will.

A peer that sends garbage a thousand times a second must not write a thousand log lines
a second.  :class:`RateLimitedLog` logs the first occurrence of a condition (its *key*)
and then at most one line per ``interval`` seconds for that key, saying how many similar
lines were dropped in between.  Peer-caused conditions are logged at WARNING or below and
never with a traceback.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

__all__ = ["DEFAULT_INTERVAL", "MAX_KEYS", "RateLimitedLog"]

#: Seconds between two lines for one key.
DEFAULT_INTERVAL: Final = 10.0
#: Keys remembered; the least recently logged one is forgotten beyond this.
MAX_KEYS: Final = 256


class RateLimitedLog:
    """Log through ``logger`` at most once per ``interval`` seconds per key."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        #: key -> (time of the last line, lines suppressed since)
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged within the interval.

        Returns whether a line was written.
        """
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        suppressed = seen[1] if seen is not None else 0
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_KEYS:
            self._seen.popitem(last=False)
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """:meth:`log` at WARNING."""
        return self.log(logging.WARNING, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        """:meth:`log` at INFO."""
        return self.log(logging.INFO, key, msg, *args)
