"""The fleet's spend hash fields round-trip whatever names a request may carry: an app name is
any string a client sends (``Hello.app``, up to 256 characters, tabs included), and a row
whose field cannot be read back is a row missing from ``quotad spend --fleet``."""

from __future__ import annotations

import pytest

from quotad.daemon.cluster.spend import MAX_COUNT, MAX_NANO, FleetSpend, _parse

NAMES = [
    ("batch", "fast", "openai/gpt-4o"),
    ("a\tb", "fast", "openai/gpt-4o"),  # a tab in an app name
    ("é\n\x00", "m", "t"),  # newline and NUL
    ("a" * 256, "m" * 256, "t" * 256),  # every name at its bound
    ("", "", ""),  # a request no target answered, from an unnamed app
]


@pytest.mark.parametrize(("app", "model", "target"), NAMES)
def test_a_pushed_field_reads_back_as_the_row_it_came_from(
    app: str, model: str, target: str
) -> None:
    spend = FleetSpend("host-1")
    spend.add("2026-12-06", app, model, target, 0.25, 10, 20, error=False)
    [(name, value)] = spend.fields(everything=True)["2026-12-06"]
    row = _parse("2026-12-06", name.encode(), value.encode())
    assert row is not None
    assert (row.host, row.app, row.model, row.target) == ("host-1", app, model, target)
    assert (row.cost_usd, row.requests, row.prompt_tokens, row.completion_tokens) == (
        0.25, 1, 10, 20,
    )  # fmt: skip


def test_an_unsent_field_is_pushed_again() -> None:
    spend = FleetSpend("host-1")
    spend.add("2026-12-06", "a\tb", "m", "t", 0.1, 1, 1)
    fields = spend.fields(everything=False)
    assert spend.fields(everything=False) == {}
    spend.unsent(fields)
    assert spend.fields(everything=False) == fields


def test_a_field_of_the_wrong_shape_is_skipped() -> None:
    for name, value in ((b"x", b"1 2 3 4"), (b'["h","a","m"]', b"1 2 3 4"), (b"\xff", b"")):
        assert _parse("2026-12-06", name, value) is None


@pytest.mark.parametrize(
    "value",
    [
        b"1 2 3 4",  # four figures: a format no released host wrote with JSON names
        b"1 2 3 4 5 6 7",
        b"1 2 3 4 5 6 7 8 9",
        b"1 2 3 4 5 6 7 " + b" " * 1_000_000 + b"8",  # a hostile Redis: spaces without end
        b"1 2 3 4 5 6 7 " + b"9" * 5000,  # a figure of 5,000 digits
        b"1 2 3 -4 5 6 7 8",
    ],
)
def test_a_value_that_is_not_eight_figures_is_skipped(value: bytes) -> None:
    assert _parse("2026-12-06", b'["h","a","m","t"]', value) is None


def test_eight_figures_read_back_whole() -> None:
    row = _parse("2026-12-06", b'["h","a","m","t"]', b"250000000 1 10 20 1 2 500000000 3")
    assert row is not None
    assert (row.cost_usd, row.errors, row.cache_hits, row.saved_usd, row.semantic_hits) == (
        0.25, 1, 2, 0.5, 3,
    )  # fmt: skip


def test_a_figure_past_its_bound_is_skipped_not_a_crash() -> None:
    """A cost of 400 digits is an int too large for a float (OverflowError, which the parser
    did not catch: one such field written into the fleet's Redis failed every report), and
    counts whose sum a reply cannot carry (past 2**64) are refused as well."""
    name = b'["h","a","m","t"]'
    for value in (
        b"1" + b"0" * 400 + b" 1 10 20 0 0 0 0",
        b"1 1 10 20 0 0 1" + b"0" * 400 + b" 0",
        b"1 %d 10 20 0 0 0 0" % (MAX_COUNT + 1),
        b"%d 1 10 20 0 0 0 0" % (MAX_NANO + 1),
    ):
        assert _parse("2026-12-06", name, value) is None
    row = _parse("2026-12-06", name, b"%d %d 0 0 0 0 0 0" % (MAX_NANO, MAX_COUNT))
    assert row is not None
    assert (row.cost_usd, row.requests) == (1e9, MAX_COUNT)
