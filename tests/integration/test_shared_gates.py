"""The point of quotad: several real client processes share one provider limit through the
daemon's gates and the provider never sees it exceeded; and permits for processes that keep
their own SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from quotad.client import BadRequestError, Client, RateLimitedError
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.load import run_shared_limit
from tests.support.sim import SimProcess

GUARD_S = 0.25
"""The guard for this test: the provider's count holds as long as the time from a request's
hand-off to its arrival at the provider varies less than the guard (README, Rate gates). Here
the provider is a sim process on the same small machine, so that time includes waiting to be
scheduled, which on a machine busy with other work can pass the default 50 ms (a 429 was seen
so, with and without this change); the default's figures are ``bench/gates.py``'s."""


@pytest.mark.slow
def test_eight_processes_of_two_apps_share_one_limit_exactly() -> None:
    figures = run_shared_limit(
        "daemon", processes=8, limit=20, window_s=2.0, duration_s=8.0, guard_s=GUARD_S
    )
    assert figures["sim_429s"] == 0, figures
    assert figures["peak_arrivals_in_window"] <= 20, figures
    assert figures["utilization"] >= 0.95 * 2.0 / (2.0 + GUARD_S), figures  # all it may use
    assert figures["client_errors"] == 0, figures
    assert 2.4 <= figures["heavy_to_light"] <= 3.6, figures


@pytest.fixture(scope="module")
def permit_daemon() -> Iterator[DaemonProcess]:
    """A daemon whose providers ``p`` and ``q`` (one sim) have a gate each, so that each test
    has its own: what one test admitted stays in its windows and would count in the other's."""
    with SimProcess() as sim:
        limits = "limits = [{{ requests = 2, window_s = 1.0 }}]\ntpm = 1000"
        config = daemon_config(
            "[gates]\nburst = 1.0\n",
            sim_provider_config("p", sim.base_url, extra=limits),
            sim_provider_config("q", sim.base_url, extra=limits),
        )
        with DaemonProcess(config) as daemon:
            yield daemon


def test_permits_share_the_gates_and_settle_what_went_over(permit_daemon: DaemonProcess) -> None:
    with Client(socket=permit_daemon.socket_path, app="sdk-user") as client:
        with client.permit("p/m", tokens=600) as permit:
            assert permit.permit_id
            permit.settle(tokens=150)
        gates = {g.name: g for g in client.status().gates}
        windows = {w.unit: w for w in gates["provider:p"].windows}
        assert windows["tokens"].used == 600  # kept: the provider does not give them back
        assert windows["requests"].used == 1
        with pytest.raises(RateLimitedError) as caught:  # 600 + 900 > 1000
            client.acquire("p/m", tokens=900, max_wait_s=0)
        assert caught.value.retry_after_s is not None
        with pytest.raises(BadRequestError, match="unknown, already settled"):
            client.settle("pm-nope-1", tokens_used=1)


def test_a_permit_passed_a_429_pauses_the_target(permit_daemon: DaemonProcess) -> None:
    with Client(socket=permit_daemon.socket_path, app="sdk-user") as client:
        with client.permit("q/other", tokens=1) as permit:
            permit.settle(tokens=1, status="rate_limited", headers={"retry-after": "30"})
        target = next(t for t in client.status().targets if t.name == "q/other")
        assert target.paused_until is not None
        assert target.paused_until > time.time() + 20
        with pytest.raises(RateLimitedError):
            client.acquire("q/other", tokens=1, max_wait_s=0)
        client.admin("target_reset", "q/other")
        client.settle(client.acquire("q/other", tokens=1, max_wait_s=0).permit_id, tokens_used=1)


def test_an_apps_own_limit_holds_back_only_that_app() -> None:
    with SimProcess() as sim:
        config = daemon_config(
            "[gates]\nburst = 1.0\n",
            sim_provider_config(
                "p", sim.base_url, extra="limits = [{{ requests = 50, window_s = 10.0 }}]"
            ),
            "[apps.batch]\nlimits = [{{ requests = 2, window_s = 10.0 }}]\n",
            cache='mode = "off"',
        )
        with DaemonProcess(config) as daemon:
            messages = [{"role": "user", "content": "hi"}]
            with Client(socket=daemon.socket_path, app="batch") as batch:
                for _ in range(2):
                    batch.chat("p/m", messages, max_tokens=4)
                with pytest.raises(RateLimitedError) as caught:
                    batch.chat("p/m", messages, max_tokens=4, max_wait_s=0)
                assert "2 requests per 10 s" in caught.value.message
                gates = {g.name: g for g in batch.status().gates}
                assert gates["app:batch"].windows[0].used == 2
                assert gates["provider:p"].windows[0].used == 2
            with Client(socket=daemon.socket_path, app="agent") as agent:
                assert agent.chat("p/m", messages, max_tokens=4, max_wait_s=0).content
