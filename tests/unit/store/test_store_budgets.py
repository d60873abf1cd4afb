"""Budgets: local calendar periods, reservations that hold under any interleaving, alerts, and
the cases that must never block (zero-cost requests, no budget configured)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import parse_config
from quotad.daemon.errors import RequestError
from quotad.daemon.store.budgets import LIMIT_SLACK_USD, BudgetHold, Budgets, Calendar

NEW_YORK = ZoneInfo("America/New_York")


def at(text: str, zone: ZoneInfo = NEW_YORK) -> float:
    """The Unix time of a local time in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def budgets(**raw: object) -> Budgets:
    config = parse_config({"daemon": {"timezone": "America/New_York"}, **raw})
    return Budgets(config, Calendar(config.daemon.timezone))


# --------------------------------------------------------------------------- calendar


def test_days_and_months_are_local_even_across_a_dst_change() -> None:
    calendar = Calendar("America/New_York")
    start, end, label = calendar.day_bounds(at("2026-11-01 12:00"))  # clocks go back that night
    assert label == "2026-11-01"
    assert start == at("2026-11-01 00:00")
    assert end - start == 25 * 3600
    start, end, label = calendar.month_bounds(at("2026-11-15 08:00"))
    assert (label, start, end) == ("2026-11", at("2026-11-01 00:00"), at("2026-12-01 00:00"))
    assert calendar.day(at("2026-11-30 23:59:59")) == "2026-11-30"
    assert calendar.day(at("2026-12-01 00:00")) == "2026-12-01"
    assert calendar.days_back(at("2026-11-03 10:00"), 6) == at("2026-10-28 00:00")


def test_the_time_zone_decides_the_day() -> None:
    moment = at("2026-06-10 22:30", ZoneInfo("UTC"))
    assert Calendar("UTC").day(moment) == "2026-06-10"
    assert Calendar("Asia/Tokyo").day(moment) == "2026-06-11"


# --------------------------------------------------------------------------- never blocking


def test_no_budget_configured_never_blocks() -> None:
    plain = budgets()
    assert not plain.configured
    assert plain.reserve("anyone", 1e9, at("2026-11-02 10:00")) is None
    assert plain.status(at("2026-11-02 10:00")) == []


def test_zero_cost_requests_are_never_blocked_even_past_the_limit() -> None:
    tight = budgets(budgets={"daily_usd": 0.0})
    now = at("2026-11-02 10:00")
    assert tight.reserve("app", 0.0, now) is None
    with pytest.raises(RequestError) as refused:
        tight.reserve("app", 1e-9, now)
    assert refused.value.code == "budget_exceeded"


# --------------------------------------------------------------------------- reservations


def test_refusal_names_the_budget_what_was_spent_and_reserved_and_the_limit() -> None:
    limits = budgets(budgets={"daily_usd": 10.0}, apps={"indexer": {"daily_usd": 1.0}})
    now = at("2026-11-02 10:00")
    held = limits.reserve("indexer", 0.6, now)
    limits.settle(limits.reserve("indexer", 0.3, now), "indexer", 0.25, now)
    with pytest.raises(RequestError) as refused:
        limits.reserve("indexer", 0.2, now)
    error = refused.value
    assert error.code == "budget_exceeded"
    assert error.retry_after_s is None
    assert "'app indexer daily'" in error.message
    assert error.details["spent_usd"] == pytest.approx(0.25)
    assert error.details["reserved_usd"] == pytest.approx(0.6)
    assert error.details["limit_usd"] == 1.0
    assert error.details["request_max_usd"] == 0.2
    # another app only has the global budget, which still has room
    assert limits.reserve("web", 5.0, now) is not None
    limits.settle(held, "indexer", 0.6, now)


def test_app_spend_counts_against_the_global_budget_too() -> None:
    limits = budgets(budgets={"daily_usd": 1.0}, apps={"indexer": {"daily_usd": 5.0}})
    now = at("2026-11-02 10:00")
    limits.settle(limits.reserve("indexer", 0.9, now), "indexer", 0.9, now)
    with pytest.raises(RequestError) as refused:
        limits.reserve("web", 0.2, now)
    assert refused.value.details["budget"] == "global daily"


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "settle"]),
            st.sampled_from(["a", "b", "c"]),
            st.floats(min_value=0.0, max_value=0.4),
            st.floats(min_value=0.0, max_value=1.0),
        ),
        max_size=60,
    )
)
def test_no_interleaving_of_reservations_and_settlements_exceeds_a_budget(
    steps: list[tuple[str, str, float, float]],
) -> None:
    limits = budgets(budgets={"daily_usd": 1.0, "monthly_usd": 1.5}, apps={"a": {"daily_usd": 0.5}})
    now = at("2026-11-02 10:00")
    held: list[tuple[str, BudgetHold]] = []
    for action, app, amount, fraction in steps:
        if action == "reserve":
            try:
                reservation = limits.reserve(app, amount, now)
            except RequestError:
                continue
            if reservation is not None:
                held.append((app, reservation))
        elif held:
            owner, reservation = held.pop(int(fraction * (len(held) - 1)))
            alerts = limits.settle(reservation, owner, reservation.amount_usd * fraction, now)
            assert all(alert.kind == "budget_alert" for alert in alerts)  # never an overrun
        for status in limits.status(now):
            assert status.spent_usd + status.reserved_usd <= status.limit_usd + 1e-9
    for owner, reservation in held:
        limits.settle(reservation, owner, reservation.amount_usd, now)
    for status in limits.status(now):
        assert status.reserved_usd == pytest.approx(0.0, abs=LIMIT_SLACK_USD)
        assert status.spent_usd <= status.limit_usd + 1e-9


def test_spend_starts_afresh_at_local_midnight_and_month_start() -> None:
    clock = VirtualClock(start=0.0, epoch=at("2026-11-30 23:00"))
    limits = budgets(budgets={"daily_usd": 1.0, "monthly_usd": 100.0})
    limits.settle(limits.reserve("app", 0.9, clock.time()), "app", 0.9, clock.time())
    with pytest.raises(RequestError):
        limits.reserve("app", 0.2, clock.time())
    clock.advance(2 * 3600)  # 01:00 on December 1st, local
    assert limits.reserve("app", 0.2, clock.time()) is not None
    spent = {status.name: status.spent_usd for status in limits.status(clock.time())}
    assert spent == {"global daily": 0.0, "global monthly": 0.0}


def test_a_reservation_made_before_midnight_settles_after_it() -> None:
    clock = VirtualClock(start=0.0, epoch=at("2026-11-02 23:59:59"))
    limits = budgets(budgets={"daily_usd": 1.0})
    held = limits.reserve("app", 0.5, clock.time())
    clock.advance(2.0)
    limits.settle(held, "app", 0.4, clock.time())
    (status,) = limits.status(clock.time())
    assert (status.spent_usd, status.reserved_usd) == (0.4, 0.0)


def test_a_clock_set_back_across_midnight_does_not_start_the_day_again() -> None:
    """The system clock stepped back over midnight (NTP, a resumed VM): the budget went back
    to the day before, started afresh at $0, and let that day spend its whole limit again
    ($1.80 of a $1 budget in a few seconds here). With no day before left behind (the daemon
    started after midnight), what is spent then counts in the later day, which has not ended."""
    after_midnight = at("2026-11-03 00:00:05")
    limits = budgets(budgets={"daily_usd": 1.0, "monthly_usd": 100.0})
    limits.settle(limits.reserve("app", 0.9, after_midnight), "app", 0.9, after_midnight)
    stepped_back = at("2026-11-02 23:59:58")
    with pytest.raises(RequestError):
        limits.reserve("app", 0.9, stepped_back)
    spent = {status.name: status.spent_usd for status in limits.status(stepped_back)}
    assert spent == {"global daily": 0.9, "global monthly": 0.9}
    next_day = at("2026-11-04 00:00:01")
    assert limits.reserve("app", 0.9, next_day) is not None  # the next day starts afresh


def test_a_clock_set_forward_then_put_right_counts_both_days_in_the_first() -> None:
    """The clock jumped a day ahead by mistake, then was put right: the budget stayed in the
    later day and forgot the $0.80 spent today, so today could spend $1.70 of a $1 budget.
    Now it goes back to today with what it had spent, and what was spent meanwhile (in a day
    that has not begun) counts too."""
    today = at("2026-11-02 10:00")
    limits = budgets(budgets={"daily_usd": 1.0, "alert_at": 0.5})
    alerts = limits.settle(limits.reserve("app", 0.8, today), "app", 0.8, today)
    assert [alert.budget.name for alert in alerts] == ["global daily"]
    ahead = at("2026-11-03 10:00")
    assert limits.settle(limits.reserve("app", 0.5, ahead), "app", 0.5, ahead) != []
    put_right = at("2026-11-02 10:05")
    with pytest.raises(RequestError):
        limits.reserve("app", 0.4, put_right)
    (status,) = limits.status(put_right)
    assert (status.spent_usd, status.alert) == (1.3, True)
    assert limits.settle(limits.reserve("app", 0.0, put_right), "app", 0.1, put_right) == []
    tomorrow = at("2026-11-03 00:00:01")
    assert limits.reserve("app", 0.9, tomorrow) is not None  # tomorrow starts afresh


# --------------------------------------------------------------------------- alerts and loading


def test_crossing_alert_at_alerts_once_per_period() -> None:
    limits = budgets(budgets={"daily_usd": 1.0, "alert_at": 0.5})
    now = at("2026-11-02 10:00")
    assert limits.settle(limits.reserve("app", 0.4, now), "app", 0.4, now) == []
    (alert,) = limits.settle(limits.reserve("app", 0.2, now), "app", 0.2, now)
    assert alert.budget.name == "global daily"
    assert "60%" in alert.message
    assert "alert at 50%" in alert.message
    assert limits.settle(limits.reserve("app", 0.1, now), "app", 0.1, now) == []
    assert limits.status(now)[0].alert
    tomorrow = at("2026-11-03 10:00")
    assert not limits.status(tomorrow)[0].alert


def test_a_cost_past_its_reservation_that_passes_a_limit_is_an_overrun_once_per_period() -> None:
    limits = budgets(budgets={"daily_usd": 1.0, "alert_at": 0.9}, apps={"a": {"daily_usd": 5.0}})
    now = at("2026-11-02 10:00")
    held = limits.reserve("b", 0.1, now)
    alerts = limits.settle(held, "b", 1.25, now, target="p/m")  # billed past its bound
    assert [(alert.kind, alert.budget.name) for alert in alerts] == [
        ("budget_alert", "global daily"),
        ("budget_overrun", "global daily"),
    ]
    assert alerts[1].message == (
        "budget 'global daily' passed its limit: spent $1.25 of $1.00 this day (2026-11-02), "
        "as a call to p/m cost $1.25 where it reserved $0.10 (the provider billed more tokens "
        "than the request's bound); the budget refuses further requests this period"
    )
    assert limits.settle(None, "b", 0.5, now) == []  # already past: said once
    assert limits.settle(None, "a", 4.0, now) == []  # its own stays within; the global was past
    with pytest.raises(RequestError):
        limits.reserve("b", 0.01, now)
    tomorrow = at("2026-11-03 10:00")
    alerts = limits.settle(None, "b", 2.0, tomorrow)
    assert [alert.kind for alert in alerts] == ["budget_alert", "budget_overrun"]
    overrun = alerts[1]
    assert "as a request cost $2.00 where it reserved $0.00" in overrun.message


def test_loading_totals_sets_spend_and_reports_budgets_already_alerting() -> None:
    limits = budgets(
        budgets={"daily_usd": 10.0, "monthly_usd": 20.0, "alert_at": 0.8},
        apps={"indexer": {"monthly_usd": 4.0}},
    )
    now = at("2026-11-20 10:00")
    alerts = limits.load([("indexer", 1.0, 3.5), ("web", 2.0, 13.0)], now)
    spent = {status.name: status.spent_usd for status in limits.status(now)}
    assert spent == {"global daily": 3.0, "global monthly": 16.5, "app indexer monthly": 3.5}
    assert sorted(alert.budget.name for alert in alerts) == [
        "app indexer monthly",
        "global monthly",
    ]


# --------------------------------------------------------------------------- reload


def test_a_reload_keeps_totals_and_holds_and_counts_new_budgets_from_the_ledger() -> None:
    now = at("2026-11-02 10:00")
    running = budgets(budgets={"daily_usd": 10.0}, apps={"a": {"daily_usd": 5.0}})
    hold = running.reserve("a", 2.0, now)
    assert hold is not None
    running.settle(running.reserve("a", 1.0, now), "a", 1.0, now)
    reloaded = parse_config(
        {
            "daemon": {"timezone": "America/New_York"},
            "budgets": {"daily_usd": 4.0, "monthly_usd": 100.0},  # tighter, and a new one
            "apps": {"a": {"daily_usd": 5.0}},
        }
    )
    new = running.reconfigure(reloaded)
    assert [b.name for b in new] == ["global monthly"]
    running.add_spent(new, [("a", 1.0, 30.0)], now)  # what the ledger holds this month
    by_name = {b.name: b for b in running.status(now)}
    assert by_name["global daily"].limit_usd == 4.0
    assert by_name["global daily"].spent_usd == pytest.approx(1.0)  # carried over
    assert by_name["global daily"].reserved_usd == pytest.approx(2.0)  # the hold in flight
    assert by_name["global monthly"].spent_usd == pytest.approx(30.0)
    with pytest.raises(RequestError) as caught:  # 1 spent + 2 held + 1.5 > the new 4.0
        running.reserve("a", 1.5, now)
    assert caught.value.code == "budget_exceeded"
    running.settle(hold, "a", 0.5, now)  # the old hold settles on the kept budget
    assert {b.name: b for b in running.status(now)}["global daily"].spent_usd == pytest.approx(1.5)


def test_a_reload_keeps_an_app_called_global_apart_from_the_global_budget() -> None:
    """An app may be called ``global``: its budget has the global budget's scope string, but a
    reload must not carry one's running total into the other."""
    now = at("2026-11-02 10:00")
    raw = {"budgets": {"daily_usd": 10.0}, "apps": {"global": {"daily_usd": 5.0}}}
    running = budgets(**raw)
    running.settle(running.reserve("global", 1.0, now), "global", 1.0, now)
    running.settle(running.reserve("other", 2.0, now), "other", 2.0, now)
    assert (
        running.reconfigure(parse_config({"daemon": {"timezone": "America/New_York"}, **raw})) == []
    )
    by_name = {b.name: b for b in running.status(now)}
    assert by_name["global daily"].spent_usd == pytest.approx(3.0)
    assert by_name["global daily"].limit_usd == 10.0
    assert by_name["app global daily"].spent_usd == pytest.approx(1.0)
    assert by_name["app global daily"].limit_usd == 5.0
