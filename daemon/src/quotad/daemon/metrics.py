"""The daemon's Prometheus metrics: the counters and histograms the broker feeds as each request
finishes (step 7), the front door's response counts, and the text exposition of them together
with the state a :class:`~quotad.protocol.messages.StatusReply` holds (``GET /metrics``).

Feeding is the hot path and costs a few dict increments per request. Everything that is state
rather than a count (gates, queues, breakers, cache, budgets, spend) is read from the status
at scrape time, so it has one home: the component that owns it. The exposition is Prometheus
text format 0.0.4, written here (no client library in the daemon).

Requests that never reached a target (an unknown model, a budget refused before routing) are
counted under ``target=""``, and apps past the activity log's bound under ``app="(other)"``, so
that made-up model and app names cannot grow the number of series; the targets and the (target,
app) pairs counted apart are bounded too (:data:`MAX_TARGET_SERIES`,
:data:`MAX_TARGET_APP_SERIES`), past which ``"(other)"`` counts the rest.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final

from quotad.daemon.activity import OTHER_APPS
from quotad.protocol.messages import (
    PRIORITIES,
    BudgetStatus,
    ClusterStatus,
    RequestRecord,
    StatusReply,
)

MAX_TARGET_SERIES: Final = 4096
"""Targets counted apart (the router makes at most 1,024 by name per config, but a reload
starts that count over); a request of another target counts under ``target="(other)"``."""
MAX_TARGET_APP_SERIES: Final = 10_000
"""(target, app) pairs counted apart: targets and apps are each bounded, their product (4
million) is not small; a request of another pair counts under ``app="(other)"``."""
OTHER: Final = OTHER_APPS
"""The label of what is counted together past a bound (the activity log's name for it)."""

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
WAIT_BUCKETS_S: Final = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_STATES: Final = ("closed", "open", "half_open")
HEALTH_STATES: Final = ("healthy", "degraded", "unhealthy", "unknown")


class Histogram:
    """Observation counts per bucket (not cumulative: made so when written), sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is the +Inf bucket
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Metrics:
    """What the daemon counts, and its Prometheus text exposition."""

    __slots__ = ("_cost", "_http", "_latency", "_requests", "_tokens", "_wait")

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str], int] = {}
        self._tokens: dict[tuple[str, str], list[int]] = {}
        self._cost: dict[tuple[str, str], float] = {}
        self._latency: dict[str, Histogram] = {}
        self._wait: dict[str, Histogram] = {}
        self._http: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------ feeding (hot path)

    def observe_request(self, record: RequestRecord, *, resolved: bool, app: str) -> None:
        """Count a finished request; ``resolved``: it reached a target (see module docstring);
        ``app``: the name its app is counted under (apps are named by clients: past a bound,
        several share one, see :mod:`quotad.daemon.activity`)."""
        target = record.target if resolved else ""
        pair = (target, app)
        tokens = self._tokens.get(pair)
        if tokens is None:
            if target not in self._latency and len(self._latency) >= MAX_TARGET_SERIES:
                target = OTHER
            if len(self._tokens) >= MAX_TARGET_APP_SERIES:
                app = OTHER
            pair = (target, app)
            tokens = self._tokens.get(pair)
            if tokens is None:
                tokens = self._tokens[pair] = [0, 0]
        key = (target, app, record.status)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        tokens[0] += record.prompt_tokens
        tokens[1] += record.completion_tokens
        if record.cost_usd:
            self._cost[pair] = self._cost.get(pair, 0.0) + record.cost_usd
        latency = self._latency.get(target)
        if latency is None:
            latency = self._latency[target] = Histogram(LATENCY_BUCKETS_S)
            self._wait[target] = Histogram(WAIT_BUCKETS_S)
        latency.observe(record.latency_s)
        self._wait[target].observe(record.wait_s)

    def observe_http(self, endpoint: str, status: int) -> None:
        """Count an answer of the HTTP front door (``endpoint``: a fixed route name)."""
        key = (endpoint, status)
        self._http[key] = self._http.get(key, 0) + 1

    # ------------------------------------------------------------------ exposition

    def exposition(self, status: StatusReply) -> bytes:
        """Everything, in Prometheus text format 0.0.4."""
        out = _Exposition()
        self._write_requests(out)
        _write_status(out, status)
        return out.text().encode()

    def _write_requests(self, out: _Exposition) -> None:
        out.family("quotad_requests_total", "counter", "Requests finished, by outcome.")
        for (target, app, status), count in sorted(self._requests.items()):
            out.sample("quotad_requests_total", count, target=target, app=app, status=status)
        out.family("quotad_tokens_total", "counter", "Tokens of finished requests.")
        for (target, app), (prompt, completion) in sorted(self._tokens.items()):
            out.sample("quotad_tokens_total", prompt, target=target, app=app, type="prompt")
            out.sample("quotad_tokens_total", completion, target=target, app=app, type="completion")
        out.family("quotad_cost_usd_total", "counter", "USD spent by finished requests.")
        for (target, app), cost in sorted(self._cost.items()):
            out.sample("quotad_cost_usd_total", cost, target=target, app=app)
        out.histogram(
            "quotad_request_latency_seconds",
            "Time from a request's arrival to its answer.",
            self._latency,
        )
        out.histogram(
            "quotad_gate_wait_seconds",
            "Time requests waited for gate admission.",
            self._wait,
        )
        out.family("quotad_http_responses_total", "counter", "HTTP front door answers.")
        for (endpoint, code), count in sorted(self._http.items()):
            out.sample("quotad_http_responses_total", count, endpoint=endpoint, code=str(code))


def _write_status(out: _Exposition, status: StatusReply) -> None:
    """The gauges (and the counters others own) of a status snapshot."""
    out.family("quotad_info", "gauge", "The daemon's version (always 1).")
    out.sample("quotad_info", 1, version=status.daemon_version)
    out.gauge("quotad_uptime_seconds", "Seconds since the daemon started.", status.uptime_s)
    out.gauge("quotad_in_flight", "Requests being answered now.", status.in_flight)
    out.gauge(
        "quotad_socket_connections", "Clients connected to the Unix socket.", status.connections
    )

    out.family("quotad_target_enabled", "gauge", "1 when a target takes requests.")
    out.family("quotad_target_in_flight", "gauge", "Calls to a target in flight.")
    out.family("quotad_target_attempts_total", "counter", "Calls made to a target.")
    out.family("quotad_target_failures_total", "counter", "Calls to a target that failed.")
    out.family("quotad_target_breaker_state", "gauge", "1 for a target's breaker state.")
    out.family("quotad_target_health", "gauge", "1 for a target's health.")
    for target in status.targets:
        name = target.name
        out.sample("quotad_target_enabled", int(target.enabled), target=name)
        out.sample("quotad_target_in_flight", target.in_flight, target=name)
        out.sample("quotad_target_attempts_total", target.requests, target=name)
        out.sample("quotad_target_failures_total", target.failures, target=name)
        for state in BREAKER_STATES:
            value = int(target.breaker == state)
            out.sample("quotad_target_breaker_state", value, target=name, state=state)
        for health in HEALTH_STATES:
            value = int(target.health == health)
            out.sample("quotad_target_health", value, target=name, health=health)

    out.family("quotad_gate_used", "gauge", "Admissions in a gate's window now.")
    out.family("quotad_gate_limit", "gauge", "A gate window's limit.")
    out.family("quotad_gate_utilization", "gauge", "used / limit of a gate's window.")
    for gate in status.gates:
        for window in gate.windows:
            labels = {
                "gate": gate.name,
                "scope": gate.scope,
                "unit": window.unit,
                "window_s": _number(window.window_s),
            }
            utilization = window.used / window.limit if window.limit else 0.0
            out.sample("quotad_gate_used", window.used, **labels)
            out.sample("quotad_gate_limit", window.limit, **labels)
            out.sample("quotad_gate_utilization", utilization, **labels)

    out.family("quotad_queue_depth", "gauge", "Requests waiting for gate admission.")
    for priority in PRIORITIES:
        depth: int = getattr(status.queues, priority)
        out.sample("quotad_queue_depth", depth, priority=priority)
    if status.cluster is not None:
        _write_cluster(out, status.cluster, status.budgets)

    cache = status.cache
    out.counter("quotad_cache_hits_total", "Requests answered from the cache.", cache.hits)
    out.counter("quotad_cache_misses_total", "Cache lookups that found nothing.", cache.misses)
    out.gauge("quotad_cache_entries", "Responses in the cache.", cache.entries)
    out.gauge("quotad_cache_bytes", "Bytes the cache holds.", cache.bytes)
    out.counter("quotad_cache_evictions_total", "Entries evicted from the cache.", cache.evictions)
    out.counter("quotad_cache_saved_usd_total", "USD the cache saved.", cache.saved_usd)
    if cache.semantic_mode != "off":  # DESIGN §11
        out.counter(
            "quotad_cache_semantic_hits_total",
            "Requests answered semantically.",
            cache.semantic_hits,
        )
        out.counter(
            "quotad_cache_semantic_would_be_hits_total",
            "Shadow mode: semantic hits found and not served.",
            cache.would_be_hits,
        )
        out.counter(
            "quotad_cache_semantic_agreed_total",
            "Shadow mode: would-be hits whose answer agreed with the provider's.",
            cache.shadow_agreed,
        )
        out.gauge(
            "quotad_cache_semantic_questions",
            "Questions held semantically.",
            cache.semantic_entries,
        )

    out.family("quotad_spend_today_usd", "gauge", "USD an app spent today.")
    for app in status.apps:
        out.sample("quotad_spend_today_usd", app.spend_today_usd, app=app.name)
    out.family(
        "quotad_guardrail_entities_total",
        "counter",
        "Entities the guardrails found in an app's requests and replies, by kind.",
    )
    out.family("quotad_guardrail_blocked_total", "counter", "Requests a guardrail refused.")
    for app in status.apps:
        for kind, count in sorted(app.entities.items()):
            out.sample("quotad_guardrail_entities_total", count, app=app.name, kind=kind)
        if app.blocked:
            out.sample("quotad_guardrail_blocked_total", app.blocked, app=app.name)
    out.family("quotad_budget_limit_usd", "gauge", "A budget's limit.")
    out.family("quotad_budget_spent_usd", "gauge", "USD spent against a budget this period.")
    out.family("quotad_budget_reserved_usd", "gauge", "USD reserved by requests in flight.")
    for budget in status.budgets:
        labels = {"budget": budget.name, "scope": budget.scope, "period": budget.period}
        out.sample("quotad_budget_limit_usd", budget.limit_usd, **labels)
        out.sample("quotad_budget_spent_usd", budget.spent_usd, **labels)
        out.sample("quotad_budget_reserved_usd", budget.reserved_usd, **labels)


CLUSTER_HEALTH: Final = ("connecting", "resyncing", "connected", "degraded")
CLUSTER_MODES: Final = ("fleet", "share", "closed")


def _write_cluster(
    out: _Exposition, cluster: ClusterStatus, budgets: Sequence[BudgetStatus]
) -> None:
    """The fleet (``[cluster]``): Redis health, the gates' mode, hosts seen, fleet windows,
    whose figures the budgets show."""
    out.family("quotad_cluster_health", "gauge", "1 for the state of the link to Redis.")
    for health in CLUSTER_HEALTH:
        out.sample("quotad_cluster_health", int(cluster.health == health), health=health)
    out.family(
        "quotad_cluster_degraded",
        "gauge",
        "1 while the gates admit without Redis (on_unreachable: share or closed).",
    )
    out.sample("quotad_cluster_degraded", int(cluster.mode != "fleet"), mode=cluster.mode)
    out.gauge(
        "quotad_cluster_hosts_seen",
        "Hosts of the fleet with a recent heartbeat.",
        cluster.hosts_seen,
    )
    out.gauge(
        "quotad_cluster_redis_rtt_seconds",
        "The last Redis call's round trip.",
        cluster.rtt_ms / 1000,
    )
    out.counter(
        "quotad_cluster_redis_calls_total", "Calls made to the fleet's Redis.", cluster.redis_calls
    )
    out.counter(
        "quotad_cluster_redis_failures_total", "Redis calls that failed.", cluster.redis_failures
    )
    out.counter(
        "quotad_cluster_borrows_total", "Slices of fleet limits asked for.", cluster.borrows
    )
    out.family("quotad_cluster_held", "gauge", "Units of a fleet window this host holds unused.")
    out.family("quotad_cluster_fleet_used", "gauge", "A fleet window's usage, as last seen.")
    for window in cluster.windows:
        out.sample("quotad_cluster_held", window.held, window=window.name)
        out.sample("quotad_cluster_fleet_used", window.fleet_used, window=window.name)
    out.family(
        "quotad_cluster_budget_fleet",
        "gauge",
        "1 while quotad_budget_* show the fleet's figures (as last heard), 0 this host's own.",
    )
    for budget in budgets:
        labels = {"budget": budget.name, "scope": budget.scope, "period": budget.period}
        out.sample("quotad_cluster_budget_fleet", int(budget.fleet), **labels)


# --------------------------------------------------------------------------- text format


def _number(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``NaN``, shortest float repr)."""
    if isinstance(value, int):
        return str(int(value))  # a bool as 0 or 1
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def _label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and newline."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


class _Exposition:
    """Lines of the text format, grouped by family (HELP and TYPE once, before its samples)."""

    __slots__ = ("_families",)

    def __init__(self) -> None:
        self._families: dict[str, list[str]] = {}

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._families[name] = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        self._families[name].append(_line(name, labels.items(), value))

    def counter(self, name: str, help_text: str, value: float) -> None:
        """A counter family of one sample without labels."""
        self.family(name, "counter", help_text)
        self.sample(name, value)

    def gauge(self, name: str, help_text: str, value: float) -> None:
        """A gauge family of one sample without labels."""
        self.family(name, "gauge", help_text)
        self.sample(name, value)

    def histogram(self, name: str, help_text: str, by_target: dict[str, Histogram]) -> None:
        self.family(name, "histogram", help_text)
        lines = self._families[name]
        for target, histogram in sorted(by_target.items()):
            cumulative = 0
            for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
                cumulative += count
                labels = (("target", target), ("le", _number(bound)))
                lines.append(_line(f"{name}_bucket", labels, cumulative))
            cumulative += histogram.counts[-1]
            lines.append(_line(f"{name}_bucket", (("target", target), ("le", "+Inf")), cumulative))
            lines.append(_line(f"{name}_sum", (("target", target),), histogram.sum))
            lines.append(_line(f"{name}_count", (("target", target),), cumulative))

    def text(self) -> str:
        return "\n".join(line for lines in self._families.values() for line in lines) + "\n"


def _line(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    text = ",".join(f'{key}="{_label_value(label)}"' for key, label in labels)
    return f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"
