"""The fixed pair sets through the real engine at the default threshold: every paraphrase is
answered by the other's stored answer; no near miss ever is, whichever of the two was stored."""

from __future__ import annotations

import pytest

from quotad.daemon.config import SemanticConfig
from quotad.daemon.semantic.cache import SemanticCache
from quotad.daemon.semantic.model import EmbeddingModel
from tests.support.semantic_pairs import NEAR_MISSES, PARAPHRASES, Pair
from tests.unit.semantic.conftest import chat

pytestmark = pytest.mark.anyio

NEAR_MISS_CASES = [
    pytest.param(pair, id=f"{category}-{index}")
    for category, pairs in NEAR_MISSES.items()
    for index, pair in enumerate(pairs)
]


async def answers(model: EmbeddingModel, stored: str, asked: str) -> bool:
    """Whether ``asked`` gets the answer stored for ``stored`` (a fresh cache, default
    threshold, mode on). A text that is not eligible never gets one."""
    cache = SemanticCache(SemanticConfig(mode="on"), model)
    first = await cache.question(chat(stored))
    second = await cache.question(chat(asked))
    if first is None or second is None:
        return False
    cache.add(b"stored-entry-0001", first)
    match = cache.lookup(second)
    return match is not None and match.entry_id == b"stored-entry-0001"


def test_the_default_threshold_is_the_designs() -> None:
    assert SemanticConfig().threshold == 0.92


@pytest.mark.parametrize("pair", PARAPHRASES, ids=range(len(PARAPHRASES)))
async def test_a_paraphrase_hits(model: EmbeddingModel, pair: Pair) -> None:
    first, second = pair
    assert await answers(model, first, second)
    assert await answers(model, second, first)


@pytest.mark.parametrize("pair", NEAR_MISS_CASES)
async def test_a_near_miss_never_hits(model: EmbeddingModel, pair: Pair) -> None:
    first, second = pair
    assert not await answers(model, first, second)
    assert not await answers(model, second, first)


async def test_every_near_miss_is_similar_enough_to_be_a_candidate_or_refused_as_ineligible(
    model: EmbeddingModel,
) -> None:
    """The near misses are hard cases: most score at or above the threshold, so it is the
    rules, not the threshold, that refuse them."""
    cache = SemanticCache(SemanticConfig(mode="on", threshold=0.92), model)
    above = total = 0
    for pairs in NEAR_MISSES.values():
        for first, second in pairs:
            one, two = await cache.question(chat(first)), await cache.question(chat(second))
            if one is None or two is None:
                continue
            total += 1
            above += float(cache.vector_of(one) @ cache.vector_of(two)) >= 0.92
    assert total >= 90
    assert above / total >= 0.4
