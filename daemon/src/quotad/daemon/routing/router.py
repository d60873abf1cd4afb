"""Model groups and targets: what a request's ``model`` names, the order its targets are tried in,
and the operator's hold on each target (DESIGN §4, §8 Failover).

A *target* is ``provider/model``. A request's model is a group name (``[models.G]``), a target,
or a bare model that exactly one provider declares under ``[providers.X.models]`` (a ``kind =
"local"`` provider declares the model it serves, ``wordllama``). The table of names is built
once per config, so resolving a request is one dict lookup; a target named directly but not
declared is made on first use, up to :data:`MAX_NAMED_TARGETS` per config.
:meth:`Router.attempts` starts one request's walk over its route; :meth:`Router.target_status`
and :meth:`Router.group_status` are what ``quotad status`` shows; :meth:`Router.enable`,
:meth:`~Router.disable` and :meth:`~Router.reset` are ``quotad target enable|disable|reset``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import anyio

from quotad.daemon.clock import SYSTEM_CLOCK, Clock
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.events import EventLog
from quotad.daemon.providers.base import Provider
from quotad.daemon.providers.local import MODEL_NAME as LOCAL_MODEL
from quotad.daemon.routing.attempts import Attempts, Sleep
from quotad.daemon.routing.breaker import CircuitBreaker
from quotad.daemon.routing.health import TargetHealth
from quotad.daemon.routing.retry import RetryBudget, RetryPolicy
from quotad.daemon.routing.strategies import Failover, Strategy, TargetPrice, build_strategy
from quotad.daemon.routing.targets import Target
from quotad.protocol.messages import BreakerState, GroupStatus, TargetStatus

MAX_NAMED_TARGETS: Final = 1024
"""Targets that requests may make by naming them (``provider/model``, not declared), per config.
Each is kept (its gate, breaker and counts; a line in ``quotad status`` and ``/v1/models``), so
without a bound a client naming new ones would grow the daemon without end; past it, a name not
declared is ``unknown_model`` (declared targets, and those already made, still resolve)."""

_SINGLE = Failover()
"""The strategy of a route with one target (it keeps no state, so one serves all)."""


@dataclass(frozen=True, slots=True)
class Route:
    """What a request's model resolved to: its targets in configured order, and the strategy
    that orders them per request."""

    name: str
    targets: tuple[Target, ...]
    strategy: Strategy = _SINGLE

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError(f"route {self.name!r} has no target")


class Router:
    """Resolves model names to routes; owns the targets and what is known of them.

    Built anew on each config reload with ``previous``, the router it replaces: a target both
    know is the same :class:`Target` object, pointed at its (maybe rebuilt) provider, so its
    breaker, health, counts and operator hold live on.
    """

    def __init__(
        self,
        config: Config,
        providers: Mapping[str, Provider],
        *,
        clock: Clock = SYSTEM_CLOCK,
        events: EventLog | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = anyio.sleep,
        previous: Router | None = None,
    ) -> None:
        self.config = config
        self.providers = dict(providers)
        self.clock = clock
        if events is None:
            events = previous.events if previous is not None else EventLog(clock)
        self.events: EventLog = events
        self._previous_targets = previous.targets if previous is not None else {}
        """The router this one replaces: its targets, kept for a name used again. Only its
        targets: a target holds no router, so a reload keeps one generation, not a chain of
        every router since the start and each one's targets."""
        self._sleep = sleep
        self._retry = RetryPolicy.from_config(config.retry, rng)
        self.targets: dict[str, Target] = {}
        self._most_targets: int | None = None
        """Targets past which no more are made on first use (None while the config's are)."""
        self.groups: dict[str, Route] = {}
        self._routes: dict[str, Route] = {}
        declared: dict[str, list[Target]] = {}
        for provider_name, provider_config in config.providers.items():
            models = list(provider_config.models)
            if provider_config.kind == "local" and LOCAL_MODEL not in models:
                models.append(LOCAL_MODEL)  # the one it serves, declared: in /v1/models
            for model in models:
                target = self.target(f"{provider_name}/{model}")
                if target is not None:
                    declared.setdefault(model, []).append(target)
        for group_name, group in config.models.items():
            members = (self.target(name) for name in group.targets)
            targets = tuple(target for target in members if target is not None)
            strategy = build_strategy(group.strategy, group.weights)
            self.groups[group_name] = Route(group_name, targets, strategy)
        self._ambiguous = {model: found for model, found in declared.items() if len(found) > 1}
        for model, found in declared.items():
            if len(found) == 1:
                self._routes[model] = Route(model, (found[0],))
        for name, target in self.targets.items():
            self._routes[name] = Route(name, (target,))
        self._routes.update(self.groups)
        self._most_targets = len(self.targets) + MAX_NAMED_TARGETS
        self.declared_targets: Final = frozenset(self.targets)
        """The targets the config declares (those made by name on first use come later)."""

    # ------------------------------------------------------------------ names

    def target(self, name: str) -> Target | None:
        """The target ``provider/model``, made on first use; None for an unknown provider;
        ``unknown_model`` past :data:`MAX_NAMED_TARGETS`."""
        target = self.targets.get(name)
        if target is None:
            provider_name, _, model = name.partition("/")
            provider = self.providers.get(provider_name)
            if provider is None or not model:
                return None
            if self._most_targets is not None and len(self.targets) >= self._most_targets:
                raise RequestError(
                    "unknown_model",
                    f"model {name[:300]!r} is not declared, and {MAX_NAMED_TARGETS} targets "
                    f"named directly are known already: declare it under "
                    f"[providers.{provider_name}] models",
                    details={"most_named_targets": MAX_NAMED_TARGETS},
                )
            target = self._previous_targets.get(name)
            if target is not None:
                target.provider = provider
            else:
                target = self._new_target(name, provider_name, model, provider)
            self.targets[name] = target
        return target

    def resolve(self, model: str) -> Route:
        """The route for a request's ``model``; ``unknown_model`` names what exists."""
        route = self._routes.get(model)
        if route is not None:
            return route
        if "/" in model and (target := self.target(model)) is not None:
            route = self._routes[model] = Route(model, (target,))
            return route
        if model in self._ambiguous:
            names = ", ".join(t.name for t in self._ambiguous[model])
            raise RequestError(
                "unknown_model",
                f"model {model!r} is declared by several providers: use one of {names}",
            )
        raise RequestError(
            "unknown_model",
            f"unknown model {model!r}; known: {', '.join(self.known_names()) or 'none configured'}",
            details={"known": self.known_names()},
        )

    def known_names(self) -> list[str]:
        """Groups first, then targets and bare models: for errors and ``GET /v1/models``."""
        others = sorted(name for name in self._routes if name not in self.groups)
        return sorted(self.groups) + others

    def routes(self) -> Mapping[str, Route]:
        """Every name a request may use."""
        return self._routes

    def owner_of(self, name: str) -> str:
        """Who a model name is (``GET /v1/models``): groups are quotad's, targets and bare
        models their provider's; ``unknown_model`` when no request may use it."""
        route = self.resolve(name)
        if name in self.groups or not route.targets:
            return "quotad"
        return route.targets[0].provider_name

    def model_owners(self) -> list[tuple[str, str]]:
        """``(name, owner)`` of every name a request may use, in :meth:`known_names` order."""
        return [(name, self.owner_of(name)) for name in self.known_names()]

    def targets_of(self, provider_name: str) -> list[Target]:
        """The targets known so far on one provider."""
        return [t for t in self.targets.values() if t.provider_name == provider_name]

    # ------------------------------------------------------------------ requests

    def attempts(
        self,
        route: Route,
        started: float,
        price_of: TargetPrice,
        max_wait_s: float | None = None,
    ) -> Attempts:
        """One request's walk over ``route``, in its strategy's order; ``started`` is when
        the request arrived (its deadline counts from there); a retry never waits past the
        request's ``max_wait_s``."""
        order = route.strategy.order(route.targets, price_of)
        return Attempts(
            route.name, order, self._retry, self.clock, started, self._sleep, max_wait_s
        )

    # ------------------------------------------------------------------ operator

    def enable(self, name: str) -> Target:
        """Put a target back in rotation."""
        target = self._operated(name)
        if not target.enabled:
            target.enabled = True
            self.events.add("target", f"{name} enabled by the operator")
        return target

    def disable(self, name: str) -> Target:
        """Take a target out of rotation: requests skip it until it is enabled."""
        target = self._operated(name)
        if target.enabled:
            target.enabled = False
            self.events.add("target", f"{name} disabled by the operator", logging.WARNING)
        return target

    def reset(self, name: str) -> Target:
        """Close a target's breaker and forget its failure counts and spent retries."""
        target = self._operated(name)
        target.breaker.reset()
        target.retry_budget.clear()
        return target

    def _operated(self, name: str) -> Target:
        target = self.target(name)
        if target is None:
            known = ", ".join(sorted(self.targets)) or "none"
            raise RequestError("bad_request", f"no target {name!r}; targets: {known}")
        return target

    # ------------------------------------------------------------------ status

    def target_status(self, target: Target) -> TargetStatus:
        """One target as ``quotad status`` shows it."""
        breaker = target.breaker
        state = breaker.state
        until = None
        if state == "open":
            until = self.clock.time() + max(0.0, breaker.reopens_at - self.clock.monotonic())
        return TargetStatus(
            name=target.name,
            provider=target.provider_name,
            model=target.model,
            kind=target.provider.kind,
            enabled=target.enabled,
            breaker=state,
            breaker_until=until,
            breaker_opens=breaker.opens,
            health=target.health.state(state),
            uptime_pct=target.health.uptime_pct(),
            in_flight=target.in_flight,
            requests=target.requests,
            failures=target.failures,
            latency_ewma_s=target.latency_ewma_s,
            recent=target.health.recent(),
        )

    def group_status(self, route: Route, price_of: TargetPrice) -> GroupStatus:
        """A group's current order and why (targets that would be skipped are named)."""
        order, why = route.strategy.preview(route.targets, price_of)
        skipped = [
            f"{target.name} ({'disabled' if not target.enabled else 'circuit open'})"
            for target in order
            if not target.enabled or target.breaker.state == "open"
        ]
        if skipped:
            why += "; skipping " + ", ".join(skipped)
        return GroupStatus(
            name=route.name,
            strategy=route.strategy.name,
            order=[target.name for target in order],
            why=why,
        )

    # ------------------------------------------------------------------ internals

    def _new_target(self, name: str, provider_name: str, model: str, provider: Provider) -> Target:
        provider_config = self.config.providers[provider_name]
        health = TargetHealth(self.clock)
        events = self.events  # not self: a target outlives its router (see _previous_targets)

        def breaker_changed(old: BreakerState, new: BreakerState, reason: str) -> None:
            health.breaker_changed(new)
            level = logging.WARNING if new == "open" else logging.INFO
            events.add("breaker", f"{name}: {old} -> {new}: {reason}", level)

        return Target(
            name=name,
            provider_name=provider_name,
            model=model,
            provider=provider,
            breaker=CircuitBreaker(provider_config.breaker, self.clock, breaker_changed),
            health=health,
            retry_budget=RetryBudget.from_config(self.config.retry, self.clock),
        )
