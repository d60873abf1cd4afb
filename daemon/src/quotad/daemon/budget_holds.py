"""Step 2 of the pipeline (DESIGN §2): a request's budgets hold the most it may cost before any
provider is called, and ``budget_exceeded`` refuses it when that does not fit.

The most it may cost is the most prompt and completion tokens a provider can bill it
(:func:`~quotad.daemon.request_limits.billable_tokens`: bounds, not estimates) at the most
expensive target of its route. Step 7 settles the hold with the real cost
(:meth:`quotad.daemon.store.budgets.Budgets.settle`). With ``[cluster]`` the budgets are the
fleet's: a request is held within what this host holds of them, borrowing more when it holds
too little (:mod:`quotad.daemon.cluster.shared_budgets`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quotad.daemon.clock import Clock
from quotad.daemon.request_context import RequestContext
from quotad.daemon.request_limits import billable_tokens
from quotad.daemon.routing import Route
from quotad.daemon.store.budgets import Budget, BudgetAlert, BudgetHold, Budgets
from quotad.daemon.store.prices import PER_TOKEN, Price, PriceTable
from quotad.protocol.messages import Chat, Embed

if TYPE_CHECKING:
    from quotad.daemon.cluster.shared_budgets import SharedBudgets


class BudgetHolds:
    """Holds each request's maximum cost on the budgets that apply to it."""

    def __init__(self, budgets: Budgets, prices: PriceTable, clock: Clock) -> None:
        self.budgets = budgets
        self.prices = prices
        self.clock = clock
        self.fleet: SharedBudgets | None = None
        """With ``[cluster]``: the fleet's budgets (the runtime sets it)."""
        self._route_prices: dict[str, Price] = {}
        """The most expensive price of each route's targets, as asked (cleared at reload)."""
        self._in_flight: dict[str, tuple[RequestContext, Route, Chat | Embed]] = {}
        """Requests from step 2 to step 7: a budget a reload adds holds their bound too."""
        budgets.on_added = self.hold_in_flight

    async def reserve(self, context: RequestContext, route: Route, request: Chat | Embed) -> None:
        """Hold the request's maximum cost on its budgets (``context.budget``), or raise
        ``budget_exceeded``. The bounds are only counted when a budget applies. A
        ``cache="only"`` request never calls a provider, so it holds nothing."""
        if request.cache == "only":
            return
        self._in_flight[context.request_id] = (context, route, request)
        if not self.budgets.apply_to(context.caller.app):
            return
        context.budget = await self._hold(context, route, request)

    async def hold_again(self, context: RequestContext, route: Route) -> None:
        """Before another attempt: each failed one its provider may still bill has used up
        the bound the request held for it, so the next holds one more, or ``budget_exceeded``
        is raised (what the failed ones may cost is charged all the same). Nothing to hold
        when no budget applies or nothing failed that way."""
        if not context.unanswered_calls or context.budget is None or context.request is None:
            return
        holds = context.further_holds if context.further_holds is not None else []
        while len(holds) < context.unanswered_calls:
            hold = await self._hold(context, route, context.request)
            if hold is None:  # a reload left the app no budget
                return
            holds.append(hold)
            context.further_holds = holds

    async def _hold(
        self, context: RequestContext, route: Route, request: Chat | Embed
    ) -> BudgetHold | None:
        """Hold the request's maximum cost on its app's budgets, or raise; None: none apply."""
        max_cost = self._max_cost(context, route, request)
        app, now, fleet = context.caller.app, self.clock.time(), self.fleet
        if fleet is None:
            return self.budgets.reserve(app, max_cost, now)
        return await fleet.reserve(app, max_cost, now)  # borrows when this host holds too little

    def settle(self, context: RequestContext, cost_usd: float, now: float) -> list[BudgetAlert]:
        """Step 7: return the request's holds and add its real cost to its app's budgets; the
        alerts that makes. A second call (after a bug further on) holds nothing."""
        self._in_flight.pop(context.request_id, None)
        app, target = context.caller.app, context.target_name
        for hold in context.further_holds or ():
            self.budgets.settle(hold, app, 0.0, now)
        context.further_holds = None
        alerts = self.budgets.settle(context.budget, app, cost_usd, now, target=target)
        context.budget = None
        return alerts

    def hold_in_flight(self, added: list[Budget]) -> None:
        """A reload added ``added``: each request in flight holds its bound on those of its
        app's too, as it would have had it arrived after (before, they held nothing there,
        and their cost took a budget added under load past its limit: $0.725 of $0.625)."""
        if self.fleet is not None:
            return  # the fleet's budgets are held by SharedBudgets
        new = {id(budget) for budget in added}
        for context, route, request in self._in_flight.values():
            joined = tuple(b for b in self.budgets.of_app(context.caller.app) if id(b) in new)
            if not joined:
                continue
            hold = context.budget
            amount = hold.amount_usd if hold else self._max_cost(context, route, request)
            Budgets.hold(joined, amount)
            context.budget = BudgetHold((hold.budgets if hold else ()) + joined, amount)

    def _max_cost(self, context: RequestContext, route: Route, request: Chat | Embed) -> float:
        """The most the request may cost: its bounds at its route's dearest price."""
        price = self._route_prices.get(route.name)
        if price is None:
            names = tuple(target.name for target in route.targets)
            price = self._route_prices[route.name] = self.prices.most_expensive(names)
        prompt_tokens, completion_tokens = billable_tokens(request, context.max_tokens)
        return (prompt_tokens * price.input + completion_tokens * price.output) * PER_TOKEN

    def reconfigure(self) -> None:
        """A reloaded config may price or route differently: forget the routes' prices."""
        self._route_prices.clear()
