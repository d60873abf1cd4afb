"""Request deadlines kept by one sweep task: a watched task past its deadline is cancelled
and can tell that cancellation from any other; an earlier deadline wakes the sweep; the sweep
ends when nothing is watched; anyio scopes inside pass the cancellation on.

No assertion here depends on how busy the machine is: a deadline is shown to have cut its
block because the block's own work would take far longer (not by how soon it ended), never to
end before its time (a lower bound, which load cannot break), and the sweep's wake-up by
making its own next look an hour away."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from quotad.daemon.net import deadlines as deadlines_module
from quotad.daemon.net.deadlines import MAX_SLEEP_S, Deadlines
from tests.support.backends import ASYNCIO_BACKENDS

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)]


async def bounded(deadlines: Deadlines, seconds: float, work_s: float) -> str:
    """Sleep ``work_s`` under a deadline ``seconds`` away: how it ended."""
    deadline = deadlines.within(seconds)
    try:
        with deadline, anyio.move_on_after(60):  # a scope of anyio's inside, not expiring
            await asyncio.sleep(work_s)
        return "done"
    except TimeoutError:
        if not deadline.expired:
            raise
        return "deadline"


async def sweep_ended(deadlines: Deadlines) -> None:
    """Nothing watched: the sweep ends at its next look (within MAX_SLEEP_S; the bound only
    keeps a broken sweep from hanging the suite)."""
    with anyio.fail_after(MAX_SLEEP_S + 30):
        while deadlines._sweep is not None:  # noqa: ASYNC110 (no event: the sweep just ends)
            await asyncio.sleep(0.05)


async def test_a_task_past_its_deadline_is_cancelled_and_knows_why() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()  # deadlines are in the loop's time (uvloop's lags time.monotonic)
    assert await bounded(deadlines, 0.05, 3600) == "deadline"  # cut: the work takes an hour
    assert loop.time() >= started + 0.05  # and not before its time
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0  # taken back: the task carries on
    assert await bounded(deadlines, 10, 0.01) == "done"
    await sweep_ended(deadlines)


async def test_an_earlier_deadline_wakes_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadlines_module, "MAX_SLEEP_S", 3600.0)
    deadlines = Deadlines()
    late = asyncio.create_task(bounded(deadlines, 3600, 3600))
    await asyncio.sleep(0.01)  # the sweep now sleeps until late's deadline, an hour away
    with anyio.fail_after(20):  # unless woken, the sweep would not look again for an hour
        assert await bounded(deadlines, 0.05, 3600) == "deadline"
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late


async def test_another_cancellation_is_not_the_deadline() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(bounded(deadlines, 30, 30))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sweep_ended(deadlines)


async def test_many_tasks_each_end_at_their_own_deadline() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()  # deadlines are in the loop's time (uvloop's lags time.monotonic)
    ends: dict[float, float] = {}

    async def one(seconds: float) -> None:
        assert await bounded(deadlines, seconds, 3600) == "deadline"
        ends[seconds] = loop.time()

    async with anyio.create_task_group() as tasks:
        for seconds in (0.3, 0.1, 0.2):
            tasks.start_soon(one, seconds)
    assert sorted(ends) == [0.1, 0.2, 0.3]
    for seconds, ended in ends.items():  # each at its own deadline: none before it
        assert ended >= started + seconds


async def test_two_deadlines_passing_at_once_leave_no_cancel_request_behind() -> None:
    outer, inner = Deadlines(), Deadlines()
    current = asyncio.current_task()
    assert current is not None

    async def nested() -> str:
        deadline = outer.within(0.05)
        try:
            with deadline:
                return await bounded(inner, 0.05, 10)  # one CancelledError for two cancels
        except TimeoutError:
            assert deadline.expired
            return "outer deadline"  # the inner block passed it on: not only its own cancel

    assert await nested() in ("deadline", "outer deadline")
    assert current.cancelling() == 0
    await asyncio.sleep(0.01)  # and no cancellation is still on its way


async def test_a_shielded_scope_in_the_block_finishes_before_the_deadline_cuts() -> None:
    deadlines = Deadlines()
    finished = False
    deadline = deadlines.within(0.05)

    async def shielded_then_long() -> None:
        nonlocal finished
        with deadline:
            with anyio.CancelScope(shield=True):  # e.g. a stream closed after a failure
                await asyncio.sleep(0.2)
                finished = True
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await shielded_then_long()
    assert finished
    assert deadline.expired


async def test_a_caller_s_cancel_with_the_deadline_stays_a_cancellation() -> None:
    deadlines = Deadlines()

    async def work() -> None:
        deadline = deadlines.within(30)
        with deadline:
            current = asyncio.current_task()
            assert current is not None
            deadline.expire()  # what the sweep does when the deadline passes...
            current.cancel()  # ...as the caller cancels too, before either is delivered
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_caller_s_cancel_after_the_deadline_s_stays_a_cancellation() -> None:
    deadlines = Deadlines()
    cancelled_by_deadline = asyncio.Event()

    async def work() -> None:
        deadline = deadlines.within(30)
        with deadline:
            deadline.expire()
            try:
                await asyncio.sleep(10)
            finally:  # the deadline's cancel is delivered; the caller cancels meanwhile
                cancelled_by_deadline.set()
                with anyio.CancelScope(shield=True):
                    await asyncio.sleep(0.05)

    task = asyncio.create_task(work())
    await cancelled_by_deadline.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_shield_of_code_we_do_not_control_holds_too() -> None:
    """httpcore releases a connection under ``anyio.CancelScope(shield=True)``, the broker
    closes a stream under one: such scopes are not ours to mark, and still hold."""
    deadlines = Deadlines()
    deadline = deadlines.within(0.01)
    steps: list[str] = []

    async def shielded_close() -> None:
        with anyio.move_on_after(5, shield=True):
            await asyncio.sleep(0.1)
            steps.append("closed")

    async def close_then_wait() -> None:
        with deadline:
            await shielded_close()
            steps.append("after")
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await close_then_wait()
    assert steps == ["closed", "after"]
    assert deadline.expired


async def test_a_scope_class_that_wants_more_than_anyio_s_keywords_is_left_to_anyio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scopes come straight from the class anyio's constructor returned (cheaper), unless that
    class refuses to be made as anyio makes it: then each comes from anyio's constructor."""
    backend_scope = type(anyio.CancelScope())
    made: list[str] = []

    class Picky(backend_scope):  # type: ignore[misc,valid-type]
        def __new__(cls, reason: str, **keywords: float) -> Picky:
            return object.__new__(cls)

        def __init__(self, reason: str, **keywords: float) -> None:
            super().__init__(**keywords)
            made.append(reason)

    monkeypatch.setattr(anyio, "CancelScope", lambda **keywords: Picky("anyio", **keywords))
    deadlines = Deadlines()
    for _ in range(3):
        assert await bounded(deadlines, 10, 0) == "done"
    assert await bounded(deadlines, 0.01, 3600) == "deadline"
    assert made == ["anyio"] * 4
