"""A virtual-time asyncio event loop.

:class:`VirtualTimeLoop` is an ordinary :class:`asyncio.BaseEventLoop` whose
clock is a number it owns.  Whenever no callback is ready, the loop jumps its
clock straight to the earliest scheduled timer instead of sleeping, so idle
time costs nothing: ``await asyncio.sleep(3600)`` returns at once in wall time
while ``loop.time()`` advances by exactly 3600.  ``asyncio.sleep``,
``asyncio.timeout``, ``wait_for`` and every other timer-based API work
unchanged, because they all read ``loop.time()`` and schedule with ``call_at``.

The loop has no selector and opens no socket (not even the self-pipe other
loops use).  Every real network API of the loop (``create_connection``,
``create_server``, ``create_datagram_endpoint``, ``getaddrinfo``, ``sock_*``,
readers/writers, subprocesses) raises :class:`RealNetworkForbidden`, so
nothing can leak onto the real network during a simulation.

When nothing is ready, no timer is scheduled, no thread is working for the
loop and the main task has not finished, nothing can ever happen again: the
loop raises :class:`~switchy.stack.errors.SimulationDeadlock` naming the stuck tasks
and where each one waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import heapq
import threading
import types
from collections.abc import Callable
from typing import Any, Final, NoReturn, TypeVar, TypeVarTuple

from switchy.stack.errors import P2PTimeout, SimulationDeadlock, UnsupportedAddress

__all__ = [
    "RealNetworkForbidden",
    "VirtualTimeLoop",
    "describe_task",
]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

#: Most stuck tasks named in a deadlock message (the rest are counted).
MAX_TASKS_IN_REPORT: Final = 20


class RealNetworkForbidden(UnsupportedAddress):
    """Real network or OS I/O was attempted on a simulation loop."""


def describe_task(task: asyncio.Task[Any]) -> str:
    """``'name' (outer at file:line -> … -> innermost at file:line)``: where ``task`` waits."""
    coro: Any = task.get_coro()
    steps: list[str] = []
    depth = 0
    while coro is not None and depth < 64:
        depth += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        name = getattr(coro, "__qualname__", type(coro).__name__)
        steps.append(f"{name} at {frame.f_code.co_filename}:{frame.f_lineno}")
        nxt = getattr(coro, "cr_await", None)
        if nxt is None:
            nxt = getattr(coro, "gi_yieldfrom", None)
        if not isinstance(nxt, types.CoroutineType | types.GeneratorType):
            break
        coro = nxt
    if not steps:
        return f"{task.get_name()!r} ({getattr(task.get_coro(), '__qualname__', '?')})"
    if len(steps) > 3:
        steps = [steps[0], "...", *steps[-2:]]
    return f"{task.get_name()!r} ({' -> '.join(steps)})"


class _FifoTimerHandle(asyncio.TimerHandle):
    """A timer handle ordered by (time, creation order): equal times fire first-in first-out."""

    __slots__ = ("_seq",)

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
        seq: int,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._seq = seq

    def __lt__(self, other: object) -> bool:
        # every heap push and pop compares timers: kept to the fewest operations
        w: float = self._when  # type: ignore[attr-defined]
        ow: float = other._when  # type: ignore[attr-defined]
        if w != ow:
            return w < ow
        seq: int = other._seq  # type: ignore[attr-defined]
        return self._seq < seq


class _VirtualSelector:
    """Stands in for the selector: never blocks, advances the loop's clock instead."""

    __slots__ = ("_loop",)

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        loop = self._loop
        if timeout == 0:
            return []
        if loop._pending_threads:
            # Virtual time stands still while threads work: wait for one to finish
            # before jumping to the next timer.
            loop._thread_wakeup.wait()
            loop._thread_wakeup.clear()
            return []
        if timeout is None:
            # No callback is ready, no timer is scheduled and no thread is working.
            loop._deadlocked()
        else:
            # Jump to the earliest timer (exactly, to keep times reproducible).
            when = loop._scheduled[0]._when  # type: ignore[attr-defined]
            limit = loop.time_limit
            if limit is not None and when > limit:
                loop._time = max(loop._time, limit)
                loop._time_limit_reached()
            if when > loop._time:
                loop._time = when
        return []

    def close(self) -> None:
        """Nothing to release."""


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio loop on a virtual clock that jumps over idle time (see the module docstring).

    ``time_limit`` (virtual seconds) makes the loop raise
    :class:`~switchy.stack.errors.P2PTimeout` instead of running past that time, a
    guard against simulations that never finish because timers keep firing.
    """

    #: The clock is virtual: :func:`switchy.stack.metrics.measure_clock` times round trips
    #: and transfers with ``time()`` here, not with the wall clock.
    virtual_clock: Final = True

    def __init__(self, *, start_time: float = 0.0, time_limit: float | None = None) -> None:
        super().__init__()
        self._time = float(start_time)
        self.time_limit = time_limit
        self._selector = _VirtualSelector(self)
        self._pending_threads = 0
        self._timer_seq = 0
        self._thread_wakeup = threading.Event()
        #: The task whose completion the simulation waits for (named first in reports).
        self.main_task: asyncio.Task[Any] | None = None

    # --- the clock ------------------------------------------------------------------------

    def call_at(
        self,
        when: float,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule ``callback(*args)`` at virtual time ``when``; equal times run in FIFO order."""
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()  # type: ignore[attr-defined]
        seq = self._timer_seq
        self._timer_seq = seq + 1
        timer = _FifoTimerHandle(when, callback, args, self, context, seq)
        heapq.heappush(self._scheduled, timer)  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]
        return timer

    def time(self) -> float:
        """The virtual time in seconds."""
        return self._time

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` without running anything (for tests)."""
        if seconds < 0:
            raise ValueError(f"cannot move virtual time backwards by {seconds}")
        self._time += seconds

    # --- hooks of BaseEventLoop -------------------------------------------------------------

    def _process_events(self, event_list: list[Any]) -> None:
        """There are no I/O events in virtual time."""

    def _write_to_self(self) -> None:
        # call_soon_threadsafe from a worker thread: wake a loop waiting for it.
        self._thread_wakeup.set()

    def run_in_executor(  # type: ignore[override]
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[..., _T],
        *args: Any,
    ) -> asyncio.Future[_T]:
        """Run ``func`` in a thread; virtual time stands still while only threads work."""
        fut = super().run_in_executor(executor, func, *args)
        self._pending_threads += 1

        def _done(_f: asyncio.Future[_T]) -> None:
            self._pending_threads -= 1

        fut.add_done_callback(_done)
        return fut

    # --- failure reports --------------------------------------------------------------------

    def _stuck_tasks(self) -> str:
        tasks = [t for t in asyncio.all_tasks(self) if not t.done()]
        main = self.main_task
        tasks.sort(key=lambda t: (t is not main, t.get_name()))
        parts = [describe_task(t) for t in tasks[:MAX_TASKS_IN_REPORT]]
        if len(tasks) > MAX_TASKS_IN_REPORT:
            parts.append(f"and {len(tasks) - MAX_TASKS_IN_REPORT} more")
        return "; ".join(parts) if parts else "(no pending task)"

    def _deadlocked(self) -> NoReturn:
        raise SimulationDeadlock(
            f"simulation deadlocked at virtual time {self._time:.6f}s: no callback is ready, "
            f"no timer is scheduled and the main task has not finished; stuck tasks: "
            f"{self._stuck_tasks()}"
        )

    def _time_limit_reached(self) -> NoReturn:
        raise P2PTimeout(
            f"simulation reached its virtual time limit of {self.time_limit}s before the main "
            f"task finished; pending tasks: {self._stuck_tasks()}"
        )

    # --- everything that would touch the real network or OS ---------------------------------

    def _forbidden(self, what: str) -> NoReturn:
        raise RealNetworkForbidden(
            f"{what} is not available inside a simulation: no real network or OS I/O may "
            "happen on a VirtualTimeLoop (use the simulated network's transports instead)"
        )

    def __repr__(self) -> str:
        return f"<VirtualTimeLoop t={self._time:.6f} running={self.is_running()}>"


_FORBIDDEN_COROUTINES: Final = (
    "create_connection",
    "create_server",
    "create_datagram_endpoint",
    "create_unix_connection",
    "create_unix_server",
    "connect_accepted_socket",
    "getaddrinfo",
    "getnameinfo",
    "sock_recv",
    "sock_recv_into",
    "sock_recvfrom",
    "sock_recvfrom_into",
    "sock_sendall",
    "sock_sendto",
    "sock_connect",
    "sock_accept",
    "sock_sendfile",
    "sendfile",
    "subprocess_exec",
    "subprocess_shell",
)
_FORBIDDEN_FUNCTIONS: Final = ("add_reader", "add_writer", "add_signal_handler")


def _forbid(name: str, is_coroutine: bool) -> Callable[..., Any]:
    if is_coroutine:

        async def forbidden_coroutine(self: VirtualTimeLoop, *args: Any, **kwargs: Any) -> Any:
            self._forbidden(name)

        method: Callable[..., Any] = forbidden_coroutine
    else:

        def forbidden_function(self: VirtualTimeLoop, *args: Any, **kwargs: Any) -> Any:
            self._forbidden(name)

        method = forbidden_function
    method.__name__ = method.__qualname__ = name
    method.__doc__ = "Forbidden in a simulation: raises :class:`RealNetworkForbidden`."
    return method


for _name in _FORBIDDEN_COROUTINES:
    setattr(VirtualTimeLoop, _name, _forbid(_name, True))
for _name in _FORBIDDEN_FUNCTIONS:
    setattr(VirtualTimeLoop, _name, _forbid(_name, False))
del _name
