"""Three hosts, one provider account (DESIGN §10, issue 15 points 2 and 6): client processes
on three real daemons that share their gates through a real Valkey, against a real sim that
enforces the account's limit. The sim sees no 429 and no window over the limit, and the
fleet uses at least 90 % of it; with Valkey killed mid-run the hosts keep serving, on their
share, still under the limit, and when it comes back empty they re-sync and share again."""

from __future__ import annotations

import time

import pytest

from quotad.client import Client
from tests.support.fleet import (
    ONE_FLEET_AT_A_TIME,
    Fleet,
    have_valkey,
    requests_limit,
    run_fleet_load,
)

pytestmark = [
    ONE_FLEET_AT_A_TIME,
    pytest.mark.slow,
    pytest.mark.skipif(not have_valkey(), reason="no valkey-server or redis-server"),
]

LIMIT = 20
WINDOW_S = 1.0


def fleet(**settings: object) -> Fleet:
    return Fleet(
        hosts=3,
        provider_extra=requests_limit(LIMIT, WINDOW_S),
        sim={"rpm": LIMIT, "window_s": WINDOW_S, "latency_ms": 5, "log": True},
        **settings,  # type: ignore[arg-type]
    )


def test_three_hosts_share_one_limit_exactly() -> None:
    with fleet() as hosts:
        figures = run_fleet_load(
            hosts, processes_per_host=1, duration_s=4.0, limit=LIMIT, window_s=WINDOW_S
        )
        statuses = hosts.statuses()
    assert figures["sim_429s"] == 0, figures
    assert figures["peak_arrivals_in_window"] <= LIMIT, figures
    assert figures["utilization"] >= 0.9, figures
    assert figures["client_errors"] == {}, figures
    for status in statuses:
        assert status.cluster is not None
        assert status.cluster.mode == "fleet"
        assert status.cluster.hosts_seen == 3


def test_valkey_killed_mid_run_hosts_keep_serving_under_the_limit() -> None:
    with fleet(on_unreachable="share", timeout_s=0.25) as hosts:
        figures = run_fleet_load(
            hosts,
            processes_per_host=1,
            duration_s=4.0,
            limit=LIMIT,
            window_s=WINDOW_S,
            kill_valkey_at_s=1.5,
        )
        statuses = hosts.statuses()
        hosts.valkey.start()  # back, empty: every host re-syncs and borrows again
        deadline = time.monotonic() + 30
        while not all(
            s.cluster is not None and s.cluster.mode == "fleet" for s in hosts.statuses()
        ):
            assert time.monotonic() < deadline, [s.cluster for s in hosts.statuses()]
            time.sleep(0.1)
        with Client(socket=hosts.sockets()[0], app="after") as client:
            reply = client.chat("sim/m", [{"role": "user", "content": "hi"}], max_tokens=4)
            assert reply.content
        events = [e.kind for e in hosts.statuses()[0].events]
    assert "cluster_epoch" in events, events  # it noticed Redis lost the fleet's state
    assert figures["sim_429s"] == 0, figures
    assert figures["peak_arrivals_in_window"] <= LIMIT, figures
    assert figures["answered_after_kill"] > 0, figures  # still serving, on their share
    for status in statuses:
        cluster = status.cluster
        assert cluster is not None
        assert (cluster.health, cluster.mode) == ("degraded", "share"), cluster
        assert any(problem.startswith("cluster: degraded") for problem in status.problems)
        assert any(event.kind == "cluster_degraded" for event in status.events)
