"""A restart mid-run keeps a provider's limit: a real daemon sends a provider (the sim, which
enforces 20 requests per 4 s) its whole window, restarts, and serves 20 more at once. The
provider still counts the first 20, and so does the restarted daemon (``gates.state``): no
429. Before, the restarted daemon's gates started empty and sent the 20 at once: 20 provider
429s (16 of the 20 requests failed ``rate_limited``), after a clean stop as after a kill."""

from __future__ import annotations

import pytest

from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.restarts import chats_at_once, restart
from tests.support.sim import SimProcess

LIMIT = 20
WINDOW_S = 4.0


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
def test_a_restarted_daemon_still_counts_what_the_provider_counts(killed: bool) -> None:
    limits = f"pace = false\nlimits = [{{{{ requests = {LIMIT}, window_s = {WINDOW_S} }}}}]"
    with SimProcess(rpm=LIMIT, window_s=WINDOW_S) as sim:
        config = daemon_config(
            sim_provider_config("sim", sim.base_url, extra=limits), cache='mode = "off"'
        )
        with DaemonProcess(config) as daemon:
            assert chats_at_once([daemon], LIMIT) == ["sim/m"] * LIMIT
            restart(daemon, killed=killed, saved=LIMIT)
            second = chats_at_once([daemon], LIMIT)
            log = daemon.log()
        stats = sim.stats()
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_window_requests"] <= LIMIT, stats
    assert second == ["sim/m"] * LIMIT
    assert f"{LIMIT} unit(s) in 1 window(s) and 0 pause(s) counted again" in log
    assert ("did not stop cleanly (what it admitted after that save" in log) == killed
