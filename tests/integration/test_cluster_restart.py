"""A host of a fleet restarted mid-run (DESIGN §10 with the gates kept across a restart): the
fleet's windows live in Valkey and the restarted host counts its own admissions again from
``gates.state``; neither lets the account past its limit, and the restarted host serves again.
Two hosts share a sim enforcing 20 requests per 4 s; one sends 20, restarts (a clean stop,
or a kill once it has saved), then both send 20 more at once: no 429, at most 20 in any
window, and every request answered."""

from __future__ import annotations

import threading

import pytest

from quotad.client import Client
from quotad.daemon.gates.saved import read_saved, saved_path
from tests.support.daemon import DaemonProcess
from tests.support.fleet import ONE_FLEET_AT_A_TIME, Fleet, have_valkey, requests_limit
from tests.support.polling import wait_until

pytestmark = [
    ONE_FLEET_AT_A_TIME,
    pytest.mark.slow,
    pytest.mark.skipif(not have_valkey(), reason="no valkey-server or redis-server"),
]

LIMIT = 20
WINDOW_S = 4.0


def chats_at_once(daemons: list[DaemonProcess], count: int) -> list[str]:
    """``count`` chats at once from each of ``daemons``: each answer's target, or its error."""
    outcomes: list[str] = []

    def chat(daemon: DaemonProcess, n: int) -> None:
        try:
            with Client(daemon.socket_path, app="a", timeout=60) as client:
                messages = [{"role": "user", "content": f"q{n}"}]
                outcomes.append(client.chat("sim/m", messages, max_tokens=5, max_wait_s=30).target)
        except Exception as error:  # counted by the caller
            outcomes.append(f"{type(error).__name__}: {error}")

    threads = [
        threading.Thread(target=chat, args=(daemon, n)) for daemon in daemons for n in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def saved_units(daemon: DaemonProcess) -> int:
    saved = read_saved(saved_path(daemon.state_dir))
    return sum(
        units
        for gate in (saved.gates if saved else [])
        if gate.name == "provider:sim"
        for window in gate.windows
        for _, units in window.admissions
    )


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
def test_a_restarted_host_keeps_the_fleet_under_its_limit(killed: bool) -> None:
    with Fleet(
        hosts=2,
        provider_extra=f"pace = false\n{requests_limit(LIMIT, WINDOW_S)}",
        sim={"rpm": LIMIT, "window_s": WINDOW_S},
    ) as fleet:
        first, second = fleet.daemons
        assert chats_at_once([first], LIMIT) == ["sim/m"] * LIMIT
        if killed:
            wait_until(lambda: saved_units(first) >= LIMIT)
            first.kill()
        else:
            assert first.stop() == 0
        first.start()
        outcomes = chats_at_once([first, second], LIMIT // 2)
        stats = fleet.sim.stats()
    assert stats["rate_limited"] == 0, stats
    assert stats["max_in_window_requests"] <= LIMIT, stats
    assert outcomes == ["sim/m"] * LIMIT, outcomes
