"""Active health checks: what each answer to ``GET /models`` does to a target's breaker and
health (the provider's HTTP replaced by ``httpx.MockTransport``; the sim cannot answer
``/models`` with a 429)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from quotad.daemon.routing import HealthChecks, Router, Target
from tests.support.routing import make_router

MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}


@pytest.fixture
def anyio_backend(asyncio_only: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return asyncio_only


class Answers:
    """A mock provider answering ``/models`` with the next status of a script."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.paths: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        status = self.statuses.pop(0)
        if status == 200:
            return httpx.Response(200, json=MODELS)
        headers = {"retry-after": "7"} if status == 429 else {}
        return httpx.Response(
            status, json={"error": {"message": f"HTTP {status}"}}, headers=headers
        )


def checked_target(
    answers: Answers, breaker: dict[str, Any]
) -> tuple[Router, HealthChecks, Target]:
    """A router whose one target ``a/m`` has health checks every 5 s, answered by
    ``answers``; the checks and the target."""
    router, _, _ = make_router(
        {"g": {"targets": ["a/m"]}},
        providers=("a",),
        breaker=breaker,
        health_check_s=5,
        transport=httpx.MockTransport(answers),
    )
    return router, HealthChecks(router), router.targets["a/m"]


@pytest.mark.anyio
async def test_checks_open_the_breaker_and_close_it_before_the_cooldown() -> None:
    answers = Answers(500, 500, 500, 200)
    router, checks, target = checked_target(answers, breaker={"failures": 2, "cooldown_s": 600})
    assert [await checks.check("a") for _ in range(2)] == [False, False]
    assert target.breaker.state == "open"
    assert not await checks.check("a")  # still down: stays open, nothing worse
    assert await checks.check("a")  # back: closed at once, 600 s early
    assert router.target_status(target).breaker == "closed"
    assert target.health.recent() == "HHHh"
    assert answers.paths == ["/v1/models"] * 4


@pytest.mark.anyio
async def test_a_429_or_a_404_from_models_is_no_health_failure() -> None:
    answers = Answers(429, 429, 429, 404)
    _, checks, target = checked_target(answers, breaker={"failures": 1})
    assert [await checks.check("a") for _ in range(3)] == [False, False, False]
    assert target.breaker.state == "closed"  # rate limited is not unwell
    assert await checks.check("a")  # no /models there, but the server answers: up
    assert target.health.recent() == "rrrh"
    assert target.health.state("closed") == "healthy"


@pytest.mark.anyio
async def test_only_providers_that_ask_are_checked() -> None:
    router, _, _ = make_router(providers=("a",), health_check_s=0)
    await HealthChecks(router).run()  # nothing to check: returns at once
