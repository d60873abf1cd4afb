"""The broker's attempt loop in-process against a real hanging ``quotad sim``: the request's
deadline cuts an attempt in flight (whichever clock gets to the deadline first: the event
loop's, which watches it, or the injected one the attempts read), and the operator's admin
actions."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.lowlevel
import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.clock import SYSTEM_CLOCK, Clock, VirtualClock
from quotad.daemon.config import parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.providers import build_provider
from quotad.daemon.routing import Router
from quotad.protocol.messages import Admin, Chat, ChatMessage
from tests.support.sim import SimProcess
from tests.support.store import open_store


@pytest.fixture
def anyio_backend(asyncio_only: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return asyncio_only


@pytest.fixture(scope="module")
def hanging_sim() -> Iterator[SimProcess]:
    with SimProcess(extra_args=["--hang-rate", "1"]) as sim:
        yield sim


@contextlib.asynccontextmanager
async def broker_for(base_url: str, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[Broker]:
    config = parse_config(
        {
            "providers": {"h": {"kind": "openai", "base_url": base_url, "timeout_s": 30}},
            "retry": {"deadline_s": 0.4},
        },
        "test",
    )
    providers = {"h": build_provider("h", config.providers["h"], None)}
    async with open_store(config) as store:
        yield Broker(config, Router(config, providers, clock=clock), store, clock)


@pytest.mark.anyio
@pytest.mark.parametrize("clock", ["system", "behind"])
async def test_the_deadline_cuts_an_attempt_in_flight(hanging_sim: SimProcess, clock: str) -> None:
    """The deadline (0.4 s) is watched on the event loop's clock; the attempts read the
    injected one. ``behind``: a clock that stands still, so that the loop's clock passes the
    deadline first, as uvloop's (millisecond resolution) can by a little: the attempt cut is
    still the deadline's (before, it was no attempt at all: ``upstream_error``)."""
    injected = SYSTEM_CLOCK if clock == "system" else VirtualClock()
    async with broker_for(hanging_sim.base_url, injected) as broker:
        request = Chat(id=1, model="h/m", messages=[ChatMessage(role="user", content="hi")])
        started = time.monotonic()
        with pytest.raises(RequestError) as caught:
            await broker.chat(request, Caller(app="test"))
        elapsed = time.monotonic() - started
        assert elapsed < 30 / 2  # not the provider's own 30 s timeout
        assert caught.value.code == "timeout"
        assert caught.value.details["attempts"] == [
            {
                "target": "h/m",
                "kind": "timeout",
                "status": None,
                "message": "still unanswered at the request's deadline",
            }
        ]
        target = broker.router.targets["h/m"]
        assert target.in_flight == 0
        assert target.failures == 0  # cut by the request's own deadline: no verdict on h
        await anyio.lowlevel.checkpoint()  # a request is counted just after its reply
        assert broker.tail.recent[-1].status == "timeout"
        await broker.router.providers["h"].aclose()


@pytest.mark.anyio
async def test_admin_actions(hanging_sim: SimProcess) -> None:
    async with broker_for(hanging_sim.base_url) as broker:
        caller = Caller(app="op")
        ok = await broker.admin.run(Admin(id=1, action="target_disable", target="h/m"), caller)
        assert ok.message == "h/m disabled"
        assert ok.data["enabled"] is False
        ok = await broker.admin.run(Admin(id=2, action="target_enable", target="h/m"), caller)
        assert ok.data.get("enabled", True) is True
        ok = await broker.admin.run(Admin(id=3, action="target_reset", target="h/m"), caller)
        assert ok.message == "h/m reset: its breaker is closed and its 429 pause lifted"
        for bad, says in [
            (Admin(id=4, action="target_reset"), "target_reset needs a target name"),
            (Admin(id=5, action="target_reset", target="x/m"), "no target 'x/m'; targets: h/m"),
            (Admin(id=6, action="launch"), "admin action 'launch' is not supported"),
        ]:
            with pytest.raises(RequestError) as caught:
                await broker.admin.run(bad, caller)
            assert caught.value.code == "bad_request"
            assert says in caught.value.message
        await broker.router.providers["h"].aclose()
