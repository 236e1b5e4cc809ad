"""stack/tasks.py: cancel_and_wait stops tasks, drops their outcomes, and never swallows
the caller's own cancellation (nor do the protocol code paths that use it)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from switchy.stack.tasks import cancel_and_wait


async def _slow_to_stop(stopping: asyncio.Event, release: asyncio.Event) -> None:
    """A task that takes its time ending once cancelled (a cleanup that awaits)."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        stopping.set()
        await release.wait()
        raise


def test_the_tasks_are_cancelled_and_their_outcomes_dropped() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def main() -> None:
        forever = asyncio.ensure_future(asyncio.Event().wait())
        failed = asyncio.ensure_future(fails())
        done = asyncio.ensure_future(asyncio.sleep(0, "result"))
        await asyncio.wait([failed, done])
        await cancel_and_wait(forever, failed, done)
        assert forever.cancelled()
        assert isinstance(failed.exception(), ValueError)
        assert done.result() == "result"
        await cancel_and_wait()  # nothing to do

    asyncio.run(main())


def test_an_exception_a_task_raises_on_cancellation_is_retrieved() -> None:
    logged: list[object] = []

    async def raises_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("cleanup failed")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: logged.append(ctx))
        task = asyncio.ensure_future(raises_when_cancelled())
        await asyncio.sleep(0)  # let it start
        await cancel_and_wait(task)
        assert isinstance(task.exception(), RuntimeError)
        del task
        gc.collect()

    asyncio.run(main())
    assert logged == []


def test_the_caller_cancelled_while_waiting_gets_cancelled_error() -> None:
    async def main() -> None:
        stopping, release = asyncio.Event(), asyncio.Event()
        task = asyncio.ensure_future(_slow_to_stop(stopping, release))
        await asyncio.sleep(0)  # let it start
        caller = asyncio.ensure_future(cancel_and_wait(task))
        await stopping.wait()  # the caller now waits for the task's cleanup
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert caller.cancelled()
        assert not task.done()  # it still ends on its own
        release.set()
        await asyncio.wait([task])
        assert task.cancelled()

    asyncio.run(main())


def test_the_router_client_giving_up_keeps_the_callers_cancellation() -> None:
    from switchy.protocols.router import client

    class _Stream:
        """The two methods the client's ending paths call."""

        async def reset(self) -> None:
            pass

        async def close(self) -> None:
            pass

    async def main() -> None:
        stopping, release = asyncio.Event(), asyncio.Event()
        for give_up in (client._abort, client._finish):
            stopping.clear()
            upload = asyncio.ensure_future(_slow_to_stop(stopping, release))
            await asyncio.sleep(0)
            caller = asyncio.ensure_future(give_up(_Stream(), upload))  # type: ignore[arg-type]
            await stopping.wait()
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            release.set()
            await asyncio.wait([upload])
            release.clear()

    asyncio.run(main())
