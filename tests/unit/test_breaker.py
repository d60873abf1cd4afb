"""The circuit breaker and the health record of a target, on a virtual clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import BreakerConfig, ConfigError, parse_config
from quotad.daemon.routing.breaker import NO_TICKET, CircuitBreaker
from quotad.daemon.routing.health import RECENT_OUTCOMES, TargetHealth
from quotad.protocol.messages import BreakerState

Transition = tuple[BreakerState, BreakerState, str]


def breaker(clock: VirtualClock, **settings: float) -> tuple[CircuitBreaker, list[Transition]]:
    transitions: list[Transition] = []
    config = BreakerConfig(**settings)  # type: ignore[arg-type]

    def noted(old: BreakerState, new: BreakerState, reason: str) -> None:
        transitions.append((old, new, reason))

    return CircuitBreaker(config, clock, noted), transitions


def state(b: CircuitBreaker) -> BreakerState:
    """The state now (a call: mypy narrows attribute reads across a mutation)."""
    return b.state


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        ticket = b.admit()
        assert ticket is not None
        b.failed(ticket)


def succeed(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        ticket = b.admit()
        assert ticket is not None
        b.succeeded(ticket)


# --------------------------------------------------------------------------- closed → open


def test_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = VirtualClock()
    b, transitions = breaker(clock, failures=3, min_calls=100)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert state(b) == "closed"
    fail(b)
    assert state(b) == "open"
    assert b.admit() is None
    assert transitions == [("closed", "open", "3 failures in a row; cooldown 30 s")]


def test_opens_on_the_failure_ratio_only_with_enough_calls_in_the_window() -> None:
    clock = VirtualClock()
    b, transitions = breaker(clock, failures=100, failure_ratio=0.5, min_calls=10, window_s=30)
    for _ in range(4):
        succeed(b)
        fail(b)
        clock.advance(1)
    succeed(b)
    assert state(b) == "closed"  # 9 calls: under min_calls
    fail(b)  # 10 calls, 5 failed
    assert state(b) == "open"
    assert "5 of 10 calls failed in 30 s" in transitions[0][2]


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = VirtualClock()
    b, _ = breaker(clock, failures=100, failure_ratio=0.5, min_calls=4, window_s=10)
    fail(b, 3)
    clock.advance(11)  # those three leave the window
    succeed(b, 3)
    fail(b)  # 1 of 4 in the window
    assert state(b) == "closed"


# --------------------------------------------------------------------------- open → half-open → ?


def test_half_open_after_the_cooldown_admits_only_the_probes() -> None:
    clock = VirtualClock()
    b, transitions = breaker(clock, failures=1, cooldown_s=10, probes=2)
    fail(b)
    clock.advance(9.9)
    assert state(b) == "open"
    assert b.admit() is None
    clock.advance(0.1)
    assert state(b) == "half_open"
    first, second = b.admit(), b.admit()
    assert first is not None
    assert second is not None
    assert b.admit() is None  # both trial calls are out
    b.succeeded(first)
    assert state(b) == "half_open"
    assert b.admit() is None  # one done, one in flight: still two in all
    b.succeeded(second)
    assert state(b) == "closed"
    assert [(old, new) for old, new, _ in transitions] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_a_failed_probe_reopens_with_a_cooldown_growing_to_its_cap() -> None:
    clock = VirtualClock()
    b, _ = breaker(clock, failures=1, cooldown_s=10, max_cooldown_s=35)
    fail(b)
    cooldowns = [b.cooldown_s]
    for _ in range(3):
        clock.advance(b.cooldown_s)
        fail(b)  # the probe fails
        cooldowns.append(b.cooldown_s)
    assert cooldowns == [10, 20, 35, 35]
    assert b.streak == 4
    clock.advance(35)
    succeed(b)  # the probe succeeds: closed, and the streak is over
    assert state(b) == "closed"
    fail(b)
    assert b.cooldown_s == 10
    assert b.opens == 5


def test_a_released_probe_slot_can_be_taken_again() -> None:
    clock = VirtualClock()
    b, _ = breaker(clock, failures=1, cooldown_s=1, probes=1)
    fail(b)
    clock.advance(1)
    ticket = b.admit()
    assert ticket is not None
    assert b.admit() is None
    b.released(ticket)  # a 429, or the caller went away
    assert state(b) == "half_open"
    assert b.admit() is not None


def test_a_call_admitted_before_a_transition_is_not_a_probe_after_it() -> None:
    clock = VirtualClock()
    b, _ = breaker(clock, failures=1, cooldown_s=1, probes=1)
    slow = b.admit()
    assert slow is not None
    fail(b)  # another call fails: open
    clock.advance(1)
    assert state(b) == "half_open"
    b.succeeded(slow)  # the slow call from before answers late
    assert state(b) == "half_open"
    b.failed(NO_TICKET)  # a stream breaking after its attempt is not a probe either
    assert state(b) == "half_open"


def test_health_check_success_closes_early_or_counts_as_one_probe() -> None:
    clock = VirtualClock()
    one, transitions = breaker(clock, failures=1, cooldown_s=60, probes=1)
    fail(one)
    one.health_check_passed()
    assert state(one) == "closed"
    assert [new for _, new, _ in transitions] == ["open", "half_open", "closed"]
    assert transitions[-1][2] == "a health check succeeded"

    two, _ = breaker(clock, failures=1, cooldown_s=60, probes=2)
    fail(two)
    two.health_check_passed()
    assert state(two) == "half_open"
    succeed(two)
    assert state(two) == "closed"


def test_reset_closes_and_forgets() -> None:
    clock = VirtualClock()
    b, transitions = breaker(clock, failures=2)
    fail(b, 2)
    b.reset()
    assert state(b) == "closed"
    assert transitions[-1] == ("open", "closed", "reset by the operator")
    fail(b)
    assert state(b) == "closed"  # the count started again


ALLOWED = {
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "open"),
    ("half_open", "closed"),
}


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.sampled_from(["admit", "admit", "succeed", "fail", "fail", "release", "check"]),
            st.floats(0, 12),
        ),
        max_size=80,
    ),
    probes=st.integers(1, 3),
)
def test_breaker_invariants_hold_for_any_sequence(steps: list[str | float], probes: int) -> None:
    """Only the drawn transitions happen; nothing is admitted while open; half-open never
    admits more than ``probes`` calls."""
    clock = VirtualClock()
    b, transitions = breaker(clock, failures=1, cooldown_s=5, probes=probes, min_calls=3)
    tickets: list[tuple[int, int]] = []  # (ticket, the phase it was admitted in)
    phase = 0  # grows at each change of state seen
    admitted_in_half_open = 0
    last_state = state(b)
    for step in steps:
        if isinstance(step, float):
            clock.advance(step)
        elif step == "admit":
            before = state(b)
            if before != last_state:
                phase, last_state, admitted_in_half_open = phase + 1, before, 0
            ticket = b.admit()
            if before == "open":
                assert ticket is None
            if ticket is not None:
                tickets.append((ticket, phase))
                admitted_in_half_open += before == "half_open"
        elif step == "check":
            b.health_check_passed()
        elif tickets:
            ticket, admitted_phase = tickets.pop(0)
            if step == "release" and admitted_phase == phase and last_state == "half_open":
                admitted_in_half_open -= 1
            {"succeed": b.succeeded, "fail": b.failed, "release": b.released}[step](ticket)
        now_state = state(b)
        if now_state != last_state:
            phase, last_state, admitted_in_half_open = phase + 1, now_state, 0
        assert admitted_in_half_open <= probes
    for old, new, _ in transitions:
        assert (old, new) in ALLOWED


# --------------------------------------------------------------------------- health


def test_health_states_follow_outcomes_and_the_breaker() -> None:
    clock = VirtualClock()
    health = TargetHealth(clock)
    assert health.state("closed") == "unknown"
    assert health.uptime_pct() is None
    health.record(".")
    assert health.state("closed") == "healthy"
    health.record("r")  # a 429 is no failure
    assert health.state("closed") == "healthy"
    health.record("x")
    assert health.state("closed") == "degraded"
    for _ in range(10):
        health.record(".")
    assert health.state("closed") == "healthy"
    assert health.state("open") == "unhealthy"
    assert health.state("half_open") == "degraded"


def test_uptime_is_the_share_of_time_with_the_breaker_closed() -> None:
    clock = VirtualClock()
    health = TargetHealth(clock)
    health.record(".")
    clock.advance(10)
    health.breaker_changed("open")
    clock.advance(5)
    health.breaker_changed("half_open")
    clock.advance(5)
    health.breaker_changed("closed")
    clock.advance(20)
    assert health.uptime_pct() == pytest.approx(75.0)
    health.breaker_changed("open")
    clock.advance(40)
    assert health.uptime_pct() == pytest.approx(37.5)


def test_recent_keeps_the_last_hundred_outcomes() -> None:
    health = TargetHealth(VirtualClock())
    for index in range(RECENT_OUTCOMES + 20):
        health.record("x" if index % 2 else ".")
    recent = health.recent()
    assert len(recent) == RECENT_OUTCOMES
    assert recent.startswith(".x")


def test_the_cooldown_cap_defaults_to_ten_cooldowns_and_is_checked() -> None:
    clock = VirtualClock()
    b, _ = breaker(clock, failures=1, cooldown_s=2)
    for _ in range(6):
        fail(b)
        clock.advance(b.cooldown_s)
    assert b.cooldown_s == 20
    raw = {
        "providers": {
            "p": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "breaker": {"cooldown_s": 60, "max_cooldown_s": 30},
            }
        }
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.problems == [
        "providers.p.breaker.max_cooldown_s: must be at least cooldown_s (60), got 30"
    ]
