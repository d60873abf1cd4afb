"""The fleet's spend hash fields round-trip whatever names a request may carry: an app name is
any string a client sends (``Hello.app``, up to 256 characters, tabs included), and a row
whose field cannot be read back is a row missing from ``quotad spend --fleet``. What the
guardrails found rides in fields of its own, which older hosts skip and whose absence (an
older host's records) counts nothing; a field of the wrong shape from a hostile Redis is
skipped, never a crash."""

from __future__ import annotations

import msgspec
import pytest

from quotad.daemon.cluster.spend import (
    MAX_COUNT,
    MAX_KEYS_PER_DAY,
    MAX_NANO,
    OTHER_KEY,
    FleetSpend,
    _parse,
)
from quotad.daemon.declared_names import DeclaredNames

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
    "name",
    [
        msgspec.json.encode(["h", "a" * 1025, "m", "t"]),  # a name no request carries
        msgspec.json.encode(["h", "a", "m", "t" * 10_000_000]),
        b"[" + b'"",' * 1_000_000 + b'""]',  # a million parts
    ],
    ids=["1025-chars", "10M-chars", "1M-parts"],
)
def test_a_field_name_longer_than_any_host_writes_is_skipped(name: bytes) -> None:
    """Names read back from Redis reach every ``spend --fleet`` reply: one of megabytes,
    written by whoever can write the fleet's Redis, was decoded whole and sent on in every
    report. A name is at most 1,024 characters, a field name at most 32 KiB."""
    assert _parse("2026-12-06", name, b"1 2 3 4 5 6 7 8") is None


@pytest.mark.parametrize(
    "value",
    [
        b"1 2 3 4",  # four figures: a format no released host wrote with JSON names
        b"1 2 3 4 5 6 7",
        b"1 2 3 4 5 6 7 8 9",
        b"1 2 3 4 5 6 7 " + b" " * 1_000_000 + b"8",  # a hostile Redis: spaces without end
        b"1 2 3 4 5 6 7 " + b"9" * 5000,  # a figure of 5,000 digits
        b"1 2 3 -4 5 6 7 8",
        # what int() takes but no host writes (each read as a figure before)
        b"1 2 3 4 5 6 7 +8",
        b"1 2 3 4 5 6 7 8_000",
        b" 1 2 3 4 5 6 7 8",
        b"1 2 3 4 5 6 7 8\n",
        b"1 2 3 4 5 6 7 0008",
        b"1 2 3 4 5 6 7 " + b"0" * 4000 + b"8",  # padded to 4 KB: decoded and read before
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


# --------------------------------------------------------------------------- guardrails

FOUND_NAME = b'["h","a","m","t","guardrails"]'


def test_what_the_guardrails_found_is_pushed_beside_the_spend_and_reads_back() -> None:
    spend = FleetSpend("host-1")
    spend.add("2026-12-06", "a\tb", "m", "t", 0.0, 0, 0, error=True, blocked=True,
              entities={"credit_card": 1})  # fmt: skip
    spend.add("2026-12-06", "a\tb", "m", "t", 0.25, 10, 20, entities={"email": 2, "phone": 1})
    spend.add("2026-12-06", "quiet", "m", "t", 0.5, 10, 20)  # found nothing: no such field
    fields = spend.fields(everything=True)["2026-12-06"]
    rows = [_parse("2026-12-06", name.encode(), value.encode()) for name, value in fields]
    assert len(rows) == 3
    spent = {row.app: row for row in rows if row is not None and row.requests}
    [found] = [row for row in rows if row is not None and not row.requests]
    assert (spent["a\tb"].requests, spent["a\tb"].errors, spent["a\tb"].blocked) == (2, 1, 0)
    assert (found.host, found.app, found.model, found.target) == ("host-1", "a\tb", "m", "t")
    assert (found.cost_usd, found.requests, found.blocked) == (0.0, 0, 1)
    assert found.entities == {"credit_card": 1, "email": 2, "phone": 1}
    # an older host reads names of four parts: it skips the guardrails field, not misreads it
    old_names = msgspec.json.Decoder(tuple[str, str, str, str])
    for name, value in fields:
        if value.startswith("blocked="):
            with pytest.raises(msgspec.ValidationError):
                old_names.decode(name)
        else:
            assert len(value.split(" ")) == 8  # the spend value as older hosts write it


def test_a_host_loaded_from_its_ledger_pushes_what_its_guardrails_found() -> None:
    spend = FleetSpend("host-1")
    spend.load(
        [("2026-12-06", "a", "m", "t", 0.5, 3, 30, 6, 1, 0, 0.0, 0)],
        [("2026-12-06", "a", "m", "t", "blocked", 1), ("2026-12-06", "a", "m", "t", "ip", 4)],
    )
    fields = dict(spend.fields(everything=True)["2026-12-06"])
    assert fields['["host-1","a","m","t","guardrails"]'] == "blocked=1 ip=4"


def test_an_unsent_guardrails_field_is_pushed_again() -> None:
    spend = FleetSpend("host-1")
    spend.add("2026-12-06", "a", "m", "t", 0.1, 1, 1, entities={"email": 1})
    fields = spend.fields(everything=False)
    assert len(fields["2026-12-06"]) == 2
    spend.unsent(fields)
    assert spend.fields(everything=False) == fields


def test_an_older_hosts_record_counts_nothing_found() -> None:
    row = _parse("2026-12-06", b'["old","a","m","t"]', b"250000000 1 10 20 0 0 0 0")
    assert row is not None
    assert (row.host, row.requests, row.blocked, row.entities) == ("old", 1, 0, {})


def test_a_newer_hosts_entity_kind_is_left_out() -> None:
    row = _parse("2026-12-06", FOUND_NAME, b"blocked=2 email=3 fingerprint=7")
    assert row is not None
    assert (row.blocked, row.entities) == (2, {"email": 3})


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"blocked",
        b"blocked=",
        b"=1",
        b"blocked=-1",
        b"blocked=+1",
        b"blocked=01",
        b"blocked=1_0",
        b"email=\xd9\xa3",  # an Arabic-Indic three: int() would take it
        b"EMAIL=1",
        b"email=1  phone=2",  # two spaces
        b"email=1 ",
        b"blocked=1 blocked=2",  # a kind twice
        b"blocked=%d" % (MAX_COUNT + 1),
        b"blocked=" + b"9" * 5000,
        # well-formed but longer than any host writes (62 kinds unknown here)
        b" ".join(first + b"_" * n + b"=1" for first in (b"j", b"k") for n in range(1, 32)),
        b"blocked=1 " + b" " * 1_000_000,  # a hostile Redis: spaces without end
        b"x" * 33 + b"=1",
    ],
)
def test_a_guardrails_value_of_the_wrong_shape_is_skipped(value: bytes) -> None:
    assert _parse("2026-12-06", FOUND_NAME, value) is None


@pytest.mark.parametrize(
    "name",
    [
        b'["h","a","m","t","other"]',
        b'["h","a","m","t","guardrails","x"]',
        b'["h","a","m","t",1]',
        b'["h","a","m","guardrails"]',  # four parts: a spend field, and this is no spend value
    ],
)
def test_a_guardrails_name_of_the_wrong_shape_is_skipped(name: bytes) -> None:
    assert _parse("2026-12-06", name, b"blocked=1") is None


def test_keys_past_the_bound_of_a_day_count_under_other_with_the_totals_whole() -> None:
    """Apps and models are named by clients (an unknown model is recorded as asked), and the
    host kept and pushed a key per (app, model, target) for 62 days: a client naming a new
    model each request grew its memory and the fleet's Redis without end (found by the
    growth audit). Past MAX_KEYS_PER_DAY a day's new keys count under "(other)"."""
    day = "2026-12-06"
    spend = FleetSpend("host-1")
    for number in range(MAX_KEYS_PER_DAY + 500):
        spend.add(day, "app", f"model-{number}", "", 0.001, 10, 0, error=True, blocked=True)
    rows = spend.days[day]
    assert len(rows) == MAX_KEYS_PER_DAY + 1
    assert rows[OTHER_KEY][1] == 500  # requests
    assert sum(figures[1] for figures in rows.values()) == MAX_KEYS_PER_DAY + 500
    assert sum(figures[0] for figures in rows.values()) == (MAX_KEYS_PER_DAY + 500) * 1_000_000
    assert spend.found[day][OTHER_KEY] == {"blocked": 500}
    assert len(spend.fields(everything=True)[day]) == 2 * (MAX_KEYS_PER_DAY + 1)
    spend.add(day, "app", "model-7", "", 0.001, 10, 0)  # a key kept apart stays apart
    assert rows[("app", "model-7", "")][1] == 2
    # loaded from a ledger of as many keys, the same
    loaded = FleetSpend("host-1")
    ledger = [
        (day, "app", f"model-{n}", "", 0.001, 1, 10, 0, 1, 0, 0.0, 0)
        for n in range(MAX_KEYS_PER_DAY + 500)
    ]
    loaded.load(ledger)
    assert len(loaded.days[day]) == MAX_KEYS_PER_DAY + 1
    assert loaded.days[day][OTHER_KEY][1] == 500


def test_the_config_names_are_kept_apart_past_the_bound_of_a_day() -> None:
    """The bound was first come, first served: a client naming 1,000 models first folded the
    spend of the config's own apps, groups and targets into "(other)" in ``spend --fleet``."""
    day = "2026-12-06"
    spend = FleetSpend("host-1")
    spend.declared = DeclaredNames.of(["indexer"], ["fast"], ["openai/gpt-4o-mini"])
    for number in range(MAX_KEYS_PER_DAY):
        spend.add(day, "app", f"model-{number}", "", 0.001, 10, 0)
    for model in ("fast", "openai/gpt-4o-mini", "gpt-4o-mini"):
        spend.add(day, "indexer", model, "openai/gpt-4o-mini", 0.001, 10, 0)
    spend.add(day, "indexer", "fast", "", 0.001, 10, 0)  # refused before reaching a target
    spend.add(day, "indexer", "made-up", "openai/gpt-4o-mini", 0.001, 10, 0)
    spend.add(day, "stranger", "fast", "openai/gpt-4o-mini", 0.001, 10, 0)
    rows = spend.days[day]
    for model in ("fast", "openai/gpt-4o-mini", "gpt-4o-mini"):
        assert rows[("indexer", model, "openai/gpt-4o-mini")][1] == 1
    assert rows[("indexer", "fast", "")][1] == 1
    assert rows[OTHER_KEY][1] == 2  # what the config does not name, all three parts
