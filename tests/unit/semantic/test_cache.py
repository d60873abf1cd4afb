"""The semantic cache's engine (quotad.daemon.semantic.cache and .question): which requests ask a
question, partitions that keep conversations apart, holding and forgetting questions within a
bound, restoring persisted vectors, and the figures of lookups and shadow comparisons."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from quotad.daemon.config import SemanticConfig
from quotad.daemon.semantic.cache import INDEX_DIMENSIONS, Match, SemanticCache
from quotad.daemon.semantic.model import EmbeddingModel
from quotad.daemon.semantic.question import Question, partition_key, question_of
from quotad.daemon.store import answers
from quotad.protocol.messages import ChatMessage
from tests.support.event_loop import threads_hashing_keys
from tests.unit.semantic.conftest import ask, chat

pytestmark = pytest.mark.anyio

QUESTION = "How do I reverse a string in Python?"
PARAPHRASE = "What's the best way to reverse a string in Python?"
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def entry(number: int) -> bytes:
    return number.to_bytes(16, "big")


async def test_a_stored_question_answers_its_paraphrase(cache: SemanticCache) -> None:
    vector = cache.add(entry(1), await ask(cache, QUESTION))
    assert vector.shape == (INDEX_DIMENSIONS,)
    match = cache.lookup(await ask(cache, PARAPHRASE))
    assert match is not None
    assert match.entry_id == entry(1)
    assert 0.92 <= match.similarity <= 1.0 + 1e-6
    assert cache.stats.lookups == 1
    cache.note_hit(match)
    assert cache.stats.hits == 1


@pytest.mark.parametrize(
    "change",
    [
        {"system": "You are a pirate."},
        {"history": [ChatMessage(role="user", content="hi"), ChatMessage(role="assistant")]},
        {"tools": [TOOL]},
        {"max_tokens": 10},
        {"top_p": 0.5},
        {"seed": 7},
        {"stop": ["\n"]},
        {"stream": True},
        {"response_format": {"type": "json_object"}},
        {"extra": {"logit_bias": {"1": 2}}},
        {"model": "other"},
    ],
    ids=lambda change: next(iter(change)),
)
async def test_partitions_keep_apart_what_differs_but_the_last_turn(
    cache: SemanticCache, change: dict[str, Any]
) -> None:
    cache.add(entry(1), await ask(cache, QUESTION))
    request = chat(PARAPHRASE, **{k: v for k, v in change.items() if k != "model"})
    if "model" in change:
        request.model = change["model"]
    question = await cache.question(request)
    assert question is not None
    assert cache.lookup(question) is None
    assert cache.stats.refused["similarity"] == 1


async def test_the_partition_ignores_who_asks_and_how() -> None:
    first = chat(QUESTION)
    second = chat(PARAPHRASE, app="other", priority="high", tags=["x"], user="u", cache="only")
    assert await partition_key(first) == await partition_key(second)
    third = chat(QUESTION)
    third.messages[-1].name = "bob"
    assert await partition_key(first) != await partition_key(third)


async def test_a_long_conversations_partition_is_hashed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every turn but the last is hashed: 13 MB of them held the loop 27 ms."""
    history = [ChatMessage(role="user", content="x" * answers.OFF_LOOP_KEY_BYTES)]
    long, short = chat(QUESTION, history=history), chat(QUESTION)
    expected = [await partition_key(long), await partition_key(short)]
    threads = threads_hashing_keys(monkeypatch)
    asked = [await question_of(long, 0.0), await question_of(short, 0.0)]
    assert [question.partition for question in asked if isinstance(question, Question)] == expected
    loop = threading.get_ident()
    assert [thread == loop for thread in threads] == [False, True]


async def test_only_cool_requests_ask() -> None:
    assert await question_of(chat(QUESTION, temperature=0.7), max_temperature=0.0) == "warm"
    assert await question_of(chat(QUESTION, temperature=None), max_temperature=0.0) == "warm"
    assert not isinstance(await question_of(chat(QUESTION, temperature=None), 1.0), str)
    assert not isinstance(await question_of(chat(QUESTION, temperature=0.3), 0.5), str)


async def test_only_a_last_user_turn_of_plain_text_asks() -> None:
    request = chat(QUESTION)
    request.messages.append(ChatMessage(role="assistant", content="sure"))
    assert await question_of(request, 0.0) == "not_user_turn"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert await question_of(chat([{"type": "text", "text": QUESTION}, image]), 0.0) == "not_text"
    parts = chat(
        [{"type": "text", "text": "How do I reverse"}, {"type": "text", "text": "a string?"}]
    )
    asked = await question_of(parts, 0.0)
    assert not isinstance(asked, str)
    assert asked.text == "How do I reverse\na string?"
    assert await question_of(chat(""), 0.0) == "not_text"
    assert await question_of(chat("Как дела?"), 0.0) == "script"


async def test_a_mode_off_cache_asks_nothing_and_counts_nothing(model: EmbeddingModel) -> None:
    cache = SemanticCache(SemanticConfig(mode="off"), model)
    assert await cache.question(chat(QUESTION)) is None
    assert not cache.stats.ineligible
    cache.reconfigure(SemanticConfig(mode="shadow"))
    assert await cache.question(chat(QUESTION)) is not None
    assert await cache.question(chat(QUESTION, temperature=1.0)) is None
    assert cache.stats.ineligible == {"warm": 1}


async def test_the_most_similar_compatible_question_wins(cache: SemanticCache) -> None:
    cache.add(entry(1), await ask(cache, "meeting moved to 4pm"))
    cache.add(entry(2), await ask(cache, "meeting moved to 3pm"))
    cache.add(entry(3), await ask(cache, "meeting moved to 5pm"))
    match = cache.lookup(await ask(cache, "Meeting moved to 15:00."))
    assert match is not None
    assert match.entry_id == entry(2)
    assert cache.lookup(await ask(cache, "meeting moved to 6pm")) is None
    assert cache.stats.refused == {"numbers": 1}


async def test_a_dead_entry_is_forgotten_and_the_next_candidate_tried(cache: SemanticCache) -> None:
    cache.add(entry(1), await ask(cache, QUESTION))
    cache.add(entry(2), await ask(cache, "how to reverse a string in python"))
    alive = {entry(1): False, entry(2): True}
    match = cache.lookup(await ask(cache, PARAPHRASE), alive=alive.__getitem__)
    assert match is not None
    assert match.entry_id == entry(2)
    assert entry(1) not in cache
    assert cache.lookup(await ask(cache, PARAPHRASE), alive=lambda _: False) is None
    assert len(cache) == 0
    assert cache.partitions == 0


async def test_remove_and_clear_forget(cache: SemanticCache) -> None:
    cache.add(entry(1), await ask(cache, QUESTION))
    cache.add(entry(2), await ask(cache, QUESTION, system="other"))
    assert (len(cache), cache.partitions) == (2, 2)
    assert cache.remove(entry(1))
    assert not cache.remove(entry(1))
    assert cache.lookup(await ask(cache, PARAPHRASE)) is None
    assert (len(cache), cache.partitions) == (1, 1)
    cache.clear()
    assert (len(cache), cache.partitions, cache.nbytes) == (0, 0, 0)


async def test_the_number_of_questions_held_is_bounded(model: EmbeddingModel) -> None:
    cache = SemanticCache(SemanticConfig(mode="on"), model, max_entries=3)
    for number in range(5):
        cache.add(entry(number), await ask(cache, f"What is {number} squared?", system=str(number)))
    assert len(cache) == 3
    assert cache.partitions == 3
    assert [entry(n) in cache for n in range(5)] == [False, False, True, True, True]
    cache.add(entry(2), await ask(cache, "What is 2 squared?", system="2"))  # again: now the newest
    cache.add(entry(5), await ask(cache, "What is 5 squared?", system="5"))
    assert [entry(n) in cache for n in range(6)] == [False, False, True, False, True, True]
    with pytest.raises(ValueError, match="max_entries"):
        SemanticCache(SemanticConfig(), model, max_entries=0)


async def test_restore_takes_back_persisted_vectors_and_refuses_unusable_ones(
    cache: SemanticCache, model: EmbeddingModel
) -> None:
    question = await ask(cache, QUESTION)
    vector = cache.add(entry(1), question)
    restarted = SemanticCache(SemanticConfig(mode="on"), model)
    assert restarted.restore(entry(1), question.partition, question.text, vector.copy())
    match = restarted.lookup(await ask(restarted, PARAPHRASE))
    assert match is not None
    assert match.entry_id == entry(1)
    nan = vector.copy()
    nan[0] = np.nan
    for bad in (np.zeros(INDEX_DIMENSIONS, np.float32), nan, np.ones(8, np.float32) / 8**0.5):
        assert not restarted.restore(entry(2), question.partition, question.text, bad)
    assert entry(2) not in restarted


async def test_a_question_whose_text_no_longer_reads_is_refused(cache: SemanticCache) -> None:
    """A stored text is read again at each lookup (rules may change between versions)."""
    question = await ask(cache, QUESTION)
    cache.restore(entry(1), question.partition, "Как дела?", cache.vector_of(question))
    assert cache.lookup(await ask(cache, PARAPHRASE)) is None
    assert cache.stats.refused == {"script": 1}


async def test_a_higher_threshold_refuses_on_similarity(cache: SemanticCache) -> None:
    cache.add(entry(1), await ask(cache, "How many bones are in the human body?"))
    asked = "How many bones are there in the human body?"  # similarity 0.988
    assert cache.lookup(await ask(cache, asked)) is not None
    cache.reconfigure(SemanticConfig(mode="on", threshold=0.995))
    assert cache.lookup(await ask(cache, asked)) is None
    assert cache.stats.refused == {"similarity": 1}


def test_shadow_compare_counts_would_be_hits_and_agreement(cache: SemanticCache) -> None:
    match = Match(entry(1), 0.97)
    answer = "You can reverse a string in Python with slicing: s[::-1] returns a new string."
    other_words = "Use s[::-1] to reverse a string in Python; slicing with a step of -1 walks it."
    assert cache.shadow_compare(match, answer, answer.replace(" ", "  \n"))
    assert cache.shadow_compare(match, answer, other_words)
    assert not cache.shadow_compare(match, answer, "Use list.reverse() to reverse a list.")
    assert not cache.shadow_compare(match, "The meeting is at 3pm.", "The meeting is at 4pm.")
    assert not cache.shadow_compare(match, "Yes, you can.", "No, you cannot.")
    assert not cache.shadow_compare(match, answer, None)
    stats = cache.stats
    assert (stats.would_be_hits, stats.shadow_agreed, stats.shadow_identical) == (6, 2, 1)
    assert stats.hits == 0
    assert 2.0 <= stats.shadow_similarity_sum < 5.0
