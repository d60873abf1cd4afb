"""What tokens cost: a built-in price table for OpenAI, Anthropic and Groq models, overridden by
``[prices."provider/model"]``, and the cost of a request from its usage.

Prices are USD per 1M tokens: input, output, and cached input (prompt tokens the provider
served from its own prompt cache; the input price when a model has none). The built-in table
was taken on :data:`PRICES_TAKEN` from the providers' published pricing pages (OpenAI API
pricing, Anthropic "Pricing", Groq "Models"/"Pricing"); providers change prices, so check
before relying on them, and override any row in the config.

A target ``provider/model`` finds its price by the model's name, whatever the provider is
called (``groq/llama-3.1-8b-instant``, ``openai/gpt-4o-mini`` and a self-named
``work/gpt-4o-mini`` all find their rows), after light normalization: lower case, dated
snapshots and ``-latest`` dropped (``gpt-4o-2024-08-06`` → ``gpt-4o``,
``claude-3-5-haiku-20241022`` → ``claude-3-5-haiku``), dots in Claude names as dashes, and,
for names with an organisation prefix (``meta-llama/…``), the last part as a fallback. A
``[prices]`` override matches its target exactly, or through the same normalization. A
target with no price costs 0 and is flagged ``unpriced``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from quotad.daemon.config import PriceConfig
from quotad.protocol.messages import Usage

PRICES_TAKEN: Final = "2026-11-23"
"""When the built-in table was taken from the providers' pricing pages."""

PER_TOKEN: Final = 1e-6
"""Prices are per 1M tokens."""

MAX_MEMOIZED_TARGETS: Final = 4096
"""Lookups kept at most (the memo starts over past it). The router's targets are far fewer,
but a name to price can come from a client (a ``warm`` entry's ``response.target``)."""

MAX_MEMOIZED_NAME: Final = 1024
"""Characters of the longest name memoized (a target is ``provider/model``, its model at most
256 characters); a longer one is priced afresh each time."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens."""

    input: float
    output: float
    cached_input: float

    def cost(self, usage: Usage) -> float:
        """What ``usage`` costs at this price, in USD."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        return (
            (usage.prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + usage.completion_tokens * self.output
        ) * PER_TOKEN


def _row(input: float, output: float, cached_input: float | None = None) -> Price:
    return Price(input, output, input if cached_input is None else cached_input)


# model name → price (input, output, cached input), USD per 1M tokens, taken PRICES_TAKEN.
BUILT_IN_PRICES: Final[Mapping[str, Price]] = {
    # ---- OpenAI (platform.openai.com/docs/pricing, standard tier)
    "gpt-5.4": _row(2.50, 15.00, 0.25),
    "gpt-5.4-mini": _row(0.75, 4.50, 0.075),
    "gpt-5.2": _row(1.75, 14.00, 0.175),
    "gpt-5.1": _row(1.25, 10.00, 0.125),
    "gpt-5": _row(1.25, 10.00, 0.125),
    "gpt-5-mini": _row(0.25, 2.00, 0.025),
    "gpt-5-nano": _row(0.05, 0.40, 0.005),
    "gpt-5-pro": _row(15.00, 120.00),
    "gpt-4.1": _row(2.00, 8.00, 0.50),
    "gpt-4.1-mini": _row(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _row(0.10, 0.40, 0.025),
    "gpt-4o": _row(2.50, 10.00, 1.25),
    "gpt-4o-mini": _row(0.15, 0.60, 0.075),
    "o1": _row(15.00, 60.00, 7.50),
    "o3": _row(2.00, 8.00, 0.50),
    "o3-mini": _row(1.10, 4.40, 0.55),
    "o4-mini": _row(1.10, 4.40, 0.275),
    "gpt-4-turbo": _row(10.00, 30.00),
    "gpt-4": _row(30.00, 60.00),
    "gpt-3.5-turbo": _row(0.50, 1.50),
    "text-embedding-3-small": _row(0.02, 0.0),
    "text-embedding-3-large": _row(0.13, 0.0),
    "text-embedding-ada-002": _row(0.10, 0.0),
    # ---- Anthropic (platform.claude.com/docs/en/about-claude/pricing; cached = cache hits)
    "claude-opus-5-5": _row(4.00, 20.00, 0.20),
    "claude-opus-5": _row(5.00, 25.00, 0.50),
    "claude-opus-4-8": _row(5.00, 25.00, 0.50),
    "claude-opus-4-7": _row(5.00, 25.00, 0.50),
    "claude-opus-4-6": _row(5.00, 25.00, 0.50),
    "claude-opus-4-5": _row(5.00, 25.00, 0.50),
    "claude-opus-4-1": _row(15.00, 75.00, 1.50),
    "claude-opus-4": _row(15.00, 75.00, 1.50),
    "claude-opus-4-0": _row(15.00, 75.00, 1.50),
    "claude-sonnet-5-5": _row(2.00, 10.00, 0.10),
    "claude-sonnet-5": _row(2.00, 10.00, 0.20),
    "claude-sonnet-4-6": _row(3.00, 15.00, 0.30),
    "claude-sonnet-4-5": _row(3.00, 15.00, 0.30),
    "claude-sonnet-4": _row(3.00, 15.00, 0.30),
    "claude-sonnet-4-0": _row(3.00, 15.00, 0.30),
    "claude-3-7-sonnet": _row(3.00, 15.00, 0.30),
    "claude-3-5-sonnet": _row(3.00, 15.00, 0.30),
    "claude-haiku-5-5": _row(0.10, 0.50, 0.01),  # prompts up to 100k tokens
    "claude-haiku-4-5": _row(1.00, 5.00, 0.10),
    "claude-3-5-haiku": _row(0.80, 4.00, 0.08),
    "claude-3-haiku": _row(0.25, 1.25, 0.03),
    "claude-3-opus": _row(15.00, 75.00, 1.50),
    # ---- Groq (console.groq.com/docs/models, on-demand)
    "llama-3.1-8b-instant": _row(0.05, 0.08),
    "llama-3.3-70b-versatile": _row(0.59, 0.79),
    "openai/gpt-oss-120b": _row(0.15, 0.60, 0.075),
    "openai/gpt-oss-20b": _row(0.075, 0.30, 0.037),
    "meta-llama/llama-4-scout-17b-16e-instruct": _row(0.11, 0.34),
    "meta-llama/llama-4-maverick-17b-128e-instruct": _row(0.20, 0.60),
    "qwen/qwen3-32b": _row(0.29, 0.59),
    "moonshotai/kimi-k2-instruct": _row(1.00, 3.00),
    # ---- kind = "local": the bundled embedding model, computed in the daemon (DESIGN §11)
    "wordllama": _row(0.0, 0.0),
}

_SNAPSHOT_SUFFIXES: Final = (
    re.compile(r"-\d{4}-\d{2}-\d{2}$"),  # gpt-4o-2024-08-06
    re.compile(r"-\d{8}$"),  # claude-3-5-haiku-20241022
    re.compile(r"@\d{8}$"),  # claude-haiku-4-5@20251001 (Vertex)
    re.compile(r"-\d{4}$"),  # gpt-3.5-turbo-0125, gpt-4-0613
    re.compile(r"-latest$"),  # claude-3-5-haiku-latest
)


def model_name_candidates(model: str) -> Iterator[str]:
    """The names a model is looked up by, most specific first."""
    name = model.strip().lower()
    if name.startswith("claude"):
        name = name.replace(".", "-")
    seen: set[str] = set()
    for candidate in (name, name.rpartition("/")[2]):
        while candidate and candidate not in seen:
            seen.add(candidate)
            yield candidate
            for suffix in _SNAPSHOT_SUFFIXES:
                shorter = suffix.sub("", candidate)
                if shorter != candidate:
                    candidate = shorter
                    break
            else:
                break


class PriceTable:
    """Prices of targets: the config's overrides, then the built-in table. Lookups are
    memoized per target, so a request costs one dict lookup; the memo is bounded
    (:data:`MAX_MEMOIZED_TARGETS` names of at most :data:`MAX_MEMOIZED_NAME` characters)."""

    def __init__(self, overrides: Mapping[str, PriceConfig]) -> None:
        self.reconfigure(overrides)

    def reconfigure(self, overrides: Mapping[str, PriceConfig]) -> None:
        """Take a (reloaded) ``[prices]`` table; every lookup is made afresh."""
        self._overrides: dict[str, Price] = {}
        for target, price in overrides.items():
            provider, _, model = target.partition("/")
            row = _row(price.input, price.output, price.cached_input)
            for name in model_name_candidates(model):
                self._overrides.setdefault(f"{provider}/{name}", row)
        self._by_target: dict[str, Price | None] = {}

    def for_target(self, target: str) -> Price | None:
        """The price of ``provider/model``; None when it has none (unpriced)."""
        try:
            return self._by_target[target]
        except KeyError:
            pass
        provider, _, model = target.partition("/")
        names = list(model_name_candidates(model))
        overridden = (f"{provider}/{name}" for name in names)
        price = next((self._overrides[key] for key in overridden if key in self._overrides), None)
        if price is None:
            price = next((BUILT_IN_PRICES[n] for n in names if n in BUILT_IN_PRICES), None)
        memo = self._by_target
        if len(target) <= MAX_MEMOIZED_NAME:
            if len(memo) >= MAX_MEMOIZED_TARGETS:
                memo.clear()  # names made up by a client: the targets in use come back at once
            memo[target] = price
        return price

    @property
    def memoized(self) -> int:
        """How many lookups are memoized."""
        return len(self._by_target)

    def input_and_output(self, target: str) -> float | None:
        """USD per 1M input plus 1M output tokens on ``target`` (what the cost strategy
        orders targets by); None when it is unpriced."""
        price = self.for_target(target)
        return None if price is None else price.input + price.output

    def cost(self, target: str, usage: Usage) -> float:
        """What ``usage`` on ``target`` costs (0 when unpriced)."""
        price = self.for_target(target)
        return price.cost(usage) if price is not None else 0.0

    def most_expensive(self, targets: tuple[str, ...]) -> Price:
        """The highest input, output and cached-input prices among ``targets`` (each taken
        separately, so the result bounds any of them); zeros when none is priced. (The
        broker keeps it per route.)"""
        prices = [price for target in targets if (price := self.for_target(target)) is not None]
        return Price(
            max((price.input for price in prices), default=0.0),
            max((price.output for price in prices), default=0.0),
            max((price.cached_input for price in prices), default=0.0),
        )
