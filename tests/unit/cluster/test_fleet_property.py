"""The fleet's guarantee as a property, against a real Valkey: random sequences of
admissions, settlements (refunds), cancellations, returns and pauses in time from several
hosts never let the admissions of any span (window + guard) pass a limit, counted as a
provider would count them: each request at the moment it was admitted, with the tokens it
finally used."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotad.daemon.cluster.gates import Ask, FleetGates
from quotad.daemon.cluster.link import Link
from quotad.daemon.cluster.window import FleetWindow
from quotad.daemon.cluster.window_records import Taken
from tests.support.valkey import ValkeyServer
from tests.unit.cluster.conftest import joined_link

pytestmark = pytest.mark.anyio

REQUESTS = 24
TOKENS = 240
SPAN_S = 0.4
HOSTS = 3


@dataclass
class Admission:
    time: float
    requests: Taken
    tokens: Taken


@dataclass
class Host:
    link: Link
    gates: FleetGates
    requests: FleetWindow
    tokens: FleetWindow
    admitted: list[Admission]
    grants: list[int]


@contextlib.asynccontextmanager
async def fleet(valkey: ValkeyServer) -> AsyncIterator[list[Host]]:
    prefix = "p" + os.urandom(5).hex()
    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for index in range(HOSTS):
            link = await stack.enter_async_context(
                joined_link(valkey, prefix, f"h{index}", lease_s=0.1)
            )
            gates = FleetGates(link)
            requests = gates.window("provider:p", "requests", 0.3, REQUESTS, SPAN_S)
            tokens = gates.window("provider:p", "tokens", 0.3, TOKENS, SPAN_S)
            for window in (requests, tokens):
                window.set_mode("fleet", HOSTS, link.clock.monotonic())
            hosts.append(Host(link, gates, requests, tokens, [], []))
        yield hosts


async def admit(host: Host, tokens: int) -> None:
    """Admit a request of ``tokens`` on both windows, borrowing first if short."""
    for attempt in range(2):
        now = host.link.clock.monotonic()
        if host.requests.available(now) >= 1 and host.tokens.available(now) >= tokens:
            taken_requests = host.requests.take(1, now)
            taken_tokens = host.tokens.take(tokens, now)
            assert taken_requests is not None
            assert taken_tokens is not None
            host.admitted.append(Admission(now, taken_requests, taken_tokens))
            return
        if attempt == 0:
            ask = Ask(((host.requests, 1), (host.tokens, tokens)))
            await host.gates.borrow([(("ask",), ask)])
            host.grants += [lease.granted for lease in host.requests.leases]


async def flush(host: Host) -> None:
    await host.gates.flusher.flush()


operation = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, HOSTS - 1), st.integers(0, 30)),
    st.tuples(st.just("burst"), st.integers(0, HOSTS - 1), st.integers(2, 12)),
    st.tuples(st.just("settle"), st.integers(0, HOSTS - 1), st.integers(0, 30)),
    st.tuples(st.just("cancel"), st.integers(0, HOSTS - 1), st.integers(0, 30)),
    st.tuples(st.just("flush"), st.integers(0, HOSTS - 1), st.just(0)),
    st.tuples(st.just("sleep"), st.just(0), st.integers(1, 60)),
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(operation, min_size=5, max_size=45))
async def test_no_span_of_the_fleet_ever_passes_a_limit(
    valkey: ValkeyServer, operations: list[tuple[str, int, int]]
) -> None:
    async with fleet(valkey) as hosts:
        for kind, index, value in operations:
            host = hosts[index]
            if kind == "admit":
                await admit(host, value)
            elif kind == "burst":  # admissions close together: slices grow with the rate
                for _ in range(value):
                    await admit(host, 5)
                    await anyio.sleep(0.004)
            elif kind in ("settle", "cancel") and host.admitted:
                admission = host.admitted[value % len(host.admitted)]
                now = host.link.clock.monotonic()
                if kind == "cancel":
                    host.requests.resize(admission.requests, 0, now)
                    host.tokens.resize(admission.tokens, 0, now)
                else:  # settled for fewer tokens than reserved (a refund)
                    used = min(admission.tokens.amount, value)
                    host.tokens.resize(admission.tokens, used, now)
            elif kind == "flush":
                await flush(host)
            elif kind == "sleep":
                await anyio.sleep(value / 1000)
        admissions = [a for host in hosts for a in host.admitted]
        assert_within_limits(admissions)


def assert_within_limits(admissions: list[Admission]) -> None:
    """In every span ending at an admission, the admitted requests and their final tokens
    stay within the limits."""
    for moment in sorted({a.time for a in admissions}):
        inside = [a for a in admissions if moment - SPAN_S < a.time <= moment]
        assert sum(a.requests.amount for a in inside) <= REQUESTS, moment
        assert sum(a.tokens.amount for a in inside) <= TOKENS, moment


async def test_the_property_holds_for_a_busy_fleet_and_is_not_vacuous(
    valkey: ValkeyServer,
) -> None:
    """Three hosts admitting as fast as they can for a few spans: the limits hold, and the
    fleet does admit about what the limits allow."""
    async with fleet(valkey) as hosts:
        deadline = anyio.current_time() + 4 * SPAN_S
        rounds = 0
        while anyio.current_time() < deadline:
            for host in hosts:
                await admit(host, 7)
                if rounds % 8 == 0:  # leases end by themselves mostly: late in their lease
                    await flush(host)
            rounds += 1
            await anyio.sleep(0.005)
        admissions = [a for host in hosts for a in host.admitted]
        assert_within_limits(admissions)
        assert len(admissions) >= REQUESTS * 2  # at least two spans' worth got through
        assert max(lease for host in hosts for lease in host.grants) > 1  # slices ahead
        assert {index for index, host in enumerate(hosts) if host.admitted} != set()


async def test_admissions_late_in_a_lease_are_counted_for_their_whole_span(
    valkey: ValkeyServer,
) -> None:
    """A slice borrowed ahead and spent late in its lease keeps its units counted until a
    span after the last of them, so another host cannot take them back too early."""
    async with fleet(valkey) as hosts:
        first, other = hosts[0], hosts[1]
        now = first.link.clock.monotonic()
        # borrowed ahead: the whole limit, one admission now
        first.requests.set_mode("fleet", 1, now)
        first.requests._rate, first.requests._rate_at = 1000.0, now  # a busy host's slice
        await first.gates.borrow([(("ahead",), Ask(((first.requests, 1),)))])
        lease = first.requests.leases[0]
        assert lease.granted == REQUESTS // 2
        taken = first.requests.take(1, now)
        assert taken is not None
        first.admitted.append(Admission(now, taken, Taken()))
        await anyio.sleep(0.06)  # late in its 0.1 s lease: the rest
        late = first.link.clock.monotonic()
        rest = first.requests.take(lease.granted - 1, late)
        if rest is None:
            pytest.skip("the machine was too slow to admit within the lease")
        first.admitted.append(Admission(late, rest, Taken()))
        # once a span has passed since the grant, another host tries to take everything
        await anyio.sleep(max(0.0, now + SPAN_S + 0.005 - first.link.clock.monotonic()))
        for _ in range(REQUESTS):
            await admit(other, 0)
        assert_within_limits([a for host in hosts for a in host.admitted])
