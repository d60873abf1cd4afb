"""A fleet window from one host's side, on a virtual clock: admissions from leases, returns
as puts, settling, and the arithmetic of ``share`` mode when Redis goes away."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.clock import VirtualClock
from quotad.daemon.cluster.server_time import CLOCK_SLACK_S, ServerTime
from quotad.daemon.cluster.window import FleetWindow
from quotad.daemon.cluster.window_records import Taken

SERVER_START_US = 1_790_000_000_000_000
"""The server's clock at local time 1000.0 (the virtual clock's start)."""


def server_time(clock: VirtualClock) -> ServerTime:
    """A server clock learned from a reply sent and received at the clock's now."""
    time = ServerTime()
    now = clock.monotonic()
    time.sample(SERVER_START_US + int((now - 1000.0) * 1e6), now, now)
    return time


def server_us(local: float) -> int:
    return SERVER_START_US + round((local - 1000.0) * 1e6)


def window(
    clock: VirtualClock, limit: int = 10, span_s: float = 3.0, lease_s: float = 1.0
) -> FleetWindow:
    fleet = FleetWindow("w", limit, span_s, lease_s, host="h1", time=server_time(clock))
    fleet.set_mode("fleet", 1, clock.monotonic())
    return fleet


def away(fleet: FleetWindow, clock: VirtualClock, hosts: int) -> float:
    """Redis goes away now: ``share`` among ``hosts``, and the clock moved past the time
    entries made before may still count (nothing of this host's own was in the log). The
    local time then."""
    fleet.set_mode("share", hosts, clock.monotonic())
    clock.advance(fleet.blind_until - clock.monotonic())
    return clock.monotonic()


def grant(fleet: FleetWindow, entry: str, amount: int, now: float) -> None:
    """A borrow sent, granted (at the server's time of ``now``) and answered at ``now``."""
    fleet.grant(entry, amount, now, server_us(now))


def leased(
    amount: int, limit: int = 10, span_s: float = 3.0, lease_s: float = 1.0
) -> tuple[VirtualClock, FleetWindow, float]:
    """A window on a fresh virtual clock holding one lease, ``e1`` of ``amount``, granted at
    the clock's now: (clock, window, now)."""
    clock = VirtualClock()
    fleet = window(clock, limit, span_s, lease_s)
    now = clock.monotonic()
    grant(fleet, "e1", amount, now)
    return clock, fleet, now


def test_admissions_come_from_leases_until_their_deadline() -> None:
    clock = VirtualClock()
    fleet = window(clock)
    now = clock.monotonic()
    assert fleet.take(1, now) is None  # nothing held yet
    grant(fleet, "e1", 4, now)
    assert fleet.available(now) == 4
    taken = fleet.take(3, now)
    assert taken is not None
    assert taken.amount == 3
    assert fleet.take(2, now) is None  # one left
    clock.advance(1.0)  # the lease's deadline: measured from when the borrow was sent
    assert fleet.available(clock.monotonic()) == 0


def test_an_admission_may_span_two_leases() -> None:
    _, fleet, now = leased(2)
    grant(fleet, "e2", 2, now)
    taken = fleet.take(3, now)
    assert taken is not None
    assert [part.amount for part in taken.parts] == [2, 1]


def test_a_returned_lease_counts_what_was_used_until_a_span_after_its_last_admission() -> None:
    clock = VirtualClock()
    fleet = window(clock, span_s=3.0)
    sent = clock.monotonic()
    fleet.grant("e1", 5, sent, server_us(sent))
    clock.advance(0.25)
    assert fleet.take(2, clock.monotonic()) is not None
    clock.advance(0.25)  # idle for lease_s / 4: returned
    assert fleet.close_due(clock.monotonic())
    puts = fleet.take_puts()
    assert puts[0] == ("e1", 0, 0)
    entry, amount, expiry = puts[1]
    assert entry.startswith("c:h1:")
    assert amount == 2
    last = server_us(sent) + 250_000 + 3_000_000
    assert last <= expiry < last + fleet.grid_us + 2  # on the grid, never early
    assert fleet.available(clock.monotonic()) == 0


def test_a_used_up_lease_is_returned_at_once() -> None:
    _, fleet, now = leased(2)
    assert fleet.take(2, now) is not None
    assert fleet.close_due(now)
    assert [put[1] for put in fleet.take_puts()] == [0, 2]


def test_settling_gives_back_to_an_open_lease_then_to_its_bucket() -> None:
    clock, fleet, now = leased(500, limit=1000)
    taken = fleet.take(400, now)
    assert taken is not None
    fleet.resize(taken, 100, now)  # the lease is open: its units may be admitted again
    assert fleet.available(now) == 400
    assert fleet.take_puts() == []
    clock.advance(1.0)
    fleet.close_due(clock.monotonic())
    bucket_put = fleet.take_puts()[1]
    assert bucket_put[1] == 100
    fleet.resize(taken, 30, clock.monotonic())  # returned: the bucket in Redis gives back
    assert fleet.take_puts() == [(bucket_put[0], 30, bucket_put[2])]
    fleet.resize(taken, 80, clock.monotonic())  # and a charge beyond is counted there too
    assert fleet.take_puts() == [(bucket_put[0], 80, bucket_put[2])]


def test_a_charge_beyond_an_open_lease_raises_its_entry() -> None:
    _, fleet, now = leased(100, limit=1000)
    taken = fleet.take(100, now)
    assert taken is not None
    fleet.resize(taken, 150, now)
    assert fleet.take_puts() == [("e1", 150, server_us(now) + 1_000_000 + 3_000_000)]


def test_unsent_puts_are_kept_and_newer_ones_win() -> None:
    _, fleet, now = leased(2)
    taken = fleet.take(2, now)
    assert taken is not None
    fleet.close_due(now)
    first = fleet.take_puts()
    fleet.resize(taken, 1, now)
    fleet.unsent(first)
    puts = {put[0]: put for put in fleet.take_puts()}
    assert puts["e1"] == ("e1", 0, 0)
    assert next(put for entry, put in puts.items() if entry.startswith("c:"))[1] == 1


def test_slices_follow_the_recent_rate_within_a_share_of_the_limit() -> None:
    clock = VirtualClock()
    fleet = window(clock, limit=1000)
    now = clock.monotonic()
    assert fleet.want(3, now) == 3  # no history: what is needed
    grant(fleet, "e1", 1000, now)
    for _ in range(100):
        clock.advance(0.01)
        assert fleet.take(1, clock.monotonic()) is not None
    rate = fleet.rate(clock.monotonic())
    assert 50 < rate < 100
    assert fleet.want(1, clock.monotonic()) == 1 + math.ceil(rate * 1.0)
    fleet.set_mode("fleet", 10, clock.monotonic())
    assert fleet.want(1, clock.monotonic()) == 50  # 1000 * 0.5 / 10 hosts


# ---------------------------------------------------------------------------- Redis away


def test_share_after_every_entry_of_before_has_left_is_the_hosts_share() -> None:
    clock = VirtualClock()
    fleet = window(clock, limit=100, span_s=3.0)
    now = away(fleet, clock, 3)
    assert fleet.available(now) == math.floor(90 / 3)
    assert fleet.take(30, now) is not None
    assert fleet.available(now) == 0
    clock.advance(3.0)  # its own admissions left the span
    assert fleet.available(clock.monotonic()) == 30
    fleet.set_mode("closed", 3, clock.monotonic())
    assert fleet.available(clock.monotonic()) == 0


def test_a_host_that_never_reached_redis_admits_nothing() -> None:
    clock = VirtualClock()
    fleet = FleetWindow("w", 100, 3.0, 1.0, host="h1", time=ServerTime())
    assert fleet.mode == "closed"
    assert fleet.available(clock.monotonic()) == 0
    fleet.set_mode("share", 0, clock.monotonic())
    assert fleet.take(1, clock.monotonic()) is None


def test_open_leases_stay_usable_when_redis_is_away() -> None:
    _, fleet, now = leased(5, limit=100)
    fleet.set_mode("closed", 3, now)
    assert fleet.available(now) == 5


def test_admissions_made_while_away_are_pushed_when_redis_is_back() -> None:
    clock = VirtualClock()
    fleet = window(clock, limit=100, span_s=3.0)
    now = away(fleet, clock, 2)
    taken = fleet.take(10, now)
    assert taken is not None
    clock.advance(0.5)
    puts = fleet.restore(False, clock.monotonic())
    assert len(puts) == 1
    entry, amount, expiry = puts[0]
    assert amount == 10
    assert expiry >= server_us(now) + 3_000_000  # never earlier than a span after admission
    assert fleet.own_live == 10  # still on the share (a re-sync window): still counted in it
    fleet.resize(taken, 4, clock.monotonic())  # settled after the push: the bucket gives back
    assert fleet.take_puts() == [(entry, 4, expiry)]
    assert fleet.own_live == 4
    # Redis restarted empty: everything of this host's own that is live goes back
    again = fleet.restore(True, clock.monotonic())
    assert again == [(entry, 4, expiry)]
    fleet.set_mode("fleet", 2, clock.monotonic())
    assert fleet.own_live == 0
    assert fleet.take_puts() == []  # pushed already: not again


def test_admissions_pushed_in_a_resync_window_still_count_in_the_share() -> None:
    """The link pushes what was admitted while away at the start of a re-sync window and
    stays on the share until it seals: what it pushed was admitted within the same span, so
    it still counts in the share (before, the push freed the whole share again, and each
    host could admit its share twice in one span: two hosts 1.8 times the limit)."""
    clock = VirtualClock()
    fleet = window(clock, limit=30, span_s=3.0)
    away(fleet, clock, 3)
    assert fleet.take(9, clock.monotonic()) is not None  # floor(27 / 3)
    clock.advance(0.5)
    assert len(fleet.restore(False, clock.monotonic())) == 1
    assert fleet.take(1, clock.monotonic()) is None
    clock.advance(3.0)  # left their span: the share is whole again
    assert fleet.available(clock.monotonic()) == 9


def test_admissions_made_on_the_share_after_the_push_go_out_when_back_in_the_fleet() -> None:
    """The link pushes what was admitted while away, then waits out the re-sync window
    (nobody borrows), still on the share: what it admits then becomes puts when the window
    goes back to the fleet (before, it was never pushed, and the fleet borrowed on top)."""
    clock = VirtualClock()
    fleet = window(clock, limit=100, span_s=3.0)
    now = away(fleet, clock, 2)
    assert fleet.restore(False, now) == []  # the push: nothing admitted yet
    assert fleet.take(5, now) is not None
    clock.advance(0.1)
    fleet.set_mode("fleet", 2, clock.monotonic())
    ((_, amount, expiry),) = fleet.take_puts()
    assert amount == 5
    assert expiry >= server_us(now) + 3_000_000  # a span after its admission
    assert fleet.own_live == 0


def test_own_admissions_while_away_leave_the_share_after_their_span() -> None:
    clock = VirtualClock()
    fleet = window(clock, limit=30, span_s=3.0)
    away(fleet, clock, 3)
    assert fleet.take(9, clock.monotonic()) is not None  # floor(27 / 3)
    assert fleet.take(1, clock.monotonic()) is None
    clock.advance(3.0)
    assert fleet.available(clock.monotonic()) == 9


@pytest.mark.parametrize("mode", ["share", "closed"])
def test_modes_switch_without_losing_leases(mode: str) -> None:
    _, fleet, now = leased(3)
    fleet.set_mode(mode, 2, now)  # type: ignore[arg-type]
    fleet.set_mode("fleet", 2, now)
    assert fleet.available(now) == 3


def test_taking_nothing_is_free() -> None:
    clock = VirtualClock()
    fleet = window(clock)
    taken = fleet.take(0, clock.monotonic())
    assert isinstance(taken, Taken)
    assert taken.amount == 0


def test_a_reloaded_limit_and_span_apply_to_what_comes_next() -> None:
    _, fleet, now = leased(2, limit=10, span_s=3.0)
    fleet.set_limit(40, 6.0)
    fleet.set_mode("fleet", 1, now)
    assert fleet.want(1, now) == 1  # no rate yet; within the new limit's share
    assert fleet.take(2, now) is not None
    fleet.close_due(now)
    bucket = fleet.take_puts()[1]
    assert bucket[2] >= server_us(now) + 6_000_000  # counted for the new span


def test_share_says_when_the_share_has_room_again() -> None:
    """A waiter on a host serving its share while Redis is away wakes when its own entries
    of before leave the log, when entries of before can no longer count, or when its own
    admissions leave the span (no borrow can wake it)."""
    clock = VirtualClock()
    fleet = window(clock, limit=100, span_s=3.0, lease_s=1.0)
    start = clock.monotonic()
    grant(fleet, "e1", 10, start)  # 10 in the log, leaving at start + 4
    gone = start + 0.5
    clock.advance(0.5)
    fleet.set_mode("share", 3, gone)
    assert fleet.available(gone) == 10  # its lease still holds them
    assert fleet.take(10, gone) is not None
    assert fleet.free_at(1, gone) == pytest.approx(start + 4.0, abs=0.01)  # its entry left
    assert fleet.free_at(11, gone) == pytest.approx(fleet.blind_until)  # then its share
    assert fleet.blind_until == pytest.approx(gone + 1.0 + 3.0, abs=fleet.grid_us / 1e6 + 0.01)
    assert fleet.free_at(31, gone) == math.inf  # more than the share ever is
    clock.advance(fleet.blind_until - gone)
    later = clock.monotonic()
    assert fleet.available(later) == 30
    assert fleet.take(30, later) is not None
    assert fleet.free_at(1, later) == pytest.approx(later + 3.0)  # its own admissions left
    fleet.set_mode("fleet", 3, later)
    assert fleet.free_at(1, later) == math.inf  # a borrow's answer says when


def test_an_admission_retimed_after_its_lease_counts_a_span_from_its_hand_off() -> None:
    """A waiter admitted from a lease whose task runs late (after the lease closed) is
    counted from when its request leaves: its units move into a bucket a span after that."""
    clock, fleet, now = leased(5, limit=100, span_s=3.0, lease_s=1.0)
    taken = fleet.take(5, now)  # used up: closed at the next flush
    assert taken is not None
    assert fleet.close_due(now)
    puts = {entry: (amount, expiry) for entry, amount, expiry in fleet.take_puts()}
    bucket_expiry = next(expiry for entry, (amount, expiry) in puts.items() if amount == 5)
    clock.advance(0.4)
    later = clock.monotonic()
    fleet.retime(taken, later)
    moved = fleet.take_puts()
    assert (5, bucket_expiry) not in [(amount, expiry) for _, amount, expiry in moved]
    counted = [(amount, expiry) for _, amount, expiry in moved if amount == 5]
    assert counted
    assert counted[0][1] >= server_us(later) + 3_000_000  # a span from the hand-off
    fleet.resize(taken, 2, later)  # settled later: the moved units give back
    assert [amount for _, amount, _ in fleet.take_puts()] == [2]


def test_an_admission_retimed_within_its_open_lease_stays_in_it() -> None:
    clock, fleet, now = leased(10, limit=100, span_s=3.0, lease_s=1.0)
    taken = fleet.take(2, now)
    assert taken is not None
    clock.advance(0.3)
    fleet.retime(taken, clock.monotonic())
    assert fleet.take_puts() == []
    assert fleet.leases[0].last_at == clock.monotonic()  # its bucket will count from here


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["grant", "take", "resize", "close", "wait"]),
            st.integers(min_value=0, max_value=30),
        ),
        max_size=40,
    )
)
def test_what_leases_hold_is_kept_without_walking_them(steps: list[tuple[str, int]]) -> None:
    """:meth:`FleetWindow.held` answers from a running total before the first deadline:
    always what a walk of the leases gives."""
    clock = VirtualClock()
    fleet = window(clock, limit=1000, span_s=3.0, lease_s=1.0)
    taken: list[Taken] = []
    for index, (action, amount) in enumerate(steps):
        now = clock.monotonic()
        if action == "grant":
            grant(fleet, f"e{index}", amount, now)
        elif action == "take":
            got = fleet.take(amount, now)
            if got is not None:
                taken.append(got)
        elif action == "resize" and taken:
            fleet.resize(taken[amount % len(taken)], amount // 2, now)
        elif action == "close":
            fleet.close_due(now)
        else:
            clock.advance(amount / 40)
        now = clock.monotonic()
        walked = sum(
            lease.granted - lease.used
            for lease in fleet.leases
            if lease.deadline > now and lease.granted > lease.used
        )
        assert fleet.held(now) == walked


def test_share_right_after_redis_went_away_reuses_only_the_hosts_own_entries() -> None:
    """Other hosts may have borrowed, up to the outage, every unit that had left the log
    (a snapshot a heartbeat old says nothing of that): until entries of before have surely
    left, a host admits only into its own entries that leave after the outage, within its
    share. In the log at the outage: its bucket of 4 (until +0.5) and its lease of 5."""
    clock = VirtualClock()
    fleet = window(clock, limit=30, span_s=2.0, lease_s=1.0)
    start = clock.monotonic()
    grant(fleet, "e1", 4, start)
    assert fleet.take(4, start) is not None
    fleet.close_due(start)  # used up: a bucket of 4 leaving at start + 2
    fleet.acknowledged(fleet.take_puts())
    clock.advance(0.5)
    grant(fleet, "e2", 5, clock.monotonic())  # leaving at start + 3.5
    clock.advance(0.2)
    gone = clock.monotonic()
    fleet.set_mode("share", 3, gone)
    assert fleet.available(gone) == 5  # its lease, nothing more
    assert fleet.take(5, gone) is not None
    assert fleet.take(1, gone) is None
    left = start + 2.0 + fleet.grid_us / 1e6 + 2 * CLOCK_SLACK_S  # its bucket's expiry, late
    clock.advance(left - gone)  # its bucket has left: 4 free again
    assert fleet.available(clock.monotonic()) == 4
    clock.advance(1.5)  # its lease's entry left too: 9, within the share of 9
    assert fleet.take(9, clock.monotonic()) is not None
    assert fleet.take(1, clock.monotonic()) is None


def test_entries_redis_may_not_hold_as_confirmed_free_nothing() -> None:
    """A put not sent, or sent and not answered, when Redis went away: Redis may hold either
    version of the entry, so it frees nothing; what an answer confirmed does."""
    clock = VirtualClock()
    fleet = window(clock, limit=30, span_s=2.0, lease_s=1.0)
    start = clock.monotonic()
    for entry in ("e1", "e2", "e3"):
        grant(fleet, entry, 2, start)
    assert fleet.take(6, start) is not None
    fleet.close_due(start)  # all used up: one bucket of 6, and three leases returned
    sent = fleet.take_puts()  # in flight when Redis went away
    fleet.set_mode("share", 3, start)
    clock.advance(3.0 + 2 * CLOCK_SLACK_S)  # every version of them has left by now
    assert clock.monotonic() < fleet.blind_until
    assert fleet.available(clock.monotonic()) == 0
    fleet.unsent(sent)
    assert not fleet.sending
    fleet.set_mode("fleet", 3, clock.monotonic())  # Redis back, the puts confirmed
    fleet.acknowledged(fleet.take_puts())
    assert sorted(amount for amount, _ in fleet.confirmed.values()) == [6]


def test_a_host_alone_admits_the_limit_less_its_own_entries_any_version() -> None:
    """One host seen: the log holds only its entries. A borrow in flight may have been
    granted (the answer lost), and a put in flight may not have been applied: both count,
    until they have surely left."""
    clock = VirtualClock()
    fleet = window(clock, limit=30, span_s=2.0, lease_s=1.0)
    now = clock.monotonic()
    grant(fleet, "e1", 5, now)  # leaving at now + 3
    fleet.borrowing = 4  # a borrow in flight
    fleet.set_mode("share", 1, now)
    fleet.borrowing = 0  # it failed
    assert fleet.available(now) == 5 + math.floor(27 - 5 - 4)
    clock.advance(fleet.blind_until - now)
    assert fleet.available(clock.monotonic()) == 27


def test_hosts_seen_never_go_down_while_redis_is_away() -> None:
    """A Redis back empty knows only the hosts that have come back yet: still in ``share``,
    the host keeps dividing by the hosts it saw when Redis went away."""
    clock = VirtualClock()
    fleet = window(clock, limit=30, span_s=2.0)
    now = away(fleet, clock, 3)
    fleet.set_mode("share", 1, now)
    assert fleet.hosts == 3
    assert fleet.available(now) == 9
    fleet.set_mode("fleet", 1, now)
    assert fleet.hosts == 1


def test_an_admission_made_while_redis_is_away_stays_in_the_share_when_retimed() -> None:
    """Every request is retimed at its hand-off: one admitted on this host's share must stay
    counted in it (before, it moved into a bucket for Redis and left the share: 117 provider
    429s in bench/cluster.py with Valkey killed)."""
    clock = VirtualClock()
    fleet = window(clock, limit=30, span_s=2.0)
    away(fleet, clock, 3)
    admitted = []
    for _ in range(9):  # floor(27 / 3)
        taken = fleet.take(1, clock.monotonic())
        assert taken is not None
        admitted.append(taken)
    clock.advance(0.001)
    for taken in admitted:
        fleet.retime(taken, clock.monotonic())
    assert fleet.available(clock.monotonic()) == 0
    assert fleet.take(1, clock.monotonic()) is None
    clock.advance(2.0)
    assert fleet.available(clock.monotonic()) == 9  # a span after the hand-off
