"""One request's walk over its targets (failover, retries, budget, deadline, breakers) and the
router's operator actions and status, on a virtual clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import ErrorKind, ProviderError
from quotad.daemon.routing import Router, Target, unknown_price
from tests.support.routing import make_router

GROUP = {"g": {"targets": ["a/m", "b/m"]}}

Outcome = Callable[[Target], "ProviderError | None"]


@pytest.fixture
def anyio_backend(asyncio_only: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return asyncio_only


def error(
    kind: ErrorKind, status: int | None = None, retry_after_s: float | None = None
) -> ProviderError:
    return ProviderError(kind, f"{kind} happened", status=status, retry_after_s=retry_after_s)


def always(failures: dict[str, ProviderError]) -> Outcome:
    """Targets named in ``failures`` fail so; the others answer."""
    return lambda target: failures.get(target.name)


def scripted(*outcomes: ProviderError | None) -> Outcome:
    """Each call gets the next of ``outcomes``, whatever its target."""
    answers = iter(outcomes)
    return lambda target: next(answers)


async def drive(
    router: Router,
    model: str,
    outcome: Outcome,
    call_s: float = 0.0,
    max_wait_s: float | None = None,
) -> tuple[str | RequestError, list[str]]:
    """What the broker does with a request: the target that answered (or the error), and the
    targets tried in order. Each call lasts ``call_s`` on the virtual clock."""
    clock = router.clock
    start = clock.monotonic()
    attempts = router.attempts(router.resolve(model), start, unknown_price, max_wait_s)
    tried: list[str] = []
    while (target := await attempts.next_target()) is not None:
        tried.append(target.name)
        attempts.started(target)
        clock.advance(call_s)  # type: ignore[attr-defined]
        failure = outcome(target)
        if failure is None:
            attempts.succeeded(target)
            return target.name, tried
        try:
            attempts.failed(target, failure)
        except RequestError as refused:
            return refused, tried
    return attempts.exhausted(), tried


# --------------------------------------------------------------------------- failover


@pytest.mark.anyio
async def test_a_failed_attempt_moves_to_the_next_target() -> None:
    router, _, sleep = make_router(GROUP)
    kinds: list[tuple[ErrorKind, int | None]] = [
        ("server", 500),
        ("connect", None),
        ("timeout", None),
        ("conflict", 409),
    ]
    for kind, status in kinds:
        served, tried = await drive(router, "g", always({"a/m": error(kind, status)}))
        assert served == "b/m"
        assert tried == ["a/m", "b/m"]
    assert sleep.waits == []  # moving to another target does not wait
    a, b = router.targets["a/m"], router.targets["b/m"]
    assert a.failures == 4
    assert a.health.recent() == "xxxx"
    assert b.health.recent() == "...."


@pytest.mark.anyio
async def test_a_callers_4xx_is_returned_as_is() -> None:
    router, _, _ = make_router(GROUP)
    refused, tried = await drive(router, "g", always({"a/m": error("client", 400)}))
    assert isinstance(refused, RequestError)
    assert refused.code == "bad_request"
    assert refused.message == "a/m refused the request (HTTP 400): client happened"
    assert refused.details["status"] == 400
    assert tried == ["a/m"]
    assert router.targets["a/m"].failures == 0  # the target is fine
    assert router.targets["a/m"].health.recent() == "."


@pytest.mark.anyio
async def test_a_callers_4xx_names_the_field_the_adapter_named() -> None:
    """The local provider's "input[0] is empty" came to HTTP with ``param: null``."""
    router, _, _ = make_router(GROUP)
    named = ProviderError("client", "input[0] is empty", status=400, field="input")
    refused, _ = await drive(router, "g", always({"a/m": named}))
    assert isinstance(refused, RequestError)
    assert refused.details["field"] == "input"
    unnamed, _ = await drive(router, "g", always({"a/m": error("client", 400)}))
    assert isinstance(unnamed, RequestError)
    assert "field" not in unnamed.details


@pytest.mark.anyio
async def test_a_request_the_adapter_cannot_express_says_so_without_an_http_status() -> None:
    """An adapter's own refusal (no provider asked) read "refused the request (HTTP None)"."""
    router, _, _ = make_router(GROUP)
    refused, _ = await drive(router, "g", always({"a/m": error("client", None)}))
    assert isinstance(refused, RequestError)
    assert refused.message == "a/m cannot take the request: client happened"


@pytest.mark.anyio
async def test_when_every_target_fails_the_error_lists_each_attempt() -> None:
    router, _, sleep = make_router(GROUP)
    failures = {"a/m": error("server", 503), "b/m": error("timeout")}
    failed, tried = await drive(router, "g", always(failures))
    assert tried == ["a/m", "b/m", "a/m"]  # retry.attempts = 3: one retry of the first
    assert isinstance(failed, RequestError)
    assert failed.code == "upstream_error"
    assert failed.details["attempts"] == [
        {"target": "a/m", "kind": "server", "status": 503, "message": "server happened"},
        {"target": "b/m", "kind": "timeout", "status": None, "message": "timeout happened"},
        {"target": "a/m", "kind": "server", "status": 503, "message": "server happened"},
    ]
    assert "a/m: server HTTP 503: server happened; b/m: timeout: timeout happened" in failed.message
    assert len(sleep.waits) == 1
    assert 0 <= sleep.waits[0] <= 0.1


@pytest.mark.anyio
async def test_a_lone_target_is_retried_with_backoff() -> None:
    router, _, sleep = make_router(retry={"attempts": 4, "base_s": 0.5, "max_s": 1.5})
    flaky = scripted(error("server", 500), error("connect"), error("server", 502), None)
    served, tried = await drive(router, "a/m", flaky)
    assert served == "a/m"
    assert tried == ["a/m"] * 4
    assert len(sleep.waits) == 3
    for wait, ceiling in zip(sleep.waits, [0.5, 1.0, 1.5], strict=True):
        assert 0 <= wait <= ceiling


@pytest.mark.anyio
async def test_a_protocol_error_moves_on_but_is_not_retried() -> None:
    router, _, _ = make_router(GROUP)
    failed, tried = await drive(
        router, "g", always({"a/m": error("protocol"), "b/m": error("protocol")})
    )
    assert tried == ["a/m", "b/m"]
    assert isinstance(failed, RequestError)
    assert failed.code == "upstream_error"


# --------------------------------------------------------------------------- 429


@pytest.mark.anyio
async def test_429_waits_its_retry_after_and_never_opens_the_breaker() -> None:
    router, _, sleep = make_router(breaker={"failures": 2}, retry={"budget_min": 10})
    for _ in range(10):
        served, tried = await drive(router, "a/m", scripted(error("rate_limited", 429, 2.0), None))
        assert served == "a/m"
        assert tried == ["a/m", "a/m"]
    assert sleep.waits == [2.0] * 10
    target = router.targets["a/m"]
    assert target.breaker.state == "closed"
    assert target.health.state("closed") == "healthy"
    assert target.health.recent() == "r." * 10


@pytest.mark.anyio
async def test_429_in_a_group_moves_to_the_next_target_at_once() -> None:
    router, _, sleep = make_router(GROUP)
    limited = always({"a/m": error("rate_limited", 429, retry_after_s=5.0)})
    served, tried = await drive(router, "g", limited)
    assert (served, tried) == ("b/m", ["a/m", "b/m"])
    assert sleep.waits == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("retry_after_s", "max_wait_s", "reason"),
    [
        (30.0, None, "over retry.max_s"),
        # a request's max_wait_s bounds its wait at the gates; a provider's retry-after was
        # waited for past it (a probe: max_wait_s 2, answered after 8 and 16 s)
        (8.0, 2.0, "over the request's max_wait_s (2 s)"),
    ],
)
async def test_a_retry_after_past_a_bound_is_not_waited_for(
    retry_after_s: float, max_wait_s: float | None, reason: str
) -> None:
    router, _, sleep = make_router(retry={"max_s": 20})
    limited = always({"a/m": error("rate_limited", 429, retry_after_s=retry_after_s)})
    failed, tried = await drive(router, "a/m", limited, max_wait_s=max_wait_s)
    assert tried == ["a/m"]
    assert sleep.waits == []
    assert isinstance(failed, RequestError)
    assert failed.code == "rate_limited"
    assert failed.retry_after_s == pytest.approx(retry_after_s)
    assert reason in failed.details["skipped"]["a/m"]


@pytest.mark.anyio
async def test_a_retry_after_within_the_requests_max_wait_is_waited_for() -> None:
    router, _, _ = make_router(retry={"max_s": 20})
    within = scripted(error("rate_limited", 429, 1.0), None)
    waited, tried = await drive(router, "a/m", within, max_wait_s=2.0)
    assert (waited, tried) == ("a/m", ["a/m", "a/m"])  # within it: waited, then retried


# --------------------------------------------------------------------------- bounds


@pytest.mark.anyio
async def test_the_deadline_bounds_every_attempt_and_wait() -> None:
    router, clock, _ = make_router(retry={"attempts": 10, "deadline_s": 2.0, "base_s": 0.01})
    started = clock.monotonic()
    failed, tried = await drive(router, "a/m", always({"a/m": error("server", 500)}), call_s=0.7)
    assert isinstance(failed, RequestError)
    assert len(tried) == 3  # 0.7 s each: the third ends past the 2 s deadline
    assert failed.code == "timeout"
    assert "deadline (2 s)" in failed.message
    assert clock.monotonic() - started < 2.0 + 0.7 + 0.02


@pytest.mark.anyio
async def test_a_retry_that_would_end_past_the_deadline_is_not_started() -> None:
    router, _, sleep = make_router(retry={"deadline_s": 1.0, "base_s": 0.01})
    failed, tried = await drive(
        router, "a/m", always({"a/m": error("rate_limited", 429, retry_after_s=5.0)})
    )
    assert tried == ["a/m"]
    assert sleep.waits == []
    assert isinstance(failed, RequestError)
    assert "no time left before the deadline" in failed.details["skipped"]["a/m"]


@pytest.mark.anyio
async def test_an_outage_never_multiplies_load_beyond_the_retry_budget() -> None:
    """A lone target down for 200 requests: at most 20 % more attempts (plus the floor)."""
    router, _, _ = make_router(
        breaker={"failures": 10_000, "min_calls": 10_000},
        retry={"attempts": 3, "budget_ratio": 0.2, "budget_min": 3, "budget_window_s": 1000},
    )
    attempts = 0
    for _ in range(200):
        _, tried = await drive(router, "a/m", always({"a/m": error("server", 500)}))
        attempts += len(tried)
    assert 200 + 3 <= attempts <= 200 * 1.2 + 3


# --------------------------------------------------------------------------- breakers, operator


@pytest.mark.anyio
async def test_an_open_target_is_skipped_without_an_attempt() -> None:
    router, clock, _ = make_router(GROUP, breaker={"failures": 2, "cooldown_s": 10})
    for _ in range(2):
        await drive(router, "g", always({"a/m": error("connect")}))
    a = router.targets["a/m"]
    assert a.breaker.state == "open"
    requests_before = a.requests
    served, tried = await drive(router, "g", always({}))
    assert (served, tried) == ("b/m", ["b/m"])
    assert a.requests == requests_before
    clock.advance(10)  # half-open: the next request probes a, which answers
    served, tried = await drive(router, "g", always({}))
    assert (served, tried) == ("a/m", ["a/m"])
    assert router.target_status(a).breaker == "closed"
    breaker_events = [e.message for e in router.events.recent() if e.kind == "breaker"]
    assert breaker_events == [
        "a/m: closed -> open: 2 failures in a row; cooldown 10 s",
        "a/m: open -> half_open: cooldown of 10 s over",
        "a/m: half_open -> closed: a trial call succeeded",
    ]


@pytest.mark.anyio
async def test_when_every_target_is_open_the_error_says_when_to_come_back() -> None:
    router, clock, _ = make_router(GROUP, breaker={"failures": 1, "cooldown_s": 10})
    await drive(router, "g", always({"a/m": error("connect"), "b/m": error("connect")}))
    clock.advance(4)
    failed, tried = await drive(router, "g", always({}))
    assert tried == []
    assert isinstance(failed, RequestError)
    assert failed.code == "upstream_error"
    assert failed.retry_after_s == pytest.approx(6.0, abs=0.1)  # less the backoff slept
    assert "no target of 'g' can take requests now" in failed.message
    assert "circuit open (half-open in 6.0 s)" in failed.message


@pytest.mark.anyio
async def test_an_abandoned_probe_gives_its_slot_back() -> None:
    router, clock, _ = make_router(breaker={"failures": 1, "cooldown_s": 1, "probes": 1})
    await drive(router, "a/m", always({"a/m": error("connect")}))
    clock.advance(1)
    target = router.targets["a/m"]
    first = router.attempts(router.resolve("a/m"), clock.monotonic(), unknown_price)
    assert await first.next_target() is target
    first.started(target)
    second = router.attempts(router.resolve("a/m"), clock.monotonic(), unknown_price)
    assert await second.next_target() is None  # the one trial call is taken
    first.abandoned(target)  # cancelled by its caller
    assert target.in_flight == 0
    third = router.attempts(router.resolve("a/m"), clock.monotonic(), unknown_price)
    assert await third.next_target() is target


@pytest.mark.anyio
async def test_an_attempt_cut_by_the_callers_deadline_is_a_timeout_whatever_the_clock_says() -> (
    None
):
    """The broker's deadline is watched on the event loop's clock, which may pass it before
    the injected clock does: its word that it cut the attempt decides."""
    router, clock, _ = make_router()
    attempts = router.attempts(router.resolve("a/m"), clock.monotonic(), unknown_price)
    target = await attempts.next_target()
    assert target is not None
    attempts.started(target)
    attempts.abandoned(target, at_deadline=True)  # the virtual clock has not moved
    failed = attempts.exhausted(at_deadline=True)
    assert failed.code == "timeout"
    assert failed.details["attempts"] == [
        {
            "target": "a/m",
            "kind": "timeout",
            "status": None,
            "message": "still unanswered at the request's deadline",
        }
    ]
    assert (target.in_flight, target.failures) == (0, 0)


@pytest.mark.anyio
async def test_disabled_targets_are_skipped_until_enabled() -> None:
    router, _, _ = make_router(GROUP)
    router.disable("a/m")
    assert await drive(router, "g", always({})) == ("b/m", ["b/m"])
    router.disable("b/m")
    failed, tried = await drive(router, "g", always({}))
    assert tried == []
    assert isinstance(failed, RequestError)
    assert "a/m: disabled by the operator; b/m: disabled by the operator" in failed.message
    router.enable("a/m")
    assert await drive(router, "g", always({})) == ("a/m", ["a/m"])
    kinds = [(e.kind, e.message) for e in router.events.recent()]
    assert ("target", "a/m disabled by the operator") in kinds
    assert ("target", "a/m enabled by the operator") in kinds


@pytest.mark.anyio
async def test_status_shows_breaker_health_and_why_of_the_order() -> None:
    router, clock, _ = make_router(GROUP, breaker={"failures": 1, "cooldown_s": 30})
    await drive(router, "g", always({"a/m": error("server", 500)}))
    a = router.target_status(router.targets["a/m"])
    assert a.breaker == "open"
    assert a.health == "unhealthy"
    assert a.breaker_opens == 1
    assert a.breaker_until == pytest.approx(clock.time() + 30)
    assert a.recent == "x"
    assert a.uptime_pct == 0.0
    b = router.target_status(router.targets["b/m"])
    assert (b.breaker, b.health, b.recent, b.uptime_pct) == ("closed", "healthy", ".", 100.0)
    assert b.latency_ewma_s == 0.0
    group = router.group_status(router.groups["g"], unknown_price)
    assert group.order == ["a/m", "b/m"]
    assert group.why == "configured order; skipping a/m (circuit open)"
    router.reset("a/m")
    assert router.target_status(router.targets["a/m"]).breaker == "closed"


def test_operating_an_unknown_target_names_the_known_ones() -> None:
    router, _, _ = make_router(GROUP)
    with pytest.raises(RequestError) as caught:
        router.disable("nope/m")
    assert caught.value.code == "bad_request"
    assert caught.value.message == "no target 'nope/m'; targets: a/m, b/m"
