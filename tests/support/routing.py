"""A :class:`Router` for unit tests: real providers (never called) on a virtual clock, and a
sleep that moves that clock instead of waiting."""

from __future__ import annotations

import random
from typing import Any

import httpx

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import parse_config
from quotad.daemon.providers import build_provider
from quotad.daemon.routing import Router

UNREACHABLE = "http://127.0.0.1:9/v1"


class VirtualSleep:
    """Sleeping on a :class:`VirtualClock`: moves it, and notes each wait."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)


def make_router(
    groups: dict[str, dict[str, Any]] | None = None,
    *,
    providers: tuple[str, ...] = ("a", "b", "c"),
    breaker: dict[str, Any] | None = None,
    retry: dict[str, Any] | None = None,
    clock: VirtualClock | None = None,
    seed: int = 1,
    health_check_s: float = 0.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[Router, VirtualClock, VirtualSleep]:
    """A router over providers named ``providers`` (each serving any model) with ``groups``
    (``[models.G]`` tables); every provider gets the same ``breaker`` table and
    ``health_check_s``, and speaks over ``transport`` when one is given."""
    provider_table = {"breaker": breaker or {}, "health_check_s": health_check_s}
    raw: dict[str, Any] = {
        "providers": {
            name: {"kind": "openai", "base_url": UNREACHABLE, **provider_table}
            for name in providers
        },
        "models": groups or {},
        "retry": retry or {},
    }
    config = parse_config(raw, "test")
    built = {
        name: build_provider(name, config.providers[name], None, transport) for name in providers
    }
    clock = clock or VirtualClock()
    sleep = VirtualSleep(clock)
    router = Router(config, built, clock=clock, rng=random.Random(seed), sleep=sleep)
    return router, clock, sleep
