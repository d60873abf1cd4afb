"""Metrics whose tables are full: every target and (target, app) pair the bounds of
:mod:`quotad.daemon.metrics` count apart, and some past them, as clients naming models and
apps without end leave them; and a status as large as the router and the activity log let it
be. For the tests and the benchmark of ``GET /metrics`` at its bounds."""

from __future__ import annotations

from collections.abc import Sequence

from quotad.daemon import metrics as metrics_module
from quotad.daemon.activity import MAX_TRACKED_APPS
from quotad.daemon.metrics import Metrics
from quotad.daemon.routing.router import MAX_NAMED_TARGETS
from quotad.protocol.errors import ERROR_CODES
from quotad.protocol.messages import AppStatus, RequestRecord, StatusReply, TargetStatus

EVERY_OUTCOME: tuple[str, ...] = ("ok", *ERROR_CODES)
"""Every status a finished request can have."""
LONGEST_NAME = 256
"""The longest model or app name the wire protocol and the front door admit."""


def name(prefix: str, number: int, chars: int) -> str:
    """``prefix-number``, padded to ``chars`` characters when that is longer."""
    short = f"{prefix}-{number}"
    return short + "x" * (chars - len(short)) if chars > len(short) else short


def fill_to_bounds(
    metrics: Metrics, *, name_chars: int = 0, outcomes: Sequence[str] = ("ok",)
) -> None:
    """Count requests until every bound of ``metrics`` is reached and passed: each target up
    to MAX_TARGET_SERIES and 5 more, then pairs of them with MAX_TRACKED_APPS apps up to
    MAX_TARGET_APP_SERIES, then every target with one app more (its pair past the bound);
    each with every status of ``outcomes``, each name of at least ``name_chars`` characters
    (the bounds are read from the module, so that a checkout with others fills to those)."""
    most_targets = metrics_module.MAX_TARGET_SERIES + 5
    apps = [name("app", number, name_chars) for number in range(MAX_TRACKED_APPS)]

    def finish(target_number: int, app: str) -> None:
        target = name("sim/m", target_number, name_chars)
        for outcome in outcomes:
            record = RequestRecord(
                target=target,
                app=app,
                status=outcome,
                latency_s=0.01 * (target_number % 300),
                wait_s=0.002,
                prompt_tokens=12,
                completion_tokens=3,
                cost_usd=0.0001,
            )
            metrics.observe_request(record, resolved=True, app=app)

    for number in range(most_targets):
        finish(number, apps[number % len(apps)])
    number = 0
    while len(metrics._tokens) < metrics_module.MAX_TARGET_APP_SERIES:
        for app in apps:
            finish(number, app)
        number += 1
    late = name("app-late", 0, name_chars)
    for number in range(most_targets):
        finish(number, late)
    for code in (200, 400, 404, 429, 502):
        metrics.observe_http("chat_completions", code)


def full_status(name_chars: int = 0) -> StatusReply:
    """A status with as many targets as one config's router holds (20 declared, the named
    ones at MAX_NAMED_TARGETS) and as many apps as the activity log keeps apart, each with
    spend and guardrail findings."""
    targets = [
        TargetStatus(name=name("sim/t", number, name_chars), requests=number)
        for number in range(20 + MAX_NAMED_TARGETS)
    ]
    apps = [
        AppStatus(
            name=name("app", number, name_chars),
            spend_today_usd=0.25,
            blocked=1,
            entities={"email": 2, "secret": 1},
        )
        for number in range(MAX_TRACKED_APPS + 1)
    ]
    return StatusReply(daemon_version="test", targets=targets, apps=apps)
