"""The semantic cache's engine: which stored answer, if any, answers a question in other words.

It holds no answers. The response cache (:mod:`quotad.daemon.store.cache`) stores them under
their exact keys; this engine keeps, for each answer it may serve semantically, the question that
earned it (its partition, last user turn and vector), one :class:`VectorIndex` per partition,
and the figures of what it did. The broker composes the two (DESIGN §11):

1. :meth:`SemanticCache.question` — is the request eligible (mode, temperature, a user turn
   of plain Latin-script text)? Costs no embedding when it is not.
2. after an exact miss, :meth:`SemanticCache.lookup` — embed the question's normalized text,
   search its partition for vectors with similarity ≥ ``threshold``, and return the most
   similar candidate that :func:`~quotad.daemon.semantic.rules.compatible` accepts.
3. ``mode = "on"``: serve the match's answer (:meth:`note_hit`); ``"shadow"``: count it
   (:meth:`note_would_be_hit`), call the provider anyway, and compare the two answers
   (:meth:`compare_answers`, which may run in a worker thread, then :meth:`note_comparison`).
4. on storing a new answer that is not a tool call, :meth:`add` (the returned vector is what
   to persist beside the entry); when the entry goes (eviction, TTL, clear), :meth:`remove`.
   At start, :meth:`restore` puts the persisted vectors back.

The number of questions held is bounded by ``max_entries``; past it the oldest is forgotten (its
answer stays in the response cache for exact hits).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np

from quotad.daemon.config import SemanticConfig
from quotad.daemon.semantic.index import VectorIndex
from quotad.daemon.semantic.model import MODEL_ID, EmbeddingModel, Vector
from quotad.daemon.semantic.question import Ineligible, Question, question_of
from quotad.daemon.semantic.rules import RULES_VERSION, Facets, compatible, read, stated
from quotad.protocol.messages import Chat

INDEX_DIMENSIONS: Final = 64
"""The vectors held are the model's first 64 values (it was trained for Matryoshka sizes 64,
128, 256), scaled to unit length: a quarter of the memory of 256 and, measured at 100,000 rows
under load, ~2 ms a search against ~7 ms at 128, with the same results on the pair sets (the
rules, not the vectors, tell near misses apart; paraphrases score higher, not lower)."""
VECTOR_SCHEME: Final = f"{MODEL_ID}/{INDEX_DIMENSIONS}/rules-{RULES_VERSION}"
"""Stored beside persisted vectors: vectors of another scheme are re-embedded from their text."""
DEFAULT_MAX_ENTRIES: Final = 100_000
"""Questions held at most (~1.1 KB each: 256 bytes of vector, the question's text, the ids)."""
CANDIDATES: Final = 8
"""Vectors above the threshold checked against the rules, most similar first (each check reads
the held question's text again: ~0.1 ms for a short one, unless it is among the
:data:`FACETS_KEPT` read last)."""
FACETS_KEPT: Final = 2048
"""Held questions whose facets (what the rules compare) are kept once read, the most recently
used: a question that is matched again and again (a hot answer) is read once, not at every
lookup (~0.1 ms each). ~1 KB each, so at most ~2 MB; the facets of all 100,000 questions held
would cost ~100 MB, so the others are read when they are candidates."""
ANSWER_SIMILARITY: Final = 0.8
"""Shadow mode: two answers agree when their texts are the same (whitespace aside), or when they
state the same numbers, literals and number of negations and their vectors are at least this
similar. A heuristic that errs towards "disagree": measured, two wordings of one answer score
0.83-0.92, answers about a string and about a list 0.48, "Paris is the capital of France" and
"Berlin is the capital of Germany" 0.29; "at 3pm" and "at 4pm" (0.94) differ in their numbers,
"yes, you can" and "no, you cannot" (0.85) in their negations."""
MAX_COMPARED_CHARS: Final = 2000
"""Shadow mode compares the first this many characters of each answer (~3 ms to read)."""


class Match(NamedTuple):
    """A stored answer that answers a question: its entry id and the questions' similarity."""

    entry_id: bytes
    similarity: float


class Comparison(NamedTuple):
    """Shadow mode: how a would-be hit's answer compared with the provider's."""

    similarity: float
    agreed: bool
    identical: bool


@dataclass(slots=True)
class SemanticStats:
    """What the semantic cache did since start (``quotad cache stats``)."""

    lookups: int = 0
    hits: int = 0
    would_be_hits: int = 0
    shadow_compared: int = 0
    """Would-be hits whose answer was compared with the provider's."""
    shadow_agreed: int = 0
    """Would-be hits whose answer agreed with the provider's (see :data:`ANSWER_SIMILARITY`)."""
    shadow_identical: int = 0
    """Would-be hits whose answer was the provider's, word for word."""
    shadow_similarity_sum: float = 0.0
    ineligible: Counter[str] = field(default_factory=Counter)
    """Requests that asked no question, by reason (``warm``, ``script``, ``too_long``…)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Lookups that found a similar question but no match, by the rule that refused the most
    similar one; ``similarity`` when none was similar enough."""


@dataclass(slots=True)
class _Held:
    partition: bytes
    text: str


class SemanticCache:
    """Questions with vectors, by partition; lookups under the match rules."""

    def __init__(
        self,
        config: SemanticConfig,
        model: EmbeddingModel,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.model = model
        self.max_entries = max_entries
        self.stats = SemanticStats()
        self._held: dict[bytes, _Held] = {}  # insertion order: the oldest is forgotten first
        self._facets_of = functools.lru_cache(maxsize=FACETS_KEPT)(read)
        self._partitions: dict[bytes, VectorIndex] = {}
        self.reconfigure(config)

    def reconfigure(self, config: SemanticConfig) -> None:
        """Apply a reloaded ``[cache.semantic]``; the questions held are kept."""
        self.mode = config.mode
        self.threshold = config.threshold
        self.max_temperature = config.max_temperature

    # ------------------------------------------------------------------ asking

    async def question(self, request: Chat) -> Question | None:
        """The question ``request`` asks, or None (mode off, or not eligible: counted)."""
        if self.mode == "off":
            return None
        asked: Question | Ineligible = await question_of(request, self.max_temperature)
        if isinstance(asked, Question):
            return asked
        self.stats.ineligible[asked] += 1
        return None

    def vector_of(self, question: Question) -> Vector:
        """The question's vector (embedded once, then kept on the question)."""
        if question.vector is None:
            text = question.facets.embedding_text
            question.vector = self.model.embed_one(text, INDEX_DIMENSIONS)
        return question.vector

    def lookup(
        self, question: Question, alive: Callable[[bytes], bool] | None = None
    ) -> Match | None:
        """The most similar held question that the rules let answer ``question``.

        ``alive`` says whether an entry's answer is still stored (one that is not is removed
        here and skipped).
        """
        self.stats.lookups += 1
        index = self._partitions.get(question.partition)
        if index is None:
            self.stats.refused["similarity"] += 1
            return None
        candidates = index.search(self.vector_of(question), self.threshold, CANDIDATES)
        first_refusal: str | None = None
        for entry_id, similarity in candidates:
            if alive is not None and not alive(entry_id):
                self.remove(entry_id)
                continue
            refusal = self._refusal(question.facets, entry_id)
            if refusal is None:  # float32 rounding can put a perfect match a hair above 1
                return Match(entry_id, min(similarity, 1.0))
            first_refusal = first_refusal or refusal
        self.stats.refused[first_refusal or "similarity"] += 1
        return None

    def _refusal(self, facets: Facets, entry_id: bytes) -> str | None:
        held = self._facets_of(self._held[entry_id].text)
        if not isinstance(held, Facets):  # rules changed since it was stored
            return held
        return compatible(facets, held)

    def note_hit(self, match: Match) -> None:
        """A match's answer was served (mode on)."""
        del match
        self.stats.hits += 1

    def note_would_be_hit(self, match: Match) -> None:
        """Shadow mode: a match was found and not served (the provider is called)."""
        del match
        self.stats.would_be_hits += 1

    def compare_answers(self, cached: str | None, provider: str | None) -> Comparison:
        """How a would-be hit's answer compares with the provider's (see
        :data:`ANSWER_SIMILARITY`). Changes nothing: it may run in a worker thread (two
        answers of 2,000 characters take ~3 ms to embed)."""
        first = _comparable(cached)
        second = _comparable(provider)
        if first == second:
            return Comparison(1.0, True, True)
        vectors = self.model.embed([first, second])
        similarity = max(0.0, float(vectors[0] @ vectors[1]))
        agreed = similarity >= ANSWER_SIMILARITY and stated(first) == stated(second)
        return Comparison(similarity, agreed, False)

    def note_comparison(self, comparison: Comparison) -> bool:
        """Count a comparison of :meth:`compare_answers`; whether the answers agreed."""
        stats = self.stats
        stats.shadow_compared += 1
        stats.shadow_identical += comparison.identical
        stats.shadow_similarity_sum += comparison.similarity
        stats.shadow_agreed += comparison.agreed
        return comparison.agreed

    def shadow_compare(self, match: Match, cached: str | None, provider: str | None) -> bool:
        """Shadow mode in one step: count the would-be hit of ``match`` and whether its answer
        agreed with the provider's (returned)."""
        self.note_would_be_hit(match)
        return self.note_comparison(self.compare_answers(cached, provider))

    # ------------------------------------------------------------------ holding

    def add(self, entry_id: bytes, question: Question) -> Vector:
        """Hold ``question`` as the one that earned the answer stored under ``entry_id``;
        returns its vector (to persist beside the entry)."""
        vector = self.vector_of(question)
        self._hold(entry_id, question.partition, question.text, vector)
        return vector

    def restore(self, entry_id: bytes, partition: bytes, text: str, vector: Vector) -> bool:
        """Hold a persisted question again (at start); False when its vector is unusable
        (wrong size, not finite, not unit length: re-add it from its text)."""
        if vector.shape != (INDEX_DIMENSIONS,) or not np.all(np.isfinite(vector)):
            return False
        if abs(float(vector @ vector) - 1.0) > 1e-3:
            return False
        self._hold(entry_id, partition, text, vector.astype(np.float32, copy=False))
        return True

    def reembed(self, entry_id: bytes, partition: bytes, text: str) -> Vector | None:
        """Hold a persisted question whose vector cannot be used (another scheme, damaged),
        embedding its text again: its new vector (to write back), or None when the rules no
        longer let that text be asked (then drop it)."""
        facets = read(text)
        if not isinstance(facets, Facets):
            return None
        vector = self.model.embed_one(facets.embedding_text, INDEX_DIMENSIONS)
        if not self.restore(entry_id, partition, text, vector):
            return None  # a text without tokens: a zero vector
        return vector

    def remove(self, entry_id: bytes) -> bool:
        """Forget the question of ``entry_id`` (its answer was evicted or expired)."""
        held = self._held.pop(entry_id, None)
        if held is None:
            return False
        index = self._partitions[held.partition]
        index.remove(entry_id)
        if not len(index):
            del self._partitions[held.partition]
        return True

    def clear(self) -> None:
        """Forget every question."""
        self._held.clear()
        self._partitions.clear()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._held

    @property
    def partitions(self) -> int:
        """How many partitions hold at least one question."""
        return len(self._partitions)

    @property
    def nbytes(self) -> int:
        """Bytes of the vector matrices (the texts and ids not counted)."""
        return sum(index.nbytes for index in self._partitions.values())

    def _hold(self, entry_id: bytes, partition: bytes, text: str, vector: Vector) -> None:
        self.remove(entry_id)
        while len(self._held) >= self.max_entries:
            self.remove(next(iter(self._held)))
        index = self._partitions.get(partition)
        if index is None:
            index = self._partitions[partition] = VectorIndex(INDEX_DIMENSIONS)
        index.add(entry_id, vector)
        self._held[entry_id] = _Held(partition, text)


def _comparable(answer: str | None) -> str:
    """An answer as compared in shadow mode: its first characters, whitespace folded."""
    return " ".join((answer or "")[:MAX_COMPARED_CHARS].split())
