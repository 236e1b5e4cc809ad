"""The virtual-time loop: idle time is free, timers are exact, deadlocks are named."""

from __future__ import annotations

import asyncio
import time

import pytest

from switchy.stack.errors import P2PTimeout, SimulationDeadlock
from switchy.transports.sim import (
    RealNetworkForbidden,
    SimConfig,
    Simulation,
    VirtualTimeLoop,
    run_simulation,
)

QUIET = SimConfig(default_packet_loss=0.0)


def test_sleep_an_hour_returns_at_once() -> None:
    async def main(sim: Simulation) -> float:
        start = sim.now
        await asyncio.sleep(3600)
        return sim.now - start

    wall = time.perf_counter()
    elapsed = run_simulation(main, seed=1, config=QUIET)
    assert elapsed == 3600.0
    # nothing slept for real: far less wall time than the virtual hour, even on a busy machine
    assert time.perf_counter() - wall < 60


def test_loop_time_is_virtual_and_timers_fire_in_order() -> None:
    async def main(sim: Simulation) -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        fired: list[tuple[str, float]] = []
        loop.call_later(5.0, lambda: fired.append(("b", loop.time())))
        loop.call_later(1.5, lambda: fired.append(("a", loop.time())))
        loop.call_at(100.0, lambda: fired.append(("c", loop.time())))
        await asyncio.sleep(200)
        return fired

    assert run_simulation(main, seed=1, config=QUIET) == [("a", 1.5), ("b", 5.0), ("c", 100.0)]


def test_many_days_and_timeouts_use_virtual_time() -> None:
    async def main(sim: Simulation) -> None:
        await asyncio.sleep(3 * 86400)  # longer than asyncio's largest select timeout
        assert sim.now == 3 * 86400
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.Event().wait()
        assert sim.now == 3 * 86400 + 10
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 2.5)
        assert sim.now == 3 * 86400 + 12.5

    run_simulation(main, seed=1, config=QUIET)


def test_deadlock_is_reported_with_the_stuck_tasks() -> None:
    async def stuck_helper(ev: asyncio.Event) -> None:
        await ev.wait()

    async def main(sim: Simulation) -> None:
        ev = asyncio.Event()
        helper = asyncio.get_running_loop().create_task(stuck_helper(ev), name="helper-task")
        await asyncio.sleep(7)
        await helper

    with pytest.raises(SimulationDeadlock) as info:
        run_simulation(main, seed=3, config=QUIET)
    msg = str(info.value)
    assert "deadlocked at virtual time 7.000000s" in msg
    assert "'main'" in msg
    assert "'helper-task'" in msg
    assert "stuck_helper" in msg
    # The seed is attached to the error so the failure can be reproduced.
    assert any("seed: 3" in note for note in info.value.__notes__)


def test_time_limit_stops_a_run_that_never_ends() -> None:
    async def main(sim: Simulation) -> None:
        for _ in range(10**9):  # keeps timers coming, never finishes
            await asyncio.sleep(1)

    with pytest.raises(P2PTimeout, match="virtual time limit of 50"):
        run_simulation(main, seed=1, config=QUIET, time_limit=50)


def test_real_network_is_forbidden() -> None:
    async def main(sim: Simulation) -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(RealNetworkForbidden, match="create_connection"):
            await asyncio.open_connection("127.0.0.1", 80)
        with pytest.raises(RealNetworkForbidden, match="getaddrinfo"):
            await loop.getaddrinfo("example.com", 80)
        with pytest.raises(RealNetworkForbidden, match="create_datagram_endpoint"):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0))
        with pytest.raises(RealNetworkForbidden, match="create_server"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        with pytest.raises(RealNetworkForbidden, match="add_reader"):
            loop.add_reader(0, lambda: None)

    run_simulation(main, seed=1, config=QUIET)


def test_tcp_transport_dial_fails_cleanly_inside_a_simulation() -> None:
    from multiaddr import Multiaddr

    from switchy.stack.errors import ConnectionFailed
    from switchy.transports.tcp import TcpTransport

    async def main(sim: Simulation) -> None:
        with pytest.raises(ConnectionFailed, match="not available inside a simulation"):
            await TcpTransport().dial(Multiaddr("/ip4/127.0.0.1/tcp/9"))

    run_simulation(main, seed=1, config=QUIET)


def test_threads_work_and_freeze_virtual_time() -> None:
    async def main(sim: Simulation) -> int:
        start = sim.now
        result = await asyncio.to_thread(lambda: sum(range(1000)))
        assert sim.now == start
        return result

    assert run_simulation(main, seed=1, config=QUIET) == 499500


def test_virtual_time_stands_still_for_threads_even_with_timers_pending() -> None:
    async def main(sim: Simulation) -> float:
        timer = asyncio.ensure_future(asyncio.sleep(10))  # a timer waiting in the queue
        start = sim.now
        await asyncio.to_thread(time.sleep, 0.05)  # real work in a thread
        elapsed = sim.now - start
        timer.cancel()
        return elapsed

    assert run_simulation(main, seed=1, config=QUIET) == 0.0


def test_run_can_be_called_several_times_and_state_carries_over() -> None:
    with Simulation(1, config=QUIET) as sim:
        ev = asyncio.Event()

        async def setter() -> None:
            await asyncio.sleep(10)
            ev.set()

        async def first() -> None:
            asyncio.get_running_loop().create_task(setter())

        async def second() -> float:
            await ev.wait()
            return sim.now

        sim.run(first())
        assert sim.run(second) == 10.0


def test_failure_prints_the_seed(capsys: pytest.CaptureFixture[str]) -> None:
    async def main(sim: Simulation) -> None:
        await asyncio.sleep(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_simulation(main, seed="my-seed", config=QUIET)
    assert "seed: 'my-seed'" in capsys.readouterr().err


def test_advance_refuses_going_backwards() -> None:
    loop = VirtualTimeLoop()
    try:
        loop.advance(2.5)
        assert loop.time() == 2.5
        with pytest.raises(ValueError, match="backwards"):
            loop.advance(-1)
    finally:
        loop.close()


def test_bad_seed_type() -> None:
    with pytest.raises(TypeError, match="seed"):
        Simulation(1.5)  # type: ignore[arg-type]
