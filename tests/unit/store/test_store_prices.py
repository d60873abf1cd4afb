"""Prices: the built-in table, name normalization, overrides, and what usage costs."""

from __future__ import annotations

import datetime

import pytest

from quotad.daemon.config import PriceConfig
from quotad.daemon.store.prices import (
    BUILT_IN_PRICES,
    MAX_MEMOIZED_TARGETS,
    PRICES_TAKEN,
    Price,
    PriceTable,
    model_name_candidates,
)
from quotad.protocol.messages import Usage


def test_the_table_is_dated_and_covers_the_three_providers() -> None:
    assert datetime.date.fromisoformat(PRICES_TAKEN)
    for model in ("gpt-4o-mini", "claude-haiku-4-5", "llama-3.1-8b-instant"):
        assert model in BUILT_IN_PRICES
    assert all(price.output >= 0 and price.input >= 0 for price in BUILT_IN_PRICES.values())


@pytest.mark.parametrize(
    ("target", "model"),
    [
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("groq/llama-3.1-8b-instant", "llama-3.1-8b-instant"),
        ("work-account/gpt-4o-mini", "gpt-4o-mini"),  # provider-agnostic
        ("openai/gpt-4o-2024-08-06", "gpt-4o"),  # dated snapshot
        ("openai/gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("claude/claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude/claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("vertex/claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("claude/Claude-Sonnet-4.5", "claude-sonnet-4-5"),  # case and dots
        ("groq/openai/gpt-oss-120b", "openai/gpt-oss-120b"),  # a model name with a slash
        ("router/anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),  # organisation prefix
    ],
)
def test_targets_find_their_row(target: str, model: str) -> None:
    assert PriceTable({}).for_target(target) == BUILT_IN_PRICES[model]


def test_unknown_models_are_unpriced_and_cost_nothing() -> None:
    table = PriceTable({})
    assert table.for_target("ollama/llama3.2") is None
    assert table.cost("ollama/llama3.2", Usage(prompt_tokens=10**6, completion_tokens=10**6)) == 0


def test_overrides_win_exactly_and_through_normalization() -> None:
    table = PriceTable(
        {
            "openai/gpt-4o": PriceConfig(input=1.0, output=2.0),
            "local/my-model": PriceConfig(input=0.5, output=0.5, cached_input=0.1),
        }
    )
    assert table.for_target("openai/gpt-4o") == Price(1.0, 2.0, 1.0)
    assert table.for_target("openai/gpt-4o-2024-08-06") == Price(1.0, 2.0, 1.0)
    assert table.for_target("local/my-model") == Price(0.5, 0.5, 0.1)
    # an override is per target: another provider's gpt-4o keeps the built-in price
    assert table.for_target("azure/gpt-4o") == BUILT_IN_PRICES["gpt-4o"]


def test_cost_bills_cached_prompt_tokens_at_the_cached_price() -> None:
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=400_000)
    assert price.cost(usage) == pytest.approx(600_000 * 2e-6 + 400_000 * 0.5e-6 + 4.0)


def test_most_expensive_takes_each_price_from_the_dearest_target() -> None:
    table = PriceTable({})
    dear = table.most_expensive(("openai/gpt-4o", "groq/llama-3.1-8b-instant", "x/unknown"))
    assert dear.input == BUILT_IN_PRICES["gpt-4o"].input
    assert dear.output == BUILT_IN_PRICES["gpt-4o"].output
    assert table.most_expensive(("x/unknown", "y/unknown")) == Price(0.0, 0.0, 0.0)


def test_candidates_go_from_specific_to_general() -> None:
    assert list(model_name_candidates("claude-3-5-haiku-latest")) == [
        "claude-3-5-haiku-latest",
        "claude-3-5-haiku",
    ]


def test_the_memo_of_lookups_is_bounded() -> None:
    """A name to price can come from a client (a warm entry's ``response.target``): names
    made up without end, or of a megabyte, keep the memo bounded, and still find their
    prices."""
    table = PriceTable({})
    for n in range(3 * MAX_MEMOIZED_TARGETS):
        assert table.for_target(f"made/up-{n}") is None
        assert table.memoized <= MAX_MEMOIZED_TARGETS
    long_name = "openai/gpt-4o-mini" + "-x" * 500_000
    before = table.memoized
    assert table.for_target(long_name) is None
    assert table.memoized == before
    assert table.for_target("openai/gpt-4o-mini") == BUILT_IN_PRICES["gpt-4o-mini"]
    assert table.for_target("openai/gpt-4o-mini") == BUILT_IN_PRICES["gpt-4o-mini"]
