"""Model groups and targets: what a request's ``model`` names and in which order its targets
are tried (DESIGN §4, §8 Failover).

A *target* is ``provider/model``. A request's model is a group name (``[models.G]``), a target,
or a bare model that exactly one provider declares under ``[providers.X.models]``. The table of
names is built once per config, so resolving a request is one dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import Provider


@dataclass(slots=True, eq=False)
class Target:
    """One ``provider/model`` and what the daemon counts of it."""

    name: str
    provider_name: str
    model: str
    provider: Provider
    enabled: bool = True
    in_flight: int = 0
    requests: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """What a request's model resolved to: its targets in configured order."""

    name: str
    targets: tuple[Target, ...]
    strategy: str = "failover"
    weights: tuple[float, ...] = field(default_factory=tuple)


class Router:
    """Resolves model names to routes; owns the targets.

    Built anew on each config reload with ``previous``, the router it replaces: a target both
    know is the same :class:`Target` object, pointed at its (maybe rebuilt) provider, so its
    state (enabled, counters, and whatever else a target carries) lives on.
    """

    def __init__(
        self, config: Config, providers: Mapping[str, Provider], previous: Router | None = None
    ) -> None:
        self._providers = dict(providers)
        self._previous_targets = previous.targets if previous is not None else {}
        self.targets: dict[str, Target] = {}
        self.groups: dict[str, Route] = {}
        self._routes: dict[str, Route] = {}
        declared: dict[str, list[Target]] = {}
        for provider_name, provider_config in config.providers.items():
            for model in provider_config.models:
                target = self._target(f"{provider_name}/{model}")
                if target is not None:
                    declared.setdefault(model, []).append(target)
        for group_name, group in config.models.items():
            members = (self._target(name) for name in group.targets)
            targets = tuple(target for target in members if target is not None)
            self.groups[group_name] = Route(
                group_name, targets, group.strategy, tuple(group.weights)
            )
        self._ambiguous = {model: found for model, found in declared.items() if len(found) > 1}
        for model, found in declared.items():
            if len(found) == 1:
                self._routes[model] = Route(model, (found[0],))
        for name, target in self.targets.items():
            self._routes[name] = Route(name, (target,))
        self._routes.update(self.groups)

    def _target(self, name: str) -> Target | None:
        """The target ``provider/model``, made on first use; None for an unknown provider."""
        target = self.targets.get(name)
        if target is None:
            provider_name, _, model = name.partition("/")
            provider = self._providers.get(provider_name)
            if provider is None or not model:
                return None
            target = self._previous_targets.get(name)
            if target is not None:
                target.provider = provider
            else:
                target = Target(name, provider_name, model, provider)
            self.targets[name] = target
        return target

    def resolve(self, model: str) -> Route:
        """The route for a request's ``model``; ``unknown_model`` names what exists."""
        route = self._routes.get(model)
        if route is not None:
            return route
        if "/" in model and (target := self._target(model)) is not None:
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
