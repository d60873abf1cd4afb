"""The gates' async face: a waiter wakes when capacity frees (from the timer, not by polling),
max_wait_s, cancellation, the bounded queue, provider feedback, and permits with leases.

Where a figure depends on time it is read on a virtual clock; where the real timer is the
point, only what load cannot change is asserted (never admitted before the window frees; woken
long before max_wait_s would end it), so a busy machine cannot fail these tests."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator

import anyio
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import Config, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.gates import Gates
from quotad.daemon.rate_limit_info import RateLimitInfo
from tests.support.event_loop import turns_during

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": True})  # daemon internals run on asyncio + uvloop


def gates_config(extra: str = "", requests: int = 2) -> Config:
    text = (
        "[gates]\nguard_s = 0.0\nburst = 1.0\nmax_queue = 3\n"
        '[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        f"limits = [{{ requests = {requests}, window_s = 0.3 }}]\n" + extra
    )
    return parse_config(tomllib.loads(text))


@pytest.fixture
async def gates() -> AsyncIterator[Gates]:
    running = Gates(gates_config())
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(running.run)
        yield running
        tasks.cancel_scope.cancel()


async def test_a_waiter_wakes_when_the_window_frees(gates: Gates) -> None:
    demand = gates.demand("p", "p/m", "app", 10)
    first_admitted_at = gates.clock.monotonic()
    for _ in range(2):
        _, waited = await gates.admit(demand, app="app", priority="normal", max_wait_s=1)
        assert waited == 0
    # woken by the timer when the first admission leaves the 0.3 s window: without it, this
    # would wait the whole minute and fail rate_limited
    _, waited = await gates.admit(demand, app="app", priority="normal", max_wait_s=60)
    assert gates.clock.monotonic() >= first_admitted_at + 0.3  # not before the window freed
    assert waited > 0
    _, queues, _ = gates.status()
    assert queues.normal == 0


async def test_max_wait_gives_rate_limited_with_retry_after() -> None:
    clock = VirtualClock()
    gates = Gates(gates_config(), clock)
    demand = gates.demand("p", "p/m", "app", 0)
    for _ in range(2):
        await gates.admit(demand, app="app", priority="normal", max_wait_s=0)
    clock.advance(0.1)
    with pytest.raises(RequestError) as caught:
        await gates.admit(demand, app="app", priority="normal", max_wait_s=0.05)
    assert caught.value.code == "rate_limited"
    assert caught.value.retry_after_s == pytest.approx(0.2)  # the first leaves the window then
    assert "allows 2 requests per 0.3 s; 2 used" in caught.value.message
    assert len(gates.queue) == 0


async def test_a_refusal_without_a_wait_gives_no_turn_away(gates: Gates) -> None:
    """``max_wait_s = 0`` waited all the same: a cancel scope and turns of the event loop,
    ~70 % of a refused Acquire's cost (~190 µs in process, ~60 µs without)."""
    demand = gates.demand("p", "p/m", "app", 0)
    for _ in range(2):
        await gates.admit(demand, app="app", priority="normal", max_wait_s=0)

    async def refused() -> None:
        with pytest.raises(RequestError) as caught:
            await gates.admit(demand, app="app", priority="normal", max_wait_s=0)
        assert caught.value.code == "rate_limited"

    assert await turns_during(refused) == 0
    assert len(gates.queue) == 0


async def test_a_cancelled_waiter_leaves_the_queue_at_once(gates: Gates) -> None:
    demand = gates.demand("p", "p/m", "app", 0)
    for _ in range(2):
        await gates.admit(demand, app="app", priority="normal", max_wait_s=0)
    with anyio.move_on_after(0.05):
        await gates.admit(demand, app="app", priority="high", max_wait_s=5)
    assert len(gates.queue) == 0
    assert gates.status()[1].high == 0


async def test_a_full_queue_answers_overloaded(gates: Gates) -> None:
    demand = gates.demand("p", "p/m", "app", 0)
    for _ in range(2):
        await gates.admit(demand, app="app", priority="normal", max_wait_s=0)

    async def wait() -> None:
        await gates.admit(demand, app="app", priority="normal", max_wait_s=5)

    async with anyio.create_task_group() as waiting:
        for _ in range(3):  # max_queue = 3
            waiting.start_soon(wait)
        await anyio.wait_all_tasks_blocked()
        assert len(gates.queue) == 3
        with pytest.raises(RequestError) as caught:
            await gates.admit(demand, app="app", priority="normal", max_wait_s=5)
        assert caught.value.code == "overloaded"
        waiting.cancel_scope.cancel()


async def test_a_full_queue_makes_room_by_crowding_out_the_app_with_the_most(
    gates: Gates,
) -> None:
    """One app filling the queue shut every other out: `b` (any priority, any share) got
    `overloaded` while `a`'s waiters held every place. Now a newcomer of an app with fewer
    takes the place of the newest waiter of the app with the most."""
    demand = gates.demand("p", "p/m", "a", 0)
    for _ in range(2):
        await gates.admit(demand, app="a", priority="normal", max_wait_s=0)
    outcomes: list[str] = []

    async def wait(app: str) -> None:
        try:
            await gates.admit(demand, app=app, priority="normal", max_wait_s=5)
            outcomes.append(f"{app} admitted")
        except RequestError as error:
            outcomes.append(f"{app} {error.code}: {error.message}")

    async with anyio.create_task_group() as waiting:
        for _ in range(3):  # max_queue = 3, all a's
            waiting.start_soon(wait, "a")
        await anyio.wait_all_tasks_blocked()
        waiting.start_soon(wait, "b")  # a has 3, b would have 1: a's newest makes room
        await anyio.wait_all_tasks_blocked()
        assert len(outcomes) == 1
        assert outcomes[0].startswith("a overloaded: crowded out of the full wait queue")
        assert gates.queue.queued_of("a") == 2
        assert gates.queue.queued_of("b") == 1
        waiting.start_soon(wait, "b")  # a 2, b would have 2: no gain, b is refused
        await anyio.wait_all_tasks_blocked()
        assert outcomes[1].startswith("b overloaded: 3 requests are already waiting")
        assert "1 of them app 'b''s" in outcomes[1]
        waiting.cancel_scope.cancel()


async def test_a_request_that_can_never_fit_fails_at_once() -> None:
    gates = Gates(gates_config(extra="tpm = 1000\n"))
    with pytest.raises(RequestError) as caught:
        await gates.admit(gates.demand("p", "p/m", "a", 5000), app="a", priority="normal",
                          max_wait_s=30)  # fmt: skip
    assert caught.value.code == "rate_limited"
    assert "can never be admitted" in caught.value.message
    assert "1000 tokens per 60 s" in caught.value.message
    assert caught.value.details == {"retryable": False}  # no wait would make it fit


@pytest.mark.parametrize(
    ("extra", "given_back"),
    [("[apps.a]\ntpm = 1000\n", True), ("tpm = 1000\n", False)],
    ids=["app", "provider"],
)
async def test_settling_returns_unused_tokens_on_an_app_gate_only(
    extra: str, given_back: bool
) -> None:
    """A provider counts a request's max_tokens when it arrives and never gives back what
    went unused: its gate returning them let the next requests past the provider's count
    (a probe: 4 of 20 requests answered 429). An app's limit is quotad's own."""
    clock = VirtualClock()
    gates = Gates(gates_config(extra=extra), clock)
    first, _ = await gates.admit(
        gates.demand("p", "p/m", "a", 900), app="a", priority="normal", max_wait_s=0
    )
    got: list[float] = []

    async def second() -> None:
        _, waited = await gates.admit(
            gates.demand("p", "p/m", "a", 500), app="a", priority="normal", max_wait_s=120
        )
        got.append(waited)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        assert len(gates.queue) == 1
        clock.advance(5.0)
        gates.settle(first, 100)  # 800 unused
        await anyio.wait_all_tasks_blocked()
        assert got == ([5.0] if given_back else [])  # at once, or not before the window ends
        tasks.cancel_scope.cancel()


async def test_a_429_pauses_the_target_and_headers_tighten(gates: Gates) -> None:
    gates.pause("p/m", 0.2)
    demand = gates.demand("p", "p/m", "app", 0)
    _, waited = await gates.admit(demand, app="app", priority="normal", max_wait_s=1)
    assert waited >= 0.15
    other = gates.demand("p", "p/other", "app", 0)  # another model of the account: not paused
    assert gates.admit_now(other) is not None
    await anyio.sleep(0.35)
    # the provider says 0 requests remain for 0.2 s: tighter than our own view
    gates.observe("p", "p/m", RateLimitInfo(remaining_requests=0, reset_requests_s=0.2))
    assert gates.admit_now(demand) is None
    # headers never loosen: remaining 1000 changes nothing
    gates.observe("p", "p/m", RateLimitInfo(remaining_requests=1000, reset_requests_s=60))
    assert gates.status()[0][0].windows[0].limit == 2


async def test_an_unsettled_permit_is_settled_as_reserved_when_its_lease_ends(
    gates: Gates,
) -> None:
    reservation, _ = await gates.admit(
        gates.demand("p", "p/m", "app", 10), app="app", priority="normal", max_wait_s=0
    )
    permit = gates.grant_permit(reservation, "p", "p/m", lease_s=0.1)
    assert gates.status()[0][0].windows[0].used == 1
    with anyio.fail_after(30):  # the lease's timer settles it (the bound: a broken timer)
        while not reservation.settled:  # noqa: ASYNC110 (a flag the timer sets, no event)
            await anyio.sleep(0.02)
    assert gates.permits.take(permit.permit_id) is None  # expired: settled by the lease


async def test_reconfigure_keeps_admissions_and_applies_new_limits(gates: Gates) -> None:
    demand = gates.demand("p", "p/m", "app", 0)
    await gates.admit(demand, app="app", priority="normal", max_wait_s=0)
    gates.reconfigure(gates_config())
    assert gates.status()[0][0].windows[0].used == 1  # the admission survived the reload
    gates.reconfigure(gates_config(requests=1))
    assert gates.admit_now(gates.demand("p", "p/m", "app", 0)) is None  # now 1 of 1 used


async def test_unconfigured_app_names_share_one_memo_entry() -> None:
    gates = Gates(gates_config(extra="[apps.known]\nrpm = 5\n"))
    known = gates.demand("p", "p/m", "known", 0)
    first = gates.demand("p", "p/m", "stranger-0", 0)
    for n in range(1, 100):  # a client naming a new app per request
        assert gates.demand("p", "p/m", f"stranger-{n}", 0).gates == first.gates
    assert len(gates._demand_gates) == 2  # the configured app, and every other app
    assert [g.name for g in known.gates] == ["provider:p", "p/m", "app:known"]
    assert [g.name for g in first.gates] == ["provider:p", "p/m"]
    gates.reconfigure(gates_config())
    assert gates._demand_gates == {}  # a reload forgets them


def test_a_reload_forgets_the_gates_of_targets_made_by_name_that_hold_nothing() -> None:
    """A target named by a request gets a gate of its own (its 429 pause). A reload kept every
    one forever, and the router's count of targets made by name starts over at each reload:
    1,024 more gates per reload without end (found by the growth audit). A reload forgets
    those with nothing in flight, no pause and no waiter; the others stay as they are."""
    clock = VirtualClock()
    gates = Gates(gates_config(), clock)
    made = [gates.demand("p", f"p/named-{n}", "a", 1).gates[1] for n in range(500)]
    gates.pause("p/paused", 30.0)
    busy_demand = gates.demand("p", "p/busy", "a", 1)
    held = gates.admit_now(busy_demand)
    assert held is not None
    gates.reconfigure(gates_config())
    again = [gates.demand("p", f"p/named-{n}", "a", 1).gates[1] for n in range(500)]
    assert not any(new is old for new, old in zip(again, made, strict=True))  # forgotten
    assert gates.paused_until("p/paused") is not None  # its pause lives on
    busy = gates.demand("p", "p/busy", "a", 1).gates[1]
    assert busy is busy_demand.gates[1]  # the same gate,
    assert busy.in_flight == 1  # still counting
    gates.settle(held, 1)
    assert busy.in_flight == 0
