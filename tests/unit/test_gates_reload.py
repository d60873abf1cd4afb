"""The gates across a config reload, on a virtual clock: windows keep their logs and take their
new limits at once, and the waiters queued at the reload are held to the gates and limits of
the new config."""

from __future__ import annotations

import tomllib

import anyio
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import Config, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.gates import Gates

PROVIDER = (
    '[gates]\nguard_s = 0.0\n[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
)


def config(text: str) -> Config:
    return parse_config(tomllib.loads(PROVIDER + text))


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})  # daemon internals run on asyncio + uvloop


def admitted_at_once(gates: Gates, count: int, app: str = "a", tokens: int = 1) -> int:
    """How many of ``count`` requests go at once, without waiting."""
    demand = gates.demand("p", "p/m", app, tokens)
    return sum(gates.admit_now(demand) is not None for _ in range(count))


def test_two_windows_of_the_same_unit_and_length_stay_two_across_a_reload() -> None:
    text = "pace = false\nrpm = 10\nlimits = [{ requests = 100, window_s = 60 }]\n"
    clock = VirtualClock()
    gates = Gates(config(text), clock)
    assert admitted_at_once(gates, 200) == 10
    clock.advance(61.0)
    gates.reconfigure(config(text))  # unchanged
    assert admitted_at_once(gates, 200) == 10  # 50 before: one window, limit 100, counted twice
    limits = [window.limit for window in gates.demand("p", "p/m", "a", 1).gates[0].windows]
    assert limits == [10, 100]


def test_a_window_of_a_new_length_counts_what_the_gate_admitted_within_it() -> None:
    clock = VirtualClock()
    gates = Gates(config("pace = false\nrpm = 20\n"), clock)
    assert admitted_at_once(gates, 10) == 10
    clock.advance(20.0)
    gates.reconfigure(config("pace = false\nlimits = [{ requests = 10, window_s = 30 }]\n"))
    assert admitted_at_once(gates, 10) == 0  # the 10 of 20 s ago are in the last 30 s
    clock.advance(10.0)
    assert admitted_at_once(gates, 20) == 10  # they have left it
    clock.advance(29.0)  # those 10 are still in the 30 s window
    gates.reconfigure(config("pace = false\nrpm = 15\n"))  # longer than any running window:
    assert admitted_at_once(gates, 20) == 5  # it counts those the 30 s one holds


@pytest.mark.anyio
async def test_a_waiter_a_lowered_limit_never_admits_is_answered_and_holds_back_no_one() -> None:
    """It waited out its whole max_wait_s (30 s by default, up to a day), and every waiter
    behind it on that window with it, the window free: nobody overtakes a waiter short of
    capacity."""
    clock = VirtualClock()
    gates = Gates(config("pace = false\nlimits = [{ tokens = 1000, window_s = 60 }]\n"), clock)
    assert admitted_at_once(gates, 1, tokens=900) == 1
    answers: dict[str, str] = {}

    async def wait(name: str, tokens: int) -> None:
        demand = gates.demand("p", "p/m", "a", tokens)
        try:
            await gates.admit(demand, app="a", priority="normal", max_wait_s=3600)
            answers[name] = "admitted"
        except RequestError as error:
            answers[name] = f"{error.code}: {error.message} {error.details}"

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait, "800 tokens", 800)
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(wait, "100 tokens", 100)
        await anyio.wait_all_tasks_blocked()
        gates.reconfigure(config("pace = false\nlimits = [{ tokens = 500, window_s = 60 }]\n"))
        await anyio.wait_all_tasks_blocked()
        clock.advance(61.0)  # the 900 leave the window; a reload's dispatch stands for the
        gates.reconfigure(  # timer's (not running here)
            config("pace = false\nlimits = [{ tokens = 500, window_s = 60 }]\n")
        )
        await anyio.wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()  # a waiter left behind (the bug) waits no longer
    assert answers == {
        "800 tokens": "rate_limited: the request needs 800 tokens but gate provider:p allows 500 "
        "tokens per 60 s since the config was reloaded: it can never be admitted "
        "{'retryable': False}",
        "100 tokens": "admitted",
    }


@pytest.mark.anyio
async def test_waiters_queued_at_a_reload_are_held_to_their_app_s_new_gate() -> None:
    """An app limit added to throttle an app left the requests it had queued free of it; one
    taken away still held the requests queued behind it."""
    clock = VirtualClock()
    provider = "pace = false\nlimits = [{ requests = 2, window_s = 60 }]\n"
    gates = Gates(config(provider + "[apps.held]\nrpm = 1\n"), clock)
    assert admitted_at_once(gates, 2, app="flood") == 2  # the provider's window is full
    admitted: list[str] = []

    async def wait(app: str) -> None:
        demand = gates.demand("p", "p/m", app, 1)
        await gates.admit(demand, app=app, priority="normal", max_wait_s=3600)
        admitted.append(app)

    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(wait, "flood")
        await anyio.wait_all_tasks_blocked()
        gates.reconfigure(config(provider + "[apps.flood]\nrpm = 1\n"))  # throttled now
        clock.advance(61.0)  # the provider's window frees: room for 2
        gates.reconfigure(config(provider + "[apps.flood]\nrpm = 1\n"))  # a dispatch
        await anyio.wait_all_tasks_blocked()
        assert admitted == ["flood"]  # the app's new limit: 1 a minute (2 before)
        tasks.cancel_scope.cancel()
    clock.advance(61.0)
    gates = Gates(config(provider + "[apps.held]\nrpm = 1\n"), clock)
    assert admitted_at_once(gates, 2, app="held") == 1
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait, "held")
        await anyio.wait_all_tasks_blocked()
        gates.reconfigure(config(provider))  # no app limit any more: the provider has room
        await anyio.wait_all_tasks_blocked()
        assert admitted == ["flood", "held"]
        tasks.cancel_scope.cancel()


@pytest.mark.parametrize(
    "limited",
    [
        "pace = false\nrpm = 5\n",  # the provider's gate
        '[providers.p.models."m"]\npace = false\nrpm = 5\n',  # the target's
        "[apps.a]\nrpm = 5\n",  # the app's
    ],
)
def test_a_gate_taken_out_and_put_back_counts_what_it_counted(limited: str) -> None:
    """A provider (or an app, or a target's limits) taken out by a reload and put back by the
    next began empty: the sim saw 20 requests in a window of 10."""
    clock = VirtualClock()
    gates = Gates(config(limited), clock)
    assert admitted_at_once(gates, 10) == 5
    other = '[providers.q]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
    gates.reconfigure(parse_config(tomllib.loads(other)))  # taken out
    clock.advance(30.0)
    gates.reconfigure(config(limited))  # put back
    assert admitted_at_once(gates, 10) == 0  # 5 before: the window was new
    clock.advance(30.0)
    assert admitted_at_once(gates, 10) == 5


def test_the_gates_taken_out_are_kept_only_while_they_count_something() -> None:
    clock = VirtualClock()
    many_apps = "".join(f"[apps.a{n}]\nrpm = 5\n" for n in range(100))
    gates = Gates(config(many_apps), clock)
    reservation = gates.admit_now(gates.demand("p", "p/m", "a7", 1))
    assert reservation is not None
    gates.reconfigure(config(""))
    assert list(gates._retired) == ["app:a7"]  # the 99 others counted nothing
    clock.advance(61.0)  # its admission has left its window,
    gates.reconfigure(config(""))
    assert list(gates._retired) == ["app:a7"]  # but its request is still in flight
    gates.settle(reservation, 1)
    gates.reconfigure(config(""))
    assert gates._retired == {}
