"""Pacing per gate, on a virtual clock: a client alone gets an app's whole window at once,
provider and model gates spread their limit (``pace``, on by default there), status shows
which, and a ``rate_limited`` answer says which gate, what is used and when room comes."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import ConfigError, parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.gates import Demand, Gate, Gates, SlidingWindow

PROVIDER = '[providers.p]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the daemon's gates run on asyncio


def make_gates(text: str) -> tuple[Gates, VirtualClock]:
    clock = VirtualClock()
    return Gates(parse_config(tomllib.loads(PROVIDER + text)), clock), clock


def admitted_at_once(gates: Gates, app: str, count: int) -> int:
    """How many of ``count`` requests by ``app`` go at once, without waiting."""
    demand = gates.demand("p", "p/m", app, 10)
    return sum(gates.admit_now(demand) is not None for _ in range(count))


def test_a_lone_client_gets_an_app_s_whole_window_at_once() -> None:
    """Issue 18: app rpm = 3, one client: its 3 requests came at 0 s, 14 s and 34 s."""
    gates, clock = make_gates("[apps.x]\nrpm = 3\n")
    assert admitted_at_once(gates, "x", 5) == 3
    clock.advance(59.0)
    assert admitted_at_once(gates, "x", 1) == 0  # the window still holds all three
    clock.advance(1.0 + gates_guard(gates))
    assert admitted_at_once(gates, "x", 5) == 3


def gates_guard(gates: Gates) -> float:
    """How long past its window a window's log holds an admission (the same for every one)."""
    window = next(gate for gate in gates.demand("p", "p/m", "x", 0).gates if gate.windows).windows[
        0
    ]
    return window.span - window.window_s


def test_a_provider_gate_spreads_its_limit_by_default() -> None:
    gates, clock = make_gates("rpm = 60\n")  # [gates] burst = 0.1: 6 beyond the pace
    assert admitted_at_once(gates, "any", 60) == 7
    for _ in range(5):  # then one a second, as OpenAI counts 60 rpm
        assert admitted_at_once(gates, "any", 3) == 0
        clock.advance(1.0)
        assert admitted_at_once(gates, "any", 3) == 1


def test_pace_is_configurable_per_gate() -> None:
    gates, _ = make_gates("rpm = 60\npace = false\n[apps.x]\nrpm = 30\npace = true\n")
    assert admitted_at_once(gates, "other", 100) == 60  # the provider gate no longer paces
    gates, _ = make_gates("[apps.x]\nrpm = 30\npace = true\n")
    assert admitted_at_once(gates, "x", 30) == 4  # the app gate now does: 1 + 30 * 0.1
    gates, _ = make_gates('[providers.p.models."m"]\nrpm = 20\npace = false\n')
    assert admitted_at_once(gates, "any", 30) == 20


def test_pace_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(PROVIDER + '[apps.x]\nrpm = 3\npace = "yes"\n'))
    assert "apps.x.pace" in str(caught.value)


def test_a_reload_that_turns_pacing_off_applies_at_once_and_keeps_the_log() -> None:
    gates, _ = make_gates("rpm = 10\n")
    assert admitted_at_once(gates, "any", 10) == 2  # 1 + 10 * 0.1
    gates.reconfigure(parse_config(tomllib.loads(PROVIDER + "rpm = 10\npace = false\n")))
    assert admitted_at_once(gates, "any", 10) == 8  # the two already admitted still count


def test_status_shows_which_gates_pace() -> None:
    gates, _ = make_gates("rpm = 60\ntpm = 6000\n[apps.x]\nrpm = 3\n")
    statuses, _, _ = gates.status()
    paces = {(g.name, w.unit): w.pace_s for g in statuses for w in g.windows}
    assert paces == {
        ("provider:p", "requests"): 1.0,
        ("provider:p", "tokens"): pytest.approx(0.01),
        ("app:x", "requests"): None,
    }


async def rate_limited_message(gates: Gates, app: str, tokens: int = 10) -> RequestError:
    demand = gates.demand("p", "p/m", app, tokens)
    with pytest.raises(RequestError) as caught:
        await gates.admit(demand, app=app, priority="normal", max_wait_s=0)
    return caught.value


@pytest.mark.anyio
async def test_rate_limited_names_the_app_gate_its_use_and_when_room_comes() -> None:
    gates, clock = make_gates("[apps.x]\nrpm = 3\n")
    assert admitted_at_once(gates, "x", 2) == 2
    clock.advance(10.0)
    assert admitted_at_once(gates, "x", 1) == 1
    clock.advance(5.8)
    error = await rate_limited_message(gates, "x")
    assert error.code == "rate_limited"
    assert (
        "app gate app:x allows 3 requests per 60 s; 3 used in the last 60 s; "
        "next free in 44.2 s" in error.message
    )
    assert error.retry_after_s == pytest.approx(44.25)


@pytest.mark.anyio
async def test_rate_limited_says_when_a_provider_gate_s_pace_holds_it() -> None:
    gates, clock = make_gates("rpm = 60\n")
    assert admitted_at_once(gates, "any", 60) == 7
    clock.advance(0.25)
    error = await rate_limited_message(gates, "any")
    assert (
        "provider gate provider:p is paced: it spreads 60 requests per 60 s as "
        "1 request per 1 s; 7 used in the last 60 s; next free in 0.8 s" in error.message
    )


@pytest.mark.anyio
async def test_rate_limited_names_a_pause_and_an_in_flight_cap() -> None:
    gates, _ = make_gates("max_concurrency = 1\n")
    assert admitted_at_once(gates, "any", 1) == 1
    gates.pause("p/m", 30.0)
    message = (await rate_limited_message(gates, "any")).message
    assert "provider gate provider:p has 1 of its 1 requests in flight" in message
    assert (
        "model gate p/m is paused by its provider (a 429, or rate-limit headers saying none "
        "is left) for 30.0 s more"
    ) in message


# --------------------------------------------------------------------------- DESIGN §8


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=80),
    limit=st.integers(1, 12),
    burst=st.sampled_from([1.0, 0.5, 0.1, 0.01]),
    amounts=st.lists(st.integers(1, 5), min_size=1, max_size=80),
)
def test_paced_or_not_no_window_ever_holds_more_than_its_limit(
    gaps: list[float], limit: int, burst: float, amounts: list[int]
) -> None:
    """ "At no instant do the admissions of the last window_s seconds exceed the limit", with
    pacing on at any burst or off: requests arrive, each is admitted at the first moment it
    fits (as the queue's timer does)."""
    window_s = 10.0
    window = SlidingWindow("tokens", limit * 3, window_s, 0.0, burst)
    gate = Gate("provider:p", "provider", [window])
    admitted: list[tuple[float, int]] = []
    now = 0.0
    for index, gap in enumerate(gaps):
        now += gap
        amount = min(amounts[index % len(amounts)], window.limit)
        at = max(now, Demand((gate,), amount).available_at(now))
        assert at < math.inf
        assert window.fits(amount, at)
        window.admit(amount, at)
        admitted.append((at, amount))
        now = at
    for t, _ in admitted:
        inside = sum(a for u, a in admitted if u <= t < u + window_s)
        assert inside <= window.limit


@pytest.mark.parametrize("used", [1_000, 10**6, 2**31 - 1])
def test_a_settle_past_the_reservation_holds_a_paced_gate_one_window_at_most(used: int) -> None:
    """A permit settled with far more tokens than the limit pushed a paced gate's pace out by
    ``used`` times its interval: one Settle of 2**31 - 1 tokens on a 1,000-token window of 2 s
    shut the provider for every app for 50 days ("next free in 4.3e6 s"). The log holds
    those tokens one window; so does the pace now."""
    gates, clock = make_gates("limits = [{ tokens = 1000, window_s = 2.0 }]\n")
    demand = gates.demand("p", "p/m", "any", 10)
    reservation = gates.admit_now(demand)
    assert reservation is not None
    gates.settle(reservation, used)
    assert gates.admit_now(gates.demand("p", "p/m", "any", 10)) is None  # the window is full
    clock.advance(2.0 + gates_guard(gates) + 0.01)
    assert gates.admit_now(gates.demand("p", "p/m", "any", 10)) is not None
