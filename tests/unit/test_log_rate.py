"""How often an event any client can repeat is logged (:mod:`quotad.daemon.net.log_rate`)."""

from __future__ import annotations

from quotad.daemon.net.log_rate import LOG_EVERY, RepeatCounts


def test_repeat_counts_say_when_each_kind_is_due() -> None:
    """The count of each kind apart: the first, then every ``LOG_EVERY``-th is due."""
    counts: RepeatCounts[str] = RepeatCounts()
    due = [(kind, n) for n in range(2 * LOG_EVERY) for kind in "ab" if counts.count(kind)]
    last = 2 * LOG_EVERY - 1
    assert due == [
        ("a", 0),
        ("b", 0),
        ("a", LOG_EVERY - 1),
        ("b", LOG_EVERY - 1),
        ("a", last),
        ("b", last),
    ]
    assert counts.counts == {"a": 2 * LOG_EVERY, "b": 2 * LOG_EVERY}
