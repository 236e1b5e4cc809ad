"""A simulation: virtual-time loop, network, name service, trace and seeded randomness together.

::

    async def scenario(sim: Simulation) -> None:
        net = sim.network
        net.add_host("a"); net.add_host("b"); net.add_link("a", "b", latency=0.02)
        ...

    run_simulation(scenario, seed=42)

Everything random in a simulation derives from its one ``seed``: the
network's loss/jitter/duplication/reordering draws (:attr:`Simulation.rng`),
the scenario's own choices (:attr:`Simulation.random`) and the stack's
entropy (:meth:`Simulation.entropy`, to pass as ``Node(entropy=...)``).
Each purpose has its own stream derived from the seed, so that, for example,
adding a lossy link does not change the nodes' keys.  Same seed and scenario
give the same event trace, whatever ``PYTHONHASHSEED`` is.

A simulation that fails prints its seed (and adds it to the exception's
notes); running again with that seed reproduces the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import IO, Any, Final, TypeVar

from switchy.stack.identity import Entropy
from switchy.transports.sim.config import SimConfig
from switchy.transports.sim.loop import VirtualTimeLoop
from switchy.transports.sim.names import NameService
from switchy.transports.sim.network import Network
from switchy.transports.sim.trace import TraceRecorder

__all__ = ["Simulation", "run_simulation"]

_T = TypeVar("_T")

Seed = int | str

#: The cyclic garbage collector's thresholds while :meth:`Simulation.run` runs (restored
#: after).  A simulation is one process holding every node of a network: with the
#: interpreter's defaults (700, 10, 10) the collector traversed that heap over and over
#: (a third of the CPU time of a 1,000-node mesh, more as the heap grows); these let it
#: run far less often.  Cyclic garbage is still collected, only later.
GC_THRESHOLDS: Final = (20_000, 20, 50)


class Simulation:
    """One deterministic run of a simulated network (see the module docstring).

    ``time_limit`` (virtual seconds) stops a run whose timers never run out
    with :class:`~switchy.stack.errors.P2PTimeout`.  ``trace=False`` keeps no event
    list (counters still count); ``trace_sink`` streams events as JSON lines.
    ``gc_thresholds`` are the garbage collector's thresholds while :meth:`run` runs
    (:data:`GC_THRESHOLDS` by default; ``None`` leaves the collector alone).
    """

    def __init__(
        self,
        seed: Seed | None = None,
        *,
        config: SimConfig | None = None,
        trace: bool = True,
        trace_sink: IO[str] | None = None,
        time_limit: float | None = None,
        gc_thresholds: tuple[int, int, int] | None = GC_THRESHOLDS,
    ) -> None:
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "big")
        if not isinstance(seed, int | str) or isinstance(seed, bool):
            raise TypeError(f"a simulation seed is an int or a str, got {type(seed).__name__}")
        #: The seed every random choice of this simulation derives from.
        self.seed: Seed = seed
        self.config = config if config is not None else SimConfig.from_env()
        self.loop = VirtualTimeLoop(time_limit=time_limit)
        self.trace = TraceRecorder(enabled=trace, sink=trace_sink)
        #: The network's PRNG (loss, jitter, duplication, reordering).
        self.rng = self.derive_random("network")
        #: A PRNG for the scenario's own choices (which peers to dial, when…).
        self.random = self.derive_random("scenario")
        self._entropy_rng = self.derive_random("entropy")
        self.network = Network(self.loop, self.rng, config=self.config, trace=self.trace)
        self.names = NameService(self.network)
        self.gc_thresholds = gc_thresholds
        self._closed = False

    # --- randomness -------------------------------------------------------------------------

    def derive_random(self, purpose: str) -> random.Random:
        """An independent PRNG for ``purpose``, a function of the seed only."""
        # Seeding with a str hashes it with SHA-512: independent of PYTHONHASHSEED.
        return random.Random(f"switchy-sim/{self.seed!r}/{purpose}")

    def entropy(self, n: int) -> bytes:
        """``n`` deterministic random bytes: the stack's entropy source inside the simulation."""
        return self._entropy_rng.randbytes(n)

    def entropy_source(self, label: str) -> Entropy:
        """A separate deterministic entropy stream for ``label`` (e.g. one per node)."""
        rng = self.derive_random(f"entropy/{label}")
        return rng.randbytes

    # --- time -------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        """The virtual time in seconds (0 at the start)."""
        return self.loop.time()

    # --- running ----------------------------------------------------------------------------

    def run(self, main: Awaitable[_T] | Callable[[], Awaitable[_T]]) -> _T:
        """Run ``main`` (a coroutine, or a function returning one) to completion in virtual time.

        May be called several times; the network and the tasks it left
        running carry over.  On failure the seed is printed to stderr and
        added to the exception's notes.
        """
        if self._closed:
            raise RuntimeError("this simulation is closed")
        loop = self.loop
        task: asyncio.Future[_T] | None = None
        saved_gc = gc.get_threshold()
        if self.gc_thresholds is not None:
            gc.set_threshold(*self.gc_thresholds)
        try:
            aw = main() if callable(main) else main
            task = asyncio.ensure_future(aw, loop=loop)
            if isinstance(task, asyncio.Task):
                task.set_name("main")
                loop.main_task = task
            result: _T = loop.run_until_complete(task)
            return result
        except BaseException as exc:
            self._report_failure(exc)
            if task is not None and not task.done():
                task.cancel()
                self._drain([task])
            raise
        finally:
            loop.main_task = None
            gc.set_threshold(*saved_gc)

    def _report_failure(self, exc: BaseException) -> None:
        note = (
            f"simulation seed: {self.seed!r} (failed at virtual time {self.now:.6f}s); "
            f"run again with seed={self.seed!r} to reproduce"
        )
        if isinstance(exc, Exception):
            exc.add_note(note)
        print(note, file=sys.stderr)

    def _drain(self, tasks: list[asyncio.Future[Any]]) -> None:
        """Let cancelled tasks finish; give up quietly if they cannot."""
        if not tasks:
            return
        with contextlib.suppress(BaseException):
            self.loop.run_until_complete(asyncio.wait(tasks, timeout=60.0))

    def close(self) -> None:
        """Cancel every task still running and close the loop."""
        if self._closed:
            return
        self._closed = True
        loop = self.loop
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            self._drain(list(pending))
            with contextlib.suppress(BaseException):
                loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Simulation seed={self.seed!r} t={self.now:.6f}s>"


def run_simulation(
    main: Callable[[Simulation], Coroutine[Any, Any, _T]],
    *,
    seed: Seed | None = None,
    config: SimConfig | None = None,
    trace: bool = True,
    time_limit: float | None = None,
    trace_path: str | os.PathLike[str] | None = None,
) -> _T:
    """Create a :class:`Simulation`, run ``main(sim)`` in it, close it; return main's result.

    ``trace_path`` writes the event trace as JSON lines (also when ``main`` fails).
    """
    with Simulation(seed, config=config, trace=trace, time_limit=time_limit) as sim:
        try:
            return sim.run(lambda: main(sim))
        finally:
            if trace_path is not None:
                sim.trace.write_jsonl(trace_path)
