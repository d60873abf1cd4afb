"""Routing (DESIGN §4, §8 Failover): model groups, the order their targets are tried in, and
keeping unwell targets out of the way.

- :mod:`.router`: names to routes (:class:`Router`, :class:`Route`); operator enable, disable,
  reset; status rows;
- :mod:`.targets`: a :class:`Target` and everything known of it;
- :mod:`.strategies`: failover, round-robin, weighted, least-busy, latency, cost;
- :mod:`.attempts`: one request's walk over its targets: failover, retries, the final error;
- :mod:`.breaker`: the :class:`CircuitBreaker` of each target;
- :mod:`.health`: recent outcomes, uptime and health state of each target;
- :mod:`.checks`: active health checks (``health_check_s``);
- :mod:`.retry`: backoff with full jitter, the retry budget, the retry policy.

Routing never calls gates, cache or ledger: the broker composes them.
"""

from __future__ import annotations

from quotad.daemon.routing.attempts import Attempts
from quotad.daemon.routing.breaker import CircuitBreaker
from quotad.daemon.routing.checks import HealthChecks
from quotad.daemon.routing.health import TargetHealth
from quotad.daemon.routing.retry import Backoff, RetryBudget, RetryPolicy
from quotad.daemon.routing.router import Route, Router
from quotad.daemon.routing.strategies import Strategy, TargetPrice, build_strategy, unknown_price
from quotad.daemon.routing.targets import Target

__all__ = [
    "Attempts",
    "Backoff",
    "CircuitBreaker",
    "HealthChecks",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "Router",
    "Strategy",
    "Target",
    "TargetHealth",
    "TargetPrice",
    "build_strategy",
    "unknown_price",
]
