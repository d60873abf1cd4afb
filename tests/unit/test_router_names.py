"""What a request's model may make of the router: a target named directly (``provider/model``,
not declared) is made on first use and kept, up to ``MAX_NAMED_TARGETS`` per config, so that a
client naming new models without end cannot grow the daemon (its targets, gates, status and
``/v1/models``) without end."""

from __future__ import annotations

import gc
import weakref

import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.errors import RequestError
from quotad.daemon.routing import Router, Target
from quotad.daemon.routing.router import MAX_NAMED_TARGETS
from quotad.protocol.messages import Acquire
from tests.support.providers import InProcessProvider, one_provider_config
from tests.support.store import open_store


def test_targets_named_directly_are_bounded_and_the_known_ones_still_resolve() -> None:
    router = Router(one_provider_config("m"), {"p": InProcessProvider()})
    declared = len(router.targets)
    for index in range(MAX_NAMED_TARGETS):
        assert router.resolve(f"p/named-{index}").targets[0].model == f"named-{index}"
    with pytest.raises(RequestError) as refused:
        router.resolve("p/one-more")
    assert refused.value.code == "unknown_model"
    assert "'p/one-more' is not declared" in str(refused.value)
    assert "declare it under [providers.p] models" in str(refused.value)
    assert len(router.targets) == declared + MAX_NAMED_TARGETS
    assert len(router.known_names()) <= 1 + declared + MAX_NAMED_TARGETS
    # what exists goes on resolving: the group, its declared target, one named before
    assert router.resolve("g").targets[0].name == "p/m"
    assert router.resolve("p/m").targets[0].name == "p/m"
    assert router.resolve("p/named-7").targets[0].name == "p/named-7"
    # a rebuilt router (a reload) counts afresh, and keeps a target named again
    rebuilt = Router(one_provider_config("m"), {"p": InProcessProvider()}, previous=router)
    assert rebuilt.resolve("p/named-7").targets[0] is router.targets["p/named-7"]
    assert rebuilt.resolve("p/one-more").targets[0].name == "p/one-more"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_permit_for_one_target_too_many_is_unknown_model(anyio_backend: str) -> None:
    config = one_provider_config("m")
    async with open_store(config) as store:
        broker = Broker(config, Router(config, {"p": InProcessProvider()}), store)
        for index in range(MAX_NAMED_TARGETS):
            broker.router.target(f"p/named-{index}")
        with pytest.raises(RequestError) as refused:
            await broker.permits.acquire(Acquire(id=1, target="p/one-more"), Caller(app="a"))
        assert refused.value.code == "unknown_model"


def test_a_reload_keeps_one_generation_of_targets_not_every_one_since_the_start() -> None:
    """A socket client may reload (an operator action) and name new targets after each
    reload: the routers it replaced, and the targets only they knew, must be let go (a
    target's breaker callback held its router, which held the targets of the router before,
    and so on: every router and target since the start stayed alive)."""
    providers = {"p": InProcessProvider()}
    router = Router(one_provider_config("m"), providers)
    replaced: list[weakref.ref[Router]] = []
    for generation in range(4):
        for index in range(50):
            router.resolve(f"p/gen{generation}-{index}")
        replaced.append(weakref.ref(router))
        router = Router(one_provider_config("m"), providers, previous=router)
    gc.collect()
    assert [ref() is None for ref in replaced] == [True] * 4
    alive = {o.name.split("-")[0] for o in gc.get_objects() if isinstance(o, Target)}
    assert alive == {"p/m", "p/gen3"}  # the declared one, and those of the last generation
    # the target kept across one reload is still the same object, breaker events and all
    kept = router.resolve("p/m").targets[0]
    while (ticket := kept.breaker.admit()) is not None:
        kept.breaker.failed(ticket)
    assert any(event.kind == "breaker" for event in router.events.recent())
