"""What ``quotad status`` (text) and ``/metrics`` show of the fleet: Redis health, degraded
mode and why, hosts seen and their load, the fleet windows this host holds; nothing of it for
one host."""

from __future__ import annotations

import time

from quotad.daemon.metrics import Metrics
from quotad.daemon.report import format_status
from quotad.protocol.messages import BudgetStatus, StatusReply
from tests.support.statuses import DEGRADED_FLEET


def test_status_text_shows_the_fleet_and_why_it_is_degraded() -> None:
    text = format_status(StatusReply(cluster=DEGRADED_FLEET))
    assert "fleet   host h1  redis redis://10.0.0.5:6379/0 (quotad)  degraded for" in text
    assert "mode share  hosts seen 2" in text
    assert "Redis unreachable: Connection refused (on_unreachable = share)" in text
    assert "provider:openai|requests|60" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:2] in ("h1", "h2")}
    assert rows["h2"][1:5] == ["0.4s", "ago", "5", "0"]


def test_one_host_status_has_no_fleet() -> None:
    assert "fleet" not in format_status(StatusReply())


def test_metrics_show_redis_health_degraded_mode_and_hosts() -> None:
    text = Metrics().exposition(StatusReply(cluster=DEGRADED_FLEET)).decode()
    assert 'quotad_cluster_health{health="degraded"} 1' in text
    assert 'quotad_cluster_health{health="connected"} 0' in text
    assert 'quotad_cluster_degraded{mode="share"} 1' in text
    assert "quotad_cluster_hosts_seen 2" in text
    assert 'quotad_cluster_held{window="provider:openai|requests|60"} 7' in text
    assert "quotad_cluster" not in Metrics().exposition(StatusReply()).decode()


def test_status_text_says_whose_budget_figures_it_shows_in_a_fleet() -> None:
    budgets = [
        BudgetStatus(name="global daily", limit_usd=10.0, spent_usd=9.0, reserved_usd=0.3,
                     fleet=True, as_of=time.time() - 3.2),
        BudgetStatus(name="global monthly", period="month", limit_usd=90.0, spent_usd=2.0),
    ]  # fmt: skip
    text = format_status(StatusReply(cluster=DEGRADED_FLEET, budgets=budgets))
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("global ")}
    assert "figures" in text
    assert rows["daily"].endswith("fleet 3s ago")
    assert "$0.30 held" in rows["daily"]
    assert rows["monthly"].endswith("this host only")
    one_host = format_status(StatusReply(budgets=budgets[1:]))
    assert "figures" not in one_host
    assert "this host only" not in one_host


def test_metrics_say_whose_budget_figures_in_a_fleet() -> None:
    budgets = [
        BudgetStatus(name="global daily", spent_usd=9.0, fleet=True, as_of=1.0),
        BudgetStatus(name="global monthly", period="month", spent_usd=2.0),
    ]
    text = Metrics().exposition(StatusReply(cluster=DEGRADED_FLEET, budgets=budgets)).decode()
    assert (
        'quotad_cluster_budget_fleet{budget="global daily",scope="global",period="day"} 1' in text
    )
    assert (
        'quotad_cluster_budget_fleet{budget="global monthly",scope="global",period="month"} 0'
        in text
    )
    assert 'quotad_budget_spent_usd{budget="global daily",scope="global",period="day"} 9.0' in text
    assert (
        "quotad_cluster_budget_fleet"
        not in Metrics().exposition(StatusReply(budgets=budgets)).decode()
    )
