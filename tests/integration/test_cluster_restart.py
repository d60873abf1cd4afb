"""A host of a fleet restarted mid-run (DESIGN §10 with the gates kept across a restart): the
fleet's windows live in Valkey and the restarted host counts its own admissions again from
``gates.state``; neither lets the account past its limit, and the restarted host serves again.
Two hosts share a sim enforcing 20 requests per 4 s; one sends 20, restarts (a clean stop,
or a kill once it has saved), then both send 20 more at once: no 429, at most 20 in any
window, and every request answered."""

from __future__ import annotations

import pytest

from tests.support.fleet import NEEDS_VALKEY, ONE_FLEET_AT_A_TIME, Fleet, requests_limit
from tests.support.restarts import chats_at_once, restart

pytestmark = [ONE_FLEET_AT_A_TIME, pytest.mark.slow, NEEDS_VALKEY]

LIMIT = 20
WINDOW_S = 4.0


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
def test_a_restarted_host_keeps_the_fleet_under_its_limit(killed: bool) -> None:
    with Fleet(
        hosts=2,
        provider_extra=f"pace = false\n{requests_limit(LIMIT, WINDOW_S)}",
        sim={"rpm": LIMIT, "window_s": WINDOW_S},
    ) as fleet:
        first, second = fleet.daemons
        assert chats_at_once([first], LIMIT) == ["sim/m"] * LIMIT
        restart(first, killed=killed, saved=LIMIT)
        outcomes = chats_at_once([first, second], LIMIT // 2)
        stats = fleet.sim.stats()
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_window_requests"] <= LIMIT, stats
    assert outcomes == ["sim/m"] * LIMIT, outcomes
