"""Task helpers: stopping tasks without hiding the caller's own cancellation.

The usual ``task.cancel()`` then ``with suppress(CancelledError): await task`` has a
flaw: when the *caller* is cancelled while it waits, its ``CancelledError`` comes out of
the same ``await`` and is swallowed too, so the caller carries on as if nothing
happened (and whoever cancelled it waits for an end that never comes).
:func:`cancel_and_wait` waits with :func:`asyncio.wait`, which never raises the tasks'
outcomes, so the only ``CancelledError`` it lets through is the caller's.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended; their outcomes are dropped.

    A task's result, exception or cancellation is taken (so asyncio never logs "exception
    was never retrieved") and not raised.  Tasks already done are only collected.  A
    cancellation of the caller while waiting propagates as :class:`asyncio.CancelledError`
    (the tasks stay cancelled and end on their own).
    """
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
    for t in tasks:
        if not t.cancelled():
            t.exception()
