"""The daemon's Prometheus metrics: the counters and histograms the broker feeds as each request
finishes (step 7), the front door's response counts, and the text exposition of them together
with the state a :class:`~quotad.protocol.messages.StatusReply` holds (``GET /metrics``).

Feeding is the hot path and costs a few dict increments per request. Everything that is state
rather than a count (gates, queues, breakers, cache, budgets, spend) is read from the status
at scrape time, so it has one home: the component that owns it. The exposition is Prometheus
text format 0.0.4, written here (no client library in the daemon), and streamed: written in
chunks of about :data:`CHUNK_BYTES` with the event loop let run between them, so that a scrape
of full tables neither holds the loop for its whole length nor the whole text in memory.

Requests that never reached a target (an unknown model, a budget refused before routing) are
counted under ``target=""``, and apps past the activity log's bound under ``app="(other)"``, so
that made-up model and app names cannot grow the number of series; the targets and the (target,
app) pairs counted apart are bounded too (:data:`MAX_TARGET_SERIES`,
:data:`MAX_TARGET_APP_SERIES`), past which ``"(other)"`` counts the rest. The targets the config
declares, and their pairs with the apps it declares, are always counted apart (the config bounds
them): clients naming models and apps without end cannot fold them into ``"(other)"``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from typing import Final, TypeVar, get_args

import anyio.lowlevel

from quotad.daemon.activity import OTHER_APPS
from quotad.daemon.declared_names import DeclaredNames
from quotad.protocol.messages import (
    PRIORITIES,
    AppStatus,
    BreakerState,
    BudgetStatus,
    CacheStatus,
    ClusterStatus,
    GateStatus,
    HealthState,
    RequestRecord,
    StatusReply,
    TargetStatus,
)

MAX_TARGET_SERIES: Final = 256
"""Targets counted apart; a request of another target counts under ``target="(other)"``. Each
costs 31 series (its two histograms), so this bounds the histograms at about 8,000 series.
Targets are named by clients (the router makes up to 1,024 by name per config, and a reload
starts that count over), and a Prometheus label of more than a few hundred values is already
a lot; a local daemon's callers use tens."""
MAX_TARGET_APP_SERIES: Final = 2_000
"""(target, app) pairs counted apart: targets and apps are each bounded, their product (256
thousand) is not small; a request of another pair counts under ``app="(other)"``. 2,000 is
OpenTelemetry's default cardinality limit per metric stream, past which it too folds the rest
into one overflow series."""
CHUNK_BYTES: Final = 16 * 1024
"""About how much of the exposition is written between two turns of the event loop: about a
millisecond of work, which each step of a request served meanwhile may wait for (64 KiB made a
chat completion through the front door 7.5 times slower while scrapes ran back to back)."""
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
BREAKER_STATES: Final[tuple[str, ...]] = get_args(BreakerState)
HEALTH_STATES: Final[tuple[str, ...]] = get_args(HealthState)


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

    __slots__ = (
        "_cost",
        "_http",
        "_latency",
        "_requests",
        "_tokens",
        "_wait",
        "declared",
    )

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str], int] = {}
        self._tokens: dict[tuple[str, str], list[int]] = {}
        self._cost: dict[tuple[str, str], float] = {}
        self._latency: dict[str, Histogram] = {}
        self._wait: dict[str, Histogram] = {}
        self._http: dict[tuple[str, int], int] = {}
        self.declared = DeclaredNames()
        """The config's names: its targets, and their pairs with its apps, are counted apart
        past the bounds too."""

    # ------------------------------------------------------------------ feeding (hot path)

    def observe_request(self, record: RequestRecord, *, resolved: bool, app: str) -> None:
        """Count a finished request; ``resolved``: it reached a target (see module docstring);
        ``app``: the name its app is counted under (apps are named by clients: past a bound,
        several share one, see :mod:`quotad.daemon.activity`)."""
        target = record.target if resolved else ""
        pair = (target, app)
        tokens = self._tokens.get(pair)
        if tokens is None:
            declared = target in self.declared.targets
            full = len(self._latency) >= MAX_TARGET_SERIES
            if full and not declared and target not in self._latency:
                target = OTHER
            full = len(self._tokens) >= MAX_TARGET_APP_SERIES
            if full and not (declared and app in self.declared.apps):
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
        """Everything, in Prometheus text format 0.0.4, at once (what :meth:`chunks` yields,
        joined)."""
        return "".join(self._pieces(status)).encode()

    async def chunks(self, status: StatusReply) -> AsyncGenerator[bytes, None]:
        """The exposition in chunks of about :data:`CHUNK_BYTES`, the event loop let run
        between them (``GET /metrics`` streams it: a scrape of large tables neither holds the
        loop nor the whole text)."""
        for chunk in _chunked(self._pieces(status)):
            yield chunk
            await anyio.lowlevel.checkpoint()

    def _pieces(self, status: StatusReply) -> Iterator[str]:
        """The exposition as pieces of whole lines: each family's HELP and TYPE, then its
        samples (a histogram's series in one piece, so that it is never read half-updated)."""
        yield from self._request_pieces()
        yield from _status_pieces(status)

    def _request_pieces(self) -> Iterator[str]:
        """The counts of finished requests (each table sorted as its family begins: a request
        finishing meanwhile is counted by the next scrape, or by a family still to come)."""
        yield _family("quotad_requests_total", "counter", "Requests finished, by outcome.")
        for (target, app, status), count in sorted(self._requests.items()):
            yield _line("quotad_requests_total", count, target=target, app=app, status=status)
        yield _family("quotad_tokens_total", "counter", "Tokens of finished requests.")
        for (target, app), (prompt, completion) in sorted(self._tokens.items()):
            yield _line("quotad_tokens_total", prompt, target=target, app=app, type="prompt")
            yield _line(
                "quotad_tokens_total", completion, target=target, app=app, type="completion"
            )
        yield _family("quotad_cost_usd_total", "counter", "USD spent by finished requests.")
        for (target, app), cost in sorted(self._cost.items()):
            yield _line("quotad_cost_usd_total", cost, target=target, app=app)
        yield from _histogram_pieces(
            "quotad_request_latency_seconds",
            "Time from a request's arrival to its answer.",
            self._latency,
        )
        yield from _histogram_pieces(
            "quotad_gate_wait_seconds", "Time requests waited for gate admission.", self._wait
        )
        yield _family("quotad_http_responses_total", "counter", "HTTP front door answers.")
        for (endpoint, code), count in sorted(self._http.items()):
            yield _line("quotad_http_responses_total", count, endpoint=endpoint, code=str(code))


def _status_pieces(status: StatusReply) -> Iterator[str]:
    """The gauges (and the counters others own) of a status snapshot."""
    yield _family("quotad_info", "gauge", "The daemon's version (always 1).")
    yield _line("quotad_info", 1, version=status.daemon_version)
    yield _single(
        "quotad_uptime_seconds", "gauge", "Seconds since the daemon started.", status.uptime_s
    )
    yield _single("quotad_in_flight", "gauge", "Requests being answered now.", status.in_flight)
    yield _single(
        "quotad_socket_connections",
        "gauge",
        "Clients connected to the Unix socket.",
        status.connections,
    )
    yield from _target_pieces(status.targets)
    yield from _gate_pieces(status.gates)

    yield _family("quotad_queue_depth", "gauge", "Requests waiting for gate admission.")
    for priority in PRIORITIES:
        depth: int = getattr(status.queues, priority)
        yield _line("quotad_queue_depth", depth, priority=priority)
    if status.cluster is not None:
        yield from _cluster_pieces(status.cluster, status.budgets)
    yield from _cache_pieces(status.cache)
    yield from _app_pieces(status.apps)
    yield from _budget_pieces(status.budgets)


def _target_pieces(targets: Sequence[TargetStatus]) -> Iterator[str]:
    """Each target's state, from the router's targets (bounded by it, not here)."""
    yield from _per_row(
        [(target, {"target": target.name}) for target in targets],
        (
            ("quotad_target_enabled", "gauge", "1 when a target takes requests.",
             lambda target: int(target.enabled)),
            ("quotad_target_in_flight", "gauge", "Calls to a target in flight.",
             lambda target: target.in_flight),
            ("quotad_target_attempts_total", "counter", "Calls made to a target.",
             lambda target: target.requests),
            ("quotad_target_failures_total", "counter", "Calls to a target that failed.",
             lambda target: target.failures),
        ),
    )  # fmt: skip
    yield _family("quotad_target_breaker_state", "gauge", "1 for a target's breaker state.")
    for target in targets:
        for state in BREAKER_STATES:
            value = int(target.breaker == state)
            yield _line("quotad_target_breaker_state", value, target=target.name, state=state)
    yield _family("quotad_target_health", "gauge", "1 for a target's health.")
    for target in targets:
        for health in HEALTH_STATES:
            value = int(target.health == health)
            yield _line("quotad_target_health", value, target=target.name, health=health)


def _gate_pieces(gates: Sequence[GateStatus]) -> Iterator[str]:
    windows = [
        (window, {
            "gate": gate.name,
            "scope": gate.scope,
            "unit": window.unit,
            "window_s": _number(window.window_s),
        })
        for gate in gates
        for window in gate.windows
    ]  # fmt: skip
    yield from _per_row(
        windows,
        (
            ("quotad_gate_used", "gauge", "Admissions in a gate's window now.",
             lambda window: window.used),
            ("quotad_gate_limit", "gauge", "A gate window's limit.",
             lambda window: window.limit),
            ("quotad_gate_utilization", "gauge", "used / limit of a gate's window.",
             lambda window: window.used / window.limit if window.limit else 0.0),
        ),
    )  # fmt: skip


def _cache_pieces(cache: CacheStatus) -> Iterator[str]:
    singles: list[tuple[str, str, str, float]] = [
        ("quotad_cache_hits_total", "counter", "Requests answered from the cache.", cache.hits),
        ("quotad_cache_misses_total", "counter", "Cache lookups that found nothing.",
         cache.misses),
        ("quotad_cache_entries", "gauge", "Responses in the cache.", cache.entries),
        ("quotad_cache_bytes", "gauge", "Bytes the cache holds.", cache.bytes),
        ("quotad_cache_evictions_total", "counter", "Entries evicted from the cache.",
         cache.evictions),
        ("quotad_cache_saved_usd_total", "counter", "USD the cache saved.", cache.saved_usd),
    ]  # fmt: skip
    if cache.semantic_mode != "off":  # DESIGN §11
        singles += [
            ("quotad_cache_semantic_hits_total", "counter", "Requests answered semantically.",
             cache.semantic_hits),
            ("quotad_cache_semantic_would_be_hits_total", "counter",
             "Shadow mode: semantic hits found and not served.", cache.would_be_hits),
            ("quotad_cache_semantic_agreed_total", "counter",
             "Shadow mode: would-be hits whose answer agreed with the provider's.",
             cache.shadow_agreed),
            ("quotad_cache_semantic_questions", "gauge", "Questions held semantically.",
             cache.semantic_entries),
        ]  # fmt: skip
    for name, kind, help_text, value in singles:
        yield _single(name, kind, help_text, value)


def _app_pieces(apps: Sequence[AppStatus]) -> Iterator[str]:
    """Each app's spend and what the guardrails found (apps bounded by the activity log)."""
    yield _family("quotad_spend_today_usd", "gauge", "USD an app spent today.")
    for app in apps:
        yield _line("quotad_spend_today_usd", app.spend_today_usd, app=app.name)
    yield _family(
        "quotad_guardrail_entities_total",
        "counter",
        "Entities the guardrails found in an app's requests and replies, by kind.",
    )
    for app in apps:
        for kind, count in sorted(app.entities.items()):
            yield _line("quotad_guardrail_entities_total", count, app=app.name, kind=kind)
    yield _family("quotad_guardrail_blocked_total", "counter", "Requests a guardrail refused.")
    for app in apps:
        if app.blocked:
            yield _line("quotad_guardrail_blocked_total", app.blocked, app=app.name)


def _budget_rows(budgets: Sequence[BudgetStatus]) -> list[tuple[BudgetStatus, dict[str, str]]]:
    """Each budget with its labels (the budget families and the fleet's flag of them)."""
    return [
        (budget, {"budget": budget.name, "scope": budget.scope, "period": budget.period})
        for budget in budgets
    ]


def _budget_pieces(budgets: Sequence[BudgetStatus]) -> Iterator[str]:
    yield from _per_row(
        _budget_rows(budgets),
        (
            ("quotad_budget_limit_usd", "gauge", "A budget's limit.",
             lambda budget: budget.limit_usd),
            ("quotad_budget_spent_usd", "gauge", "USD spent against a budget this period.",
             lambda budget: budget.spent_usd),
            ("quotad_budget_reserved_usd", "gauge", "USD reserved by requests in flight.",
             lambda budget: budget.reserved_usd),
        ),
    )  # fmt: skip


CLUSTER_HEALTH: Final = ("connecting", "resyncing", "connected", "degraded")
CLUSTER_MODES: Final = ("fleet", "share", "closed")


def _cluster_pieces(cluster: ClusterStatus, budgets: Sequence[BudgetStatus]) -> Iterator[str]:
    """The fleet (``[cluster]``): Redis health, the gates' mode, hosts seen, fleet windows,
    whose figures the budgets show."""
    yield _family("quotad_cluster_health", "gauge", "1 for the state of the link to Redis.")
    for health in CLUSTER_HEALTH:
        yield _line("quotad_cluster_health", int(cluster.health == health), health=health)
    yield _family(
        "quotad_cluster_degraded",
        "gauge",
        "1 while the gates admit without Redis (on_unreachable: share or closed).",
    )
    yield _line("quotad_cluster_degraded", int(cluster.mode != "fleet"), mode=cluster.mode)
    singles: list[tuple[str, str, str, float]] = [
        ("quotad_cluster_hosts_seen", "gauge", "Hosts of the fleet with a recent heartbeat.",
         cluster.hosts_seen),
        ("quotad_cluster_redis_rtt_seconds", "gauge", "The last Redis call's round trip.",
         cluster.rtt_ms / 1000),
        ("quotad_cluster_redis_calls_total", "counter", "Calls made to the fleet's Redis.",
         cluster.redis_calls),
        ("quotad_cluster_redis_failures_total", "counter", "Redis calls that failed.",
         cluster.redis_failures),
        ("quotad_cluster_borrows_total", "counter", "Slices of fleet limits asked for.",
         cluster.borrows),
    ]  # fmt: skip
    for name, kind, help_text, value in singles:
        yield _single(name, kind, help_text, value)
    yield from _per_row(
        [(window, {"window": window.name}) for window in cluster.windows],
        (
            ("quotad_cluster_held", "gauge", "Units of a fleet window this host holds unused.",
             lambda window: window.held),
            ("quotad_cluster_fleet_used", "gauge", "A fleet window's usage, as last seen.",
             lambda window: window.fleet_used),
        ),
    )  # fmt: skip
    yield from _per_row(
        _budget_rows(budgets),
        (
            ("quotad_cluster_budget_fleet", "gauge",
             "1 while quotad_budget_* show the fleet's figures (as last heard), 0 this host's "
             "own.", lambda budget: int(budget.fleet)),
        ),
    )  # fmt: skip


# --------------------------------------------------------------------------- text format


def _chunked(pieces: Iterable[str]) -> Iterator[bytes]:
    """``pieces`` joined into chunks of at least :data:`CHUNK_BYTES` (but the last)."""
    buffer: list[str] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield "".join(buffer).encode()
            buffer.clear()
            size = 0
    if buffer:
        yield "".join(buffer).encode()


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


def _family(name: str, kind: str, help_text: str) -> str:
    """A family's HELP and TYPE lines (once, before its samples)."""
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def _single(name: str, kind: str, help_text: str, value: float) -> str:
    """A family of one sample without labels."""
    return _family(name, kind, help_text) + _labelled_line(name, (), value)


def _line(name: str, value: float, **labels: str) -> str:
    return _labelled_line(name, labels.items(), value)


_Row = TypeVar("_Row")


def _per_row(
    rows: Sequence[tuple[_Row, dict[str, str]]],
    families: Iterable[tuple[str, str, str, Callable[[_Row], float]]],
) -> Iterator[str]:
    """Families of a sample per row: for each ``(name, kind, help, value)``, its HELP and TYPE,
    then ``value(row)`` of each row under the row's labels."""
    for name, kind, help_text, value in families:
        yield _family(name, kind, help_text)
        for row, labels in rows:
            yield _line(name, value(row), **labels)


def _histogram_pieces(name: str, help_text: str, by_target: dict[str, Histogram]) -> Iterator[str]:
    """A histogram family: one piece per target (its cumulative buckets, sum and count)."""
    yield _family(name, "histogram", help_text)
    bucket = f"{name}_bucket"
    for target, histogram in sorted(by_target.items()):
        lines = []
        cumulative = 0
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            cumulative += count
            lines.append(
                _labelled_line(bucket, (("target", target), ("le", _number(bound))), cumulative)
            )
        cumulative += histogram.counts[-1]
        lines.append(_labelled_line(bucket, (("target", target), ("le", "+Inf")), cumulative))
        lines.append(_labelled_line(f"{name}_sum", (("target", target),), histogram.sum))
        lines.append(_labelled_line(f"{name}_count", (("target", target),), cumulative))
        yield "".join(lines)


def _labelled_line(name: str, labels: Iterable[tuple[str, str]], value: float) -> str:
    text = ",".join(f'{key}="{_label_value(label)}"' for key, label in labels)
    return f"{name}{{{text}}} {_number(value)}\n" if text else f"{name} {_number(value)}\n"
