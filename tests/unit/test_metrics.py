"""Prometheus metrics: what the broker feeds, and the exposition as prometheus_client's own
text parser reads it (counters, cumulative histograms, escaped labels, status gauges)."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from quotad.daemon.activity import MAX_TRACKED_APPS, OTHER_APPS
from quotad.daemon.declared_names import DeclaredNames
from quotad.daemon.live_tail import LiveTail
from quotad.daemon.metrics import (
    LATENCY_BUCKETS_S,
    MAX_TARGET_APP_SERIES,
    MAX_TARGET_SERIES,
    OTHER,
    Metrics,
)
from quotad.protocol.messages import (
    AppStatus,
    BudgetStatus,
    CacheStatus,
    GateStatus,
    QueueStatus,
    RequestRecord,
    StatusReply,
    TargetStatus,
    WindowStatus,
)
from tests.support.metrics_tables import EVERY_OUTCOME, LONGEST_NAME, fill_to_bounds
from tests.support.statuses import DEGRADED_FLEET
from tests.support.store import ledger_row


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def finished(target: str, app: str, status: str, latency_s: float) -> RequestRecord:
    """A request that reached ``target``: 10 + 2 tokens for $0.25, after 0.5 s at the gates."""
    return RequestRecord(
        target=target,
        app=app,
        status=status,
        latency_s=latency_s,
        wait_s=0.5,
        prompt_tokens=10,
        completion_tokens=2,
        cost_usd=0.25,
    )


def test_requests_tokens_cost_and_latency_histogram() -> None:
    metrics = Metrics()
    for latency in (0.004, 0.02, 0.02, 3.0):
        metrics.observe_request(
            finished("sim/m", "agent", "ok", latency), resolved=True, app="agent"
        )
    unresolved = RequestRecord(target="typo-model", app="agent", status="unknown_model")
    metrics.observe_request(unresolved, resolved=False, app=unresolved.app)
    metrics.observe_http("chat_completions", 200)
    found = samples(metrics.exposition(StatusReply()).decode())
    ok = (("app", "agent"), ("status", "ok"), ("target", "sim/m"))
    assert found[("quotad_requests_total", ok)] == 4
    unknown = (("app", "agent"), ("status", "unknown_model"), ("target", ""))
    assert found[("quotad_requests_total", unknown)] == 1
    assert not any("typo-model" in str(key) for key in found)
    prompt = (("app", "agent"), ("target", "sim/m"), ("type", "prompt"))
    assert found[("quotad_tokens_total", prompt)] == 40
    assert found[("quotad_cost_usd_total", (("app", "agent"), ("target", "sim/m")))] == 1.0
    bucket = "quotad_request_latency_seconds_bucket"
    assert found[(bucket, (("le", "0.005"), ("target", "sim/m")))] == 1
    assert found[(bucket, (("le", "0.025"), ("target", "sim/m")))] == 3
    assert found[(bucket, (("le", "2.5"), ("target", "sim/m")))] == 3
    assert found[(bucket, (("le", "+Inf"), ("target", "sim/m")))] == 4
    assert found[("quotad_request_latency_seconds_count", (("target", "sim/m"),))] == 4
    assert abs(found[("quotad_request_latency_seconds_sum", (("target", "sim/m"),))] - 3.044) < 1e-9
    assert found[("quotad_gate_wait_seconds_count", (("target", "sim/m"),))] == 4
    http = (("code", "200"), ("endpoint", "chat_completions"))
    assert found[("quotad_http_responses_total", http)] == 1
    buckets = [key for key in found if key[0] == bucket and ("target", "sim/m") in key[1]]
    assert len(buckets) == len(LATENCY_BUCKETS_S) + 1


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    app = 'we"ird\\app\nname'
    metrics.observe_request(RequestRecord(target="t", app=app, status="ok"), resolved=True, app=app)
    found = samples(metrics.exposition(StatusReply()).decode())
    assert found[("quotad_requests_total", (("app", app), ("status", "ok"), ("target", "t")))] == 1


STATUS = StatusReply(
    daemon_version="9.9",
    uptime_s=12.5,
    connections=2,
    in_flight=3,
    targets=[
        TargetStatus(name="sim/m", breaker="half_open", health="healthy", in_flight=2, failures=5),
        TargetStatus(name="sim/big", enabled=False, breaker="open", requests=9),
    ],
    gates=[
        GateStatus(
            name="sim",
            scope="provider",
            windows=[
                WindowStatus(unit="requests", limit=60, window_s=60.0, used=45),
                WindowStatus(unit="tokens", limit=0, window_s=0.5, used=7),
            ],
        )
    ],
    queues=QueueStatus(low=4, critical=1),
    cache=CacheStatus(hits=7, misses=3, entries=10, bytes=4096, evictions=1, saved_usd=0.5),
    budgets=[
        BudgetStatus(name="daily", period="day", limit_usd=20.0, spent_usd=4.5),
        BudgetStatus(name="notebook", scope="app:notebook", period="month", reserved_usd=0.25),
    ],
    apps=[
        AppStatus(name="indexer", spend_today_usd=1.25),
        AppStatus(name="notebook", blocked=2, entities={"email": 3, "secret": 2}),
    ],
)
"""A status with something in every part but the fleet's, and the semantic cache off."""
SHADOW_CACHE = msgspec.structs.replace(
    STATUS.cache, semantic_mode="shadow", semantic_entries=40, would_be_hits=5, shadow_agreed=4
)
"""Its cache with the semantic cache in shadow mode."""


def test_status_gauges_gates_queues_breakers_cache_budgets_spend() -> None:
    found = samples(Metrics().exposition(STATUS).decode())
    assert found[("quotad_info", (("version", "9.9"),))] == 1
    assert found[("quotad_in_flight", ())] == 3
    states = {
        state: found[("quotad_target_breaker_state", (("state", state), ("target", "sim/m")))]
        for state in ("closed", "open", "half_open")
    }
    assert states == {"closed": 0, "open": 0, "half_open": 1}
    assert found[("quotad_target_failures_total", (("target", "sim/m"),))] == 5
    gate = (("gate", "sim"), ("scope", "provider"), ("unit", "requests"), ("window_s", "60.0"))
    assert found[("quotad_gate_utilization", gate)] == 0.75
    assert found[("quotad_gate_limit", gate)] == 60
    assert found[("quotad_queue_depth", (("priority", "low"),))] == 4
    assert found[("quotad_queue_depth", (("priority", "normal"),))] == 0
    assert found[("quotad_cache_hits_total", ())] == 7
    assert found[("quotad_cache_misses_total", ())] == 3
    budget = (("budget", "daily"), ("period", "day"), ("scope", "global"))
    assert found[("quotad_budget_spent_usd", budget)] == 4.5
    assert found[("quotad_spend_today_usd", (("app", "indexer"),))] == 1.25
    assert ("quotad_cache_semantic_hits_total", ()) not in found  # semantic cache off
    notebook = (("app", "notebook"),)
    assert found[("quotad_guardrail_entities_total", (*notebook, ("kind", "email")))] == 3
    assert found[("quotad_guardrail_entities_total", (*notebook, ("kind", "secret")))] == 2
    assert found[("quotad_guardrail_blocked_total", notebook)] == 2
    assert ("quotad_guardrail_blocked_total", (("app", "indexer"),)) not in found


def test_the_semantic_cache_has_its_own_counters() -> None:
    found = samples(Metrics().exposition(StatusReply(cache=SHADOW_CACHE)).decode())
    assert found[("quotad_cache_hits_total", ())] == 7
    assert found[("quotad_cache_semantic_hits_total", ())] == 0
    assert found[("quotad_cache_semantic_would_be_hits_total", ())] == 5
    assert found[("quotad_cache_semantic_agreed_total", ())] == 4
    assert found[("quotad_cache_semantic_questions", ())] == 40


def test_the_whole_exposition_of_a_rich_status_is_unchanged() -> None:
    """Every family, in order, byte for byte: a refactoring of the writer must not move a line.
    (The expected text is what the writer wrote before it was last refactored.)"""
    metrics = Metrics()
    for target, app, outcome, latency in (
        ("sim/m", "agent", "ok", 0.02),
        ("sim/m", "agent", "ok", 3.0),
        ("sim/big", "notebook", "rate_limited", 0.5),
    ):
        metrics.observe_request(finished(target, app, outcome, latency), resolved=True, app=app)
    unresolved = RequestRecord(target="x", app="agent", status="unknown_model")
    metrics.observe_request(unresolved, resolved=False, app=unresolved.app)
    metrics.observe_http("chat_completions", 200)
    metrics.observe_http("chat_completions", 429)
    status = msgspec.structs.replace(
        STATUS,
        cluster=msgspec.structs.replace(
            DEGRADED_FLEET, redis_calls=40, redis_failures=2, borrows=11
        ),
        cache=SHADOW_CACHE,
    )
    expected = (Path(__file__).parent / "metrics_exposition.prom").read_text()
    assert metrics.exposition(status).decode() == expected


def test_apps_named_without_end_share_one_label_past_the_activity_bound() -> None:
    """Apps are named by clients. The activity log kept at most MAX_TRACKED_APPS of them
    apart, but the metrics labelled every request by its own app: a client naming a new app
    each request grew /metrics (and the daemon) by three series a request, without end. Past
    the bound they are counted under ``app="(other)"``, as ``quotad status`` shows them."""
    tail = LiveTail()
    for number in range(MAX_TRACKED_APPS + 500):
        tail.finished(ledger_row(number, app=f"app-{number}"))
    found = samples(tail.metrics.exposition(StatusReply()).decode())
    apps = {dict(labels)["app"] for name, labels in found if name == "quotad_requests_total"}
    assert len(apps) == MAX_TRACKED_APPS + 1
    assert OTHER_APPS in apps
    assert "app-0" in apps
    assert f"app-{MAX_TRACKED_APPS + 7}" not in apps
    other = (("app", OTHER_APPS), ("status", "ok"), ("target", "openai/gpt-4o-mini"))
    assert found[("quotad_requests_total", other)] == 500
    assert tail.activity.names() == apps


def test_targets_and_target_app_pairs_counted_apart_are_bounded() -> None:
    """Targets are bounded per config (a reload starts the router's count over) and apps by
    the activity log, but metrics kept every target ever seen and every (target, app) pair:
    up to a million pairs of counters, and a /metrics of hundreds of megabytes (found by the
    growth audit). Past the bounds, "(other)" counts the rest and the totals stay whole."""
    metrics = Metrics()
    for number in range(MAX_TARGET_SERIES + 100):
        metrics.observe_request(
            finished(f"p/m-{number}", "agent", "ok", 0.1), resolved=True, app="agent"
        )
    for number in range(MAX_TARGET_APP_SERIES):
        metrics.observe_request(
            finished("p/m-1", f"app-{number}", "ok", 0.1), resolved=True, app=f"app-{number}"
        )
    text = metrics.exposition(StatusReply()).decode()
    counted = {  # (target, app): requests, read off the text (the parser takes seconds here)
        (match[1], match[2]): float(match[3])
        for match in re.finditer(
            r'^quotad_requests_total\{target="([^"]*)",app="([^"]*)",status="ok"\} (\S+)$',
            text,
            re.MULTILINE,
        )
    }
    targets = {target for target, _ in counted}
    assert len(targets) == MAX_TARGET_SERIES + 1
    assert OTHER in targets
    assert len(counted) <= MAX_TARGET_APP_SERIES + MAX_TARGET_SERIES + 1
    assert sum(counted.values()) == MAX_TARGET_SERIES + 100 + MAX_TARGET_APP_SERIES
    assert counted[(OTHER, "agent")] == 100


@pytest.mark.parametrize(
    ("name_chars", "outcomes", "most_bytes"),
    [(0, ("ok",), 1_500_000), (LONGEST_NAME, EVERY_OUTCOME, 24_000_000)],
    ids=["short_names", "longest_names_every_outcome"],
)
def test_the_exposition_of_full_tables_is_bounded(
    name_chars: int, outcomes: tuple[str, ...], most_bytes: int
) -> None:
    """At bounds of 4,096 targets and 10,000 pairs, the tables' exposition was 12 MB with
    short names, and 150 MB with names of the longest length the wire admits and requests of
    every outcome (every scrape, every 15 s). Bounded now at 1.2 MB and 22 MB (README)."""
    metrics = Metrics()
    fill_to_bounds(metrics, name_chars=name_chars, outcomes=outcomes)
    assert len(metrics._latency) == MAX_TARGET_SERIES + 1
    assert len(metrics.exposition(StatusReply())) <= most_bytes


def test_declared_targets_and_apps_are_counted_apart_whatever_clients_named_first() -> None:
    """The bounds were first come, first served: a client naming 256 models and 1,000 apps
    before the config's own were used folded those into "(other)", in /metrics and in
    ``quotad status``, where the operator looks for them. The config's are kept apart."""
    tail = LiveTail()
    tail.declare(DeclaredNames.of(["indexer"], ["fast"], ["openai/gpt-4o-mini"]))
    for number in range(MAX_TARGET_SERIES):
        row = ledger_row(number, app=f"made-up-{number}", target=f"p/m-{number}")
        tail.finished(row)
    for number in range(MAX_TRACKED_APPS + MAX_TARGET_APP_SERIES):
        tail.finished(ledger_row(number, app=f"app-{number}", target="p/m-1"))
    tail.finished(ledger_row(1, app="indexer", target="openai/gpt-4o-mini"))
    tail.finished(ledger_row(2, app="stranger", target="p/not-declared"))
    found = samples(tail.metrics.exposition(StatusReply()).decode())
    requests = {
        (dict(labels)["target"], dict(labels)["app"]): value
        for (name, labels), value in found.items()
        if name == "quotad_requests_total"
    }
    assert requests[("openai/gpt-4o-mini", "indexer")] == 1
    assert requests[(OTHER, OTHER_APPS)] == 1  # neither is declared: past both bounds
    assert tail.activity.tracked_name("indexer") == "indexer"
    assert tail.activity.tracked_name("stranger") == OTHER_APPS
