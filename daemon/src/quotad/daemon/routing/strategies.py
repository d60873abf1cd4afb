"""The order in which a group's targets are tried (``strategy`` of ``[models.G]``).

=============  ==============================================================================
failover       the configured order
round-robin    the configured order, rotated by one for each request
weighted       the first target picked by smooth weighted round-robin over ``weights`` (over
               any stretch of requests each target leads in proportion to its weight, spread
               evenly); the others after it, heaviest first
least-busy     fewest calls in flight first; ties rotate
latency        lowest moving average of latency first (targets never measured before all);
               one request in :data:`EXPLORE_EVERY` puts the least recently measured of the
               others first, so that a target that got faster is noticed
cost           cheapest first, by the price a :data:`TargetPrice` gives (unknown counts as 0)
=============  ==============================================================================

A strategy only orders; the attempt loop skips disabled targets and those whose breaker is
open. :meth:`Strategy.preview` gives the order the next request would get, and why, for
``quotad status``, without moving any rotation on.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Final

from quotad.daemon.routing.targets import Target

TargetPrice = Callable[[str], float | None]
"""A target's price for ordering by cost: USD per 1M tokens (input price + output price) of the
target named, or None when unknown. The store's price table provides it; the broker passes it."""

EXPLORE_EVERY: Final = 20
"""The latency strategy explores on one request in this many."""


def unknown_price(target: str) -> float | None:
    """The :data:`TargetPrice` used until a price table is given: nothing is priced."""
    return None


class Strategy(ABC):
    """Orders the targets of one group; one instance per group (it may keep a rotation)."""

    name: ClassVar[str]

    @abstractmethod
    def order(self, targets: Sequence[Target], price_of: TargetPrice) -> list[Target]:
        """The order one request tries ``targets`` in (a rotation moves on)."""

    @abstractmethod
    def preview(self, targets: Sequence[Target], price_of: TargetPrice) -> tuple[list[Target], str]:
        """The order the next request would get and why; changes nothing."""


class Failover(Strategy):
    """The configured order."""

    name = "failover"

    def order(self, targets: Sequence[Target], price_of: TargetPrice) -> list[Target]:
        return list(targets)

    def preview(self, targets: Sequence[Target], price_of: TargetPrice) -> tuple[list[Target], str]:
        return list(targets), "configured order"


class _Rotating(Strategy):
    """A strategy that starts from a point of the configured order rotating by one per request."""

    def __init__(self) -> None:
        self._next = 0

    def _rotation(self, targets: Sequence[Target], *, advance: bool) -> list[Target]:
        """``targets`` from the rotation's start; ``advance``: for a request (it moves on by
        one), not a preview."""
        start = self._next % len(targets)
        if advance:
            self._next = start + 1
        return [*targets[start:], *targets[:start]]


class RoundRobin(_Rotating):
    """The configured order rotated by one per request."""

    name = "round-robin"

    def order(self, targets: Sequence[Target], price_of: TargetPrice) -> list[Target]:
        return self._rotation(targets, advance=True)

    def preview(self, targets: Sequence[Target], price_of: TargetPrice) -> tuple[list[Target], str]:
        ordered = self._rotation(targets, advance=False)
        return ordered, f"rotating; the next request starts at {ordered[0].name}"


class Weighted(Strategy):
    """Smooth weighted round-robin (nginx's): each request adds every weight to its target's
    running score, the highest score leads and loses the sum of the weights."""

    name = "weighted"

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = tuple(weights)
        self._total = math.fsum(self._weights)
        self._scores = [0.0] * len(self._weights)
        self._heaviest_first = sorted(range(len(self._weights)), key=lambda i: -self._weights[i])

    def order(self, targets: Sequence[Target], price_of: TargetPrice) -> list[Target]:
        return self._ordered(targets, self._pick(self._scores))

    def preview(self, targets: Sequence[Target], price_of: TargetPrice) -> tuple[list[Target], str]:
        ordered = self._ordered(targets, self._pick(list(self._scores)))
        ratio = ":".join(f"{weight:g}" for weight in self._weights)
        return ordered, f"weights {ratio}; the next request starts at {ordered[0].name}"

    def _pick(self, scores: list[float]) -> int:
        weights = self._weights
        best = 0
        for index, weight in enumerate(weights):
            scores[index] += weight
            if scores[index] > scores[best]:
                best = index
        scores[best] -= self._total
        return best

    def _ordered(self, targets: Sequence[Target], first: int) -> list[Target]:
        return [targets[first], *(targets[i] for i in self._heaviest_first if i != first)]


class LeastBusy(_Rotating):
    """Fewest calls in flight first; ties in an order that rotates per request."""

    name = "least-busy"

    def order(self, targets: Sequence[Target], price_of: TargetPrice) -> list[Target]:
        return sorted(self._rotation(targets, advance=True), key=_in_flight)

    def preview(self, targets: Sequence[Target], price_of: TargetPrice) -> tuple[list[Target], str]:
        ordered = sorted(self._rotation(targets, advance=False), key=_in_flight)
        busy = ", ".join(f"{target.name} {target.in_flight}" for target in ordered)
        return ordered, f"fewest in flight first: {busy}"


class Latency(Strategy):
    """Lowest latency average first, exploring on one request in :data:`EXPLORE_EVERY`."""

    name = "latency"

    def __init__(self) -> None:
        self._requests = 0

    def order(self, targets: Sequence[Target], price_of: TargetPrice) -> list[Target]:
        self._requests += 1
        return self._ordered(targets, explore=self._requests % EXPLORE_EVERY == 0)

    def preview(self, targets: Sequence[Target], price_of: TargetPrice) -> tuple[list[Target], str]:
        explore = (self._requests + 1) % EXPLORE_EVERY == 0
        ordered = self._ordered(targets, explore=explore)
        figures = ", ".join(f"{target.name} {_milliseconds(target)}" for target in ordered)
        why = f"lowest latency first: {figures}"
        if explore:
            why += f"; the next request explores {ordered[0].name}"
        return ordered, why

    @staticmethod
    def _ordered(targets: Sequence[Target], *, explore: bool) -> list[Target]:
        ordered = sorted(targets, key=_latency_rank)
        if explore and len(ordered) > 1:
            stalest = min(ordered[1:], key=_measured_at)
            ordered.remove(stalest)
            ordered.insert(0, stalest)
        return ordered


class Cost(Strategy):
    """Cheapest first; an unpriced target counts as free."""

    name = "cost"

    def order(self, targets: Sequence[Target], price_of: TargetPrice) -> list[Target]:
        return sorted(targets, key=lambda target: price_of(target.name) or 0.0)

    def preview(self, targets: Sequence[Target], price_of: TargetPrice) -> tuple[list[Target], str]:
        ordered = self.order(targets, price_of)
        prices = []
        for target in ordered:
            price = price_of(target.name)
            prices.append(f"{target.name} " + ("unpriced" if price is None else f"${price:g}"))
        return ordered, "cheapest first (USD per 1M tokens in+out): " + ", ".join(prices)


STRATEGIES: Final[dict[str, type[Strategy]]] = {
    strategy.name: strategy for strategy in (Failover, RoundRobin, LeastBusy, Latency, Cost)
}


def build_strategy(name: str, weights: Sequence[float] = ()) -> Strategy:
    """The strategy called ``name`` (config validation has checked it and its weights)."""
    if name == Weighted.name:
        return Weighted(weights)
    return STRATEGIES[name]()


def _in_flight(target: Target) -> int:
    return target.in_flight


def _latency_rank(target: Target) -> tuple[bool, float]:
    return (target.latency_ewma_s is not None, target.latency_ewma_s or 0.0)


def _measured_at(target: Target) -> float:
    return -math.inf if target.latency_at is None else target.latency_at


def _milliseconds(target: Target) -> str:
    latency = target.latency_ewma_s
    return "unmeasured" if latency is None else f"{latency * 1000:.0f} ms"
