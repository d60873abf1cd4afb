"""Failover under chaos: a real ``quotad serve`` in front of real ``quotad sim`` processes that
hang, fail in bursts, answer 429, break streams, or are killed outright; and ``quotad target``.

Most tests share one daemon over two sims (``primary`` behind providers ``a``, ``lone`` and
``watched``; ``secondary`` behind ``b``) and put the sims back as they found them; the kill
test has processes of its own.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import msgspec
import pytest

from quotad.client import (
    AsyncClient,
    Client,
    QuotadError,
    RateLimitedError,
    UpstreamError,
)
from quotad.daemon.routing.health import RECENT_OUTCOMES
from quotad.protocol.messages import StatusReply, TargetStatus
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.polling import wait_until
from tests.support.sim import SimProcess

MESSAGES = [{"role": "user", "content": "tell me about failover"}]
HEALTHY_SIM = {"fail_rate": 0.0, "hang_rate": 0.0, "break_stream_rate": 0.0, "rpm": 0}
CHAT_PATH = "/v1/chat/completions"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the daemon and sims are processes: one client backend is enough


def config(primary: str, secondary: str) -> str:
    fast_breaker = "breaker = {{ failures = 2, cooldown_s = 0.5, max_cooldown_s = 1 }}"
    return daemon_config(
        "[retry]\nattempts = 3\nbase_s = 0.005\nbudget_window_s = 60\n",
        sim_provider_config("a", primary, extra=f"timeout_s = 0.5\n{fast_breaker}"),
        sim_provider_config("b", secondary),
        sim_provider_config(
            "lone", primary, extra="breaker = {{ failures = 1000, min_calls = 1000 }}"
        ),
        sim_provider_config(
            "watched",
            primary,
            extra="health_check_s = 0.1\nbreaker = {{ failures = 2, cooldown_s = 60 }}",
        ),
        '[providers.lone.models."m"]\n[providers.watched.models."m"]\n',  # listed from the start
        '[models.fast]\ntargets = ["a/m", "b/m"]\n',
        cache='mode = "off"',
    )


@pytest.fixture(scope="module")
def daemon(sims: tuple[SimProcess, SimProcess]) -> Iterator[DaemonProcess]:
    with DaemonProcess(config(sims[0].base_url, sims[1].base_url)) as process:
        yield process


@pytest.fixture
def client(daemon: DaemonProcess, sims: tuple[SimProcess, SimProcess]) -> Iterator[Client]:
    """A client of the shared daemon; afterwards the sims are healthy and breakers closed."""
    with Client(socket=daemon.socket_path, app="chaos") as connected:
        yield connected
        for sim in sims:
            sim.control(**HEALTHY_SIM)
        for name in ("a/m", "b/m", "lone/m", "watched/m"):
            connected.admin("target_reset", name)


def target(status: StatusReply, name: str) -> TargetStatus:
    return next(t for t in status.targets if t.name == name)


async def poll(condition: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if await condition():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"not true within {timeout_s} s")


def chat_requests(sim: SimProcess) -> int:
    by_path: dict[str, int] = sim.stats()["by_path"]
    return by_path.get(CHAT_PATH, 0)


# --------------------------------------------------------------------------- faults


def test_a_hanging_provider_times_out_then_its_breaker_opens(
    client: Client, sims: tuple[SimProcess, SimProcess]
) -> None:
    earlier = target(client.status(), "a/m").recent  # other tests' outcomes on this daemon
    sims[0].control(hang_rate=1.0)
    replies = [client.chat("fast", MESSAGES, max_tokens=4) for _ in range(5)]
    assert [reply.target for reply in replies] == ["b/m"] * 5
    assert [reply.attempts for reply in replies] == [2, 2, 1, 1, 1]
    # once open, the hanging target costs nothing: no timeout is waited for
    waited = statistics.mean(reply.latency_s for reply in replies[:2])
    assert max(reply.latency_s for reply in replies[2:]) < waited / 3
    a = target(client.status(), "a/m")
    assert (a.breaker, a.health) == ("open", "unhealthy")
    assert a.recent == (earlier + "xx")[-RECENT_OUTCOMES:]  # two timeouts, then never tried


def test_a_burst_of_500s_fails_over_then_traffic_returns(
    client: Client, sims: tuple[SimProcess, SimProcess]
) -> None:
    sims[0].control(fail_rate=1.0)
    during = [client.chat("fast", MESSAGES, max_tokens=4) for _ in range(6)]
    assert {reply.target for reply in during} == {"b/m"}
    assert target(client.status(), "a/m").breaker in ("open", "half_open")
    sims[0].control(fail_rate=0.0)  # the burst is over

    def back_on_primary() -> bool:
        return client.chat("fast", MESSAGES, max_tokens=4).target == "a/m"

    wait_until(back_on_primary)
    status = client.status()
    assert target(status, "a/m").breaker == "closed"
    assert any("a/m: half_open -> closed" in event.message for event in status.events)


def test_an_outage_of_a_lone_target_stays_within_the_retry_budget(
    client: Client, sims: tuple[SimProcess, SimProcess]
) -> None:
    sims[0].control(fail_rate=1.0)
    before = chat_requests(sims[0])
    requests = 40
    for _ in range(requests):
        with pytest.raises(UpstreamError) as caught:
            client.chat("lone/m", MESSAGES, max_tokens=4)
    sent = chat_requests(sims[0]) - before
    # retry.attempts = 3 would triple the load; the budget holds it to 20 % (floor 3)
    assert requests + 3 <= sent <= requests * 1.2 + 3
    attempts = caught.value.details["attempts"]
    assert attempts[0] == {
        "target": "lone/m",
        "kind": "server",
        "status": 500,
        "message": "simulated server failure",
    }


def test_429_honours_retry_after_and_is_no_health_failure(
    client: Client, sims: tuple[SimProcess, SimProcess]
) -> None:
    primary = sims[0]
    failures_before = {name: target(client.status(), name).failures for name in ("a/m", "lone/m")}
    primary.control(rpm=1, window_s=30)
    with contextlib.suppress(RateLimitedError):  # the one admission of the next 30 s
        client.chat("lone/m", MESSAGES, max_tokens=4)
    moved = client.chat("fast", MESSAGES, max_tokens=4)  # a/m answers 429: on to b/m at once
    assert (moved.target, moved.attempts) == ("b/m", 2)
    with pytest.raises(RateLimitedError) as caught:  # alone, and it will not wait
        client.chat("lone/m", MESSAGES, max_tokens=4, max_wait_s=0)
    assert caught.value.retry_after_s is not None
    assert caught.value.retry_after_s > 20  # the gates learnt the sim's 30 s window

    primary.control(rpm=1, window_s=1)
    for name in ("a/m", "lone/m"):
        client.admin("target_reset", name)  # forget what was learnt of the 30 s window
    time.sleep(1.1)  # the 30 s window's admissions leave the 1 s window
    client.chat("a/m", MESSAGES, max_tokens=4)  # another account takes the sim's one slot
    waited = client.chat("lone/m", MESSAGES, max_tokens=4)  # 429, retry-after 1 s, retried
    assert waited.attempts == 2
    assert waited.latency_s >= 0.5
    status = client.status()
    for name in ("a/m", "lone/m"):
        limited = target(status, name)
        assert limited.breaker == "closed"
        assert limited.failures == failures_before[name]
    assert target(status, "a/m").recent.endswith("r.")
    assert target(status, "lone/m").recent.endswith("r.")


def test_a_stream_broken_mid_way_ends_with_partial_content_and_an_error(
    client: Client, daemon: DaemonProcess, sims: tuple[SimProcess, SimProcess]
) -> None:
    sims[0].control(break_stream_rate=1.0)
    with client.subscribe(interval_s=0.05) as snapshots:
        stream = client.chat_stream("lone/m", MESSAGES, max_tokens=16)
        received: list[str] = []
        with pytest.raises(UpstreamError) as caught:
            received.extend(chunk.delta for chunk in stream)
        assert received  # the client saw the start of the answer…
        assert caught.value.details["partial_content"] == "".join(received)  # …and what broke
        assert "broke the stream after it started" in caught.value.message
        record = None
        for snapshot in snapshots:
            broken = [r for r in snapshot.requests if r.status == "upstream_error"]
            if broken:
                record = broken[0]
                break
    assert record is not None
    assert record.target == "lone/m"
    assert record.kind == "stream"
    assert record.prompt_tokens > 0
    assert record.completion_tokens > 0  # estimated from the partial text


def test_a_stream_fails_over_before_its_first_chunk(
    client: Client, sims: tuple[SimProcess, SimProcess]
) -> None:
    sims[0].control(fail_rate=1.0)
    stream = client.chat_stream("fast", MESSAGES, max_tokens=8)
    text = "".join(chunk.delta for chunk in stream)
    assert stream.end is not None
    assert (stream.end.target, stream.end.attempts) == ("b/m", 2)
    assert text == stream.end.content


def test_health_checks_open_a_breaker_and_close_it_early(
    client: Client, sims: tuple[SimProcess, SimProcess]
) -> None:
    """No request is sent to ``watched``: its health checks alone take it out of rotation
    and bring it back long before its 60 s cooldown."""
    sims[0].control(fail_rate=1.0)
    wait_until(lambda: target(client.status(), "watched/m").breaker == "open")
    watched = target(client.status(), "watched/m")
    assert watched.requests == 0
    assert "HH" in watched.recent
    sims[0].control(fail_rate=0.0)
    wait_until(lambda: target(client.status(), "watched/m").breaker == "closed", timeout_s=5)
    events = [event.message for event in client.status().events]
    assert "watched/m: open -> half_open: a health check succeeded" in events
    assert target(client.status(), "watched/m").recent.endswith("h")


# --------------------------------------------------------------------------- operator


def quotad(daemon: DaemonProcess | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUOTAD_SOCKET": str(daemon.socket_path) if daemon else "/nonexistent"}
    return subprocess.run(
        [sys.executable, "-m", "quotad.daemon.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.mark.slow
def test_quotad_target_list_enable_disable_reset(client: Client, daemon: DaemonProcess) -> None:
    listed = quotad(daemon, "target", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = msgspec.json.decode(listed.stdout)
    assert {"a/m", "b/m", "lone/m", "watched/m"} <= {row["name"] for row in rows}

    disabled = quotad(daemon, "target", "disable", "a/m")
    assert (disabled.returncode, disabled.stdout.strip()) == (0, "a/m disabled")
    reply = client.chat("fast", MESSAGES, max_tokens=4)
    assert (reply.target, reply.attempts) == ("b/m", 1)  # skipped, not tried
    text = quotad(daemon, "target", "list")
    assert text.returncode == 0
    assert any(line.startswith("a/m") and "disabled" in line for line in text.stdout.splitlines())
    enabled = quotad(daemon, "target", "enable", "a/m")
    assert (enabled.returncode, enabled.stdout.strip()) == (0, "a/m enabled")
    assert client.chat("fast", MESSAGES, max_tokens=4).target == "a/m"

    reset = quotad(daemon, "target", "reset", "a/m")
    assert reset.returncode == 0
    assert "breaker is closed" in reset.stdout

    unknown = quotad(daemon, "target", "disable", "nope/m")
    assert unknown.returncode == 2
    assert "no target 'nope/m'" in unknown.stderr
    unreachable = quotad(None, "target", "list")
    assert unreachable.returncode == 3


# --------------------------------------------------------------------------- a kill


@pytest.mark.slow
@pytest.mark.anyio
async def test_primary_killed_mid_run_loses_nothing_and_traffic_returns() -> None:
    """Load on a failover group while its primary is SIGKILLed: every request succeeds on
    the secondary; with the breaker open, the group is as fast as the secondary alone; when
    the primary is back, a probe succeeds and traffic returns to it."""
    breaker = "breaker = {{ failures = 3, cooldown_s = 0.5, max_cooldown_s = 1 }}"
    with SimProcess(latency_ms=3) as primary, SimProcess(latency_ms=3) as secondary:
        text = daemon_config(
            sim_provider_config("a", primary.base_url, extra=f"timeout_s = 2\n{breaker}"),
            sim_provider_config("b", secondary.base_url),
            '[models.fast]\ntargets = ["a/m", "b/m"]\n',
            cache='mode = "off"',
        )
        with DaemonProcess(text) as daemon:
            async with AsyncClient(socket=daemon.socket_path, app="chaos") as client:
                outcomes: list[str | QuotadError] = []
                stop = anyio.Event()

                async def load() -> None:
                    while not stop.is_set():
                        try:
                            reply = await client.chat("fast", MESSAGES, max_tokens=4)
                            outcomes.append(reply.target)
                        except QuotadError as error:
                            outcomes.append(error)

                async def breaker_state() -> str:
                    return target(await client.status(), "a/m").breaker

                async def primary_open() -> bool:
                    return await breaker_state() == "open"

                async def back_on_primary() -> bool:
                    reply = await client.chat("fast", MESSAGES, max_tokens=4)
                    return reply.target == "a/m"

                async with anyio.create_task_group() as tasks:
                    for _ in range(4):
                        tasks.start_soon(load)
                    await anyio.sleep(0.5)
                    served_before_kill = len(outcomes)
                    primary.kill()
                    await poll(primary_open, timeout_s=10)
                    await anyio.sleep(0.5)
                    stop.set()
                failed = [outcome for outcome in outcomes if not isinstance(outcome, str)]
                assert failed == []
                assert served_before_kill > 0
                assert outcomes[0] == "a/m"
                assert outcomes[-1] == "b/m"

                # the breaker open: the group costs what the secondary alone costs
                via_group: list[float] = []
                direct: list[float] = []
                for _ in range(40):
                    started = time.perf_counter()
                    reply = await client.chat("fast", MESSAGES, max_tokens=4)
                    via_group.append(time.perf_counter() - started)
                    assert reply.target == "b/m"
                    started = time.perf_counter()
                    await client.chat("b/m", MESSAGES, max_tokens=4)
                    direct.append(time.perf_counter() - started)
                ratio = statistics.median(via_group) / statistics.median(direct)
                assert ratio < 1.5, (ratio, via_group, direct)

                # the primary comes back: a probe succeeds and traffic returns to it
                await anyio.to_thread.run_sync(primary.start)
                await poll(back_on_primary, timeout_s=15)
                assert await breaker_state() == "closed"
