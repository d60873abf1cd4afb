"""The semantic cache in the request pipeline (DESIGN §2 steps 3 and 7, §11): what the broker
calls for a chat request, composing the response cache (exact answers, by key) with the
semantic engine (:class:`~quotad.daemon.semantic.cache.SemanticCache`, questions by meaning).

Step 3, :meth:`SemanticStep.lookup`: an exact hit first, always. Then, only when
``[cache.semantic] mode`` is ``shadow`` or ``on``, for a request with ``cache = "use"`` or
``"only"`` that asks an eligible question (temperature at most ``max_temperature``, no
temperature counting as 1.0; a last user turn of plain text the match rules can read), a
semantic lookup:

- ``on``: a match is served: the stored answer, marked ``cache="semantic"`` with its
  similarity. Never an answer that was a tool call (none is held; one found anyway is dropped).
- ``shadow``: a match is counted as a would-be hit and never served; the provider is called
  and, once the request has its reply, its answer and the stored one are compared in a worker
  thread (:meth:`SemanticCache.compare_answers`): ``quotad cache stats`` shows how often they
  agreed.

A ``cache = "refresh"`` request looks nothing up but asks its question, so that the new answer
is held. Step 7, :meth:`SemanticStep.answered` (right after the answer is put in the response
cache, so in the same group commit): the question is held with its vector, in memory and in
``quotad.db`` (:mod:`.stored`), unless the answer was a tool call or was not stored.

The engine is built by :meth:`SemanticStep.start` (at start, before the daemon serves, and when
a reload turns the mode on): the model loaded and the stored questions put back in a worker
thread, off the event loop. Until then, and with mode ``off``, every call here is the exact
cache's own. The step follows the response cache (:class:`~quotad.daemon.store.cache.
CacheFollower`): an entry evicted, expired, replaced or cleared takes its question with it.

Nothing here imports numpy or the model: the engine's modules are imported by :meth:`start`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio.to_thread

from quotad.daemon.config import Config
from quotad.daemon.events import EventLog
from quotad.daemon.semantic import missing_extra
from quotad.daemon.semantic.question import Question
from quotad.daemon.store.cache import Cache, Cacheable, CachedChat, CacheEntry
from quotad.daemon.store.db import Database, Statement
from quotad.protocol.messages import CacheStatus, Chat

if TYPE_CHECKING:
    from quotad.daemon.semantic.cache import Comparison, SemanticCache
    from quotad.daemon.semantic.stored import StoredQuestion

log = logging.getLogger("quotad.semantic")

MAX_PENDING_COMPARISONS: Final = 64
"""Shadow comparisons waiting for a worker thread at most; past it, a would-be hit is counted
but not compared (``shadow_skipped``), so that a burst cannot pile up work."""


@dataclass(slots=True)
class Asked:
    """An eligible chat request's question, carried from step 3 to step 7: to be held with
    the answer, and in shadow mode the would-be hit's answer to compare with the provider's."""

    question: Question
    shadow_answer: str | None = None
    shadowed: bool = False


def is_tool_call(answer: CachedChat) -> bool:
    """Whether an answer called tools (never served semantically)."""
    return bool(answer.tool_calls) or answer.finish_reason in ("tool_calls", "function_call")


class SemanticStep:
    """Steps 3 and 7 of a chat request for the semantic cache; a no-op until started."""

    def __init__(self, cache: Cache, db: Database, config: Config, events: EventLog) -> None:
        self.cache = cache
        self._db = db
        self._events = events
        self.config = config.cache.semantic
        self._wants_model = _wants_model(config)
        self.engine: SemanticCache | None = None
        """The engine, once built (mode shadow or on at start, or since a reload)."""
        self.problem = ""
        """Why the engine could not be built ("" when it was, or was not asked for)."""
        self.saved_usd = 0.0
        self.shadow_skipped = 0
        self._loading: list[bytes] | None = None
        """While the engine is built: the keys whose entries went meanwhile."""
        self._cleared_while_loading = False
        self._comparisons: set[asyncio.Task[None]] = set()
        self._starting: asyncio.Task[None] | None = None
        cache.follower = self

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Build the engine when ``mode`` is not off: the model loaded and the stored
        questions put back (their answers still cached), in a worker thread; preload the
        model for local providers. A failure is reported and leaves semantic caching off."""
        if self.engine is not None or self._loading is not None:
            return
        if self.config.mode == "off":
            if self._wants_model:
                await self._preload_model()
            return
        if missing := missing_extra():
            self._fail(f"the optional extra quotad[semantic] is not installed ({missing})")
            return
        self._loading = []
        self._cleared_while_loading = False
        self.problem = ""
        try:
            engine = await anyio.to_thread.run_sync(self._new_engine)
            written = await self._restore(engine)
        except Exception as error:  # the model's files unreadable, a damaged row: said, off
            self._loading = None
            log.exception("semantic cache not started")
            self._fail(f"{type(error).__name__}: {error}")
            return
        gone, self._loading = self._loading, None
        if self._cleared_while_loading:
            engine.clear()
        for key in gone:
            engine.remove(key)
        engine.reconfigure(self.config)
        self.engine = engine
        if written:
            self._db.write_later(written)
        log.info(
            "semantic cache %s: %d questions in %d partitions",
            self.config.mode,
            len(engine),
            engine.partitions,
        )

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded ``[cache.semantic]``: a mode turned on builds the engine in the
        background (served exactly meanwhile); turned off, lookups stop and the questions
        held are kept (and still follow their entries)."""
        self.config = config.cache.semantic
        self._wants_model = _wants_model(config)
        if self.engine is not None:
            self.engine.reconfigure(self.config)
        elif self.config.mode != "off" and self._loading is None and self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start_later())

    async def _start_later(self) -> None:
        try:
            await self.start()
        finally:
            self._starting = None

    async def _preload_model(self) -> None:
        """Load the model that local providers use, off the loop (a failure is theirs to
        report, at their first request)."""
        from quotad.daemon.semantic.model import ModelUnavailableError, shared_model

        try:
            await anyio.to_thread.run_sync(shared_model)
        except ModelUnavailableError as error:
            log.warning("local embedding model not preloaded: %s", error)

    def _new_engine(self) -> SemanticCache:
        """In a worker thread: import the engine, load the model (shared with local
        providers)."""
        from quotad.daemon.semantic.cache import SemanticCache
        from quotad.daemon.semantic.model import shared_model

        return SemanticCache(self.config, shared_model())

    async def _restore(self, engine: SemanticCache) -> list[Statement]:
        """Put the stored questions back into ``engine`` (not published yet), a page at a
        time: those whose entry is gone are deleted, those of another vector scheme embedded
        again. The statements that write that back."""
        from quotad.daemon.semantic import stored

        written: list[Statement] = []
        after = 0
        while page := await stored.read_page(self._db, after):
            after = page[-1].rowid
            alive = []
            for row in page:
                if self.cache.alive(row.key):
                    alive.append(row)
                else:
                    written.append(stored.delete(row.key))
            written += await anyio.to_thread.run_sync(_hold_page, engine, alive)
        return written

    def _fail(self, problem: str) -> None:
        self.problem = problem
        self._events.add("semantic_unavailable", f"semantic cache off: {problem}", logging.ERROR)

    # ------------------------------------------------------------------ step 3

    async def lookup(
        self, request: Chat, key: bytes | None
    ) -> tuple[CacheEntry | None, Asked | None]:
        """Step 3 for a chat request whose cache key is ``key``: the entry that answers it
        (exact, or semantic with its similarity), and the question to carry to
        :meth:`answered` (None: nothing to hold or compare). ``cache = "only"`` raises
        ``bad_request`` when neither kind of hit is found."""
        engine = self.engine
        mode = request.cache
        if engine is None or engine.mode == "off" or key is None:
            return await self.cache.lookup(key, mode), None
        if mode == "refresh":  # nothing looked up; the new answer is held
            question = await engine.question(request)
            return None, (Asked(question) if question is not None else None)
        hit = await self.cache.lookup(key, "use")
        if hit is not None:
            return hit, None
        question = await engine.question(request)
        found: CacheEntry | None = None
        asked = None
        if question is not None:
            asked = Asked(question)
            found = await self._semantic(engine, asked)
        if found is None and mode == "only":
            raise self.cache.only_missed()
        return found, asked

    async def _semantic(self, engine: SemanticCache, asked: Asked) -> CacheEntry | None:
        """The semantic lookup of an exact miss: the entry served (mode on), or None (no
        match; or shadow mode, the match's answer kept in ``asked`` to compare)."""
        cache = self.cache
        while (match := engine.lookup(asked.question, cache.alive)) is not None:
            entry = await cache.peek(match.entry_id)
            answer = entry.answer if entry is not None else None
            if entry is None or not isinstance(answer, CachedChat) or is_tool_call(answer):
                engine.remove(match.entry_id)  # never served; look again without it
                continue
            if engine.mode == "shadow":
                engine.note_would_be_hit(match)
                asked.shadowed = True
                asked.shadow_answer = answer.content
                return None
            served = cache.use(entry, match.similarity)  # no wait since the peek
            if served is None:
                engine.remove(match.entry_id)
                continue
            engine.note_hit(match)
            self.saved_usd += served.cost_usd
            return served
        return None

    # ------------------------------------------------------------------ step 7

    def answered(self, asked: Asked, stored: Cacheable) -> None:
        """Step 7, right after ``stored`` was put in the response cache: hold the question
        with its vector (not for an answer that was a tool call, or that the cache did not
        keep), written in the same group commit; in shadow mode, compare the answers."""
        engine = self.engine
        answer = stored.answer
        if engine is None or not isinstance(answer, CachedChat):
            return
        if asked.shadowed:
            self._compare_later(engine, asked.shadow_answer, answer.content)
        if is_tool_call(answer) or stored.key not in self.cache:
            return
        from quotad.daemon.semantic import stored as stored_questions
        from quotad.daemon.semantic.cache import VECTOR_SCHEME

        question = asked.question
        vector = engine.add(stored.key, question)
        self._db.write_later(
            [
                stored_questions.insert(
                    stored.key, question.partition, question.text, vector, VECTOR_SCHEME
                )
            ]
        )

    def _compare_later(
        self, engine: SemanticCache, cached: str | None, provider: str | None
    ) -> None:
        """Shadow mode: compare a would-be hit's answer with the provider's in a worker
        thread, after the reply (bounded: see :data:`MAX_PENDING_COMPARISONS`)."""
        if len(self._comparisons) >= MAX_PENDING_COMPARISONS:
            self.shadow_skipped += 1
            return
        task = asyncio.get_running_loop().create_task(self._compare(engine, cached, provider))
        self._comparisons.add(task)
        task.add_done_callback(self._comparisons.discard)

    async def _compare(
        self, engine: SemanticCache, cached: str | None, provider: str | None
    ) -> None:
        try:
            comparison: Comparison = await anyio.to_thread.run_sync(
                engine.compare_answers, cached, provider
            )
        except Exception:
            log.exception("shadow comparison failed")
            return
        engine.note_comparison(comparison)

    async def comparisons_done(self) -> None:
        """Wait for the shadow comparisons under way (tests, shutdown)."""
        while self._comparisons:
            await asyncio.gather(*self._comparisons, return_exceptions=True)

    # ------------------------------------------------------------------ following the cache

    def removed(self, key: bytes) -> None:
        """The entry of ``key`` went: its question goes too."""
        if self._loading is not None:
            self._loading.append(key)
        elif self.engine is not None:
            self.engine.remove(key)

    def cleared(self) -> None:
        """Every entry went."""
        if self._loading is not None:
            self._cleared_while_loading = True
            self._loading.clear()
        if self.engine is not None:
            self.engine.clear()

    def add_figures(self, status: CacheStatus) -> None:
        """The semantic cache's fields of ``quotad cache stats``."""
        engine = self.engine
        status.semantic_mode = self.config.mode
        status.semantic_problem = self.problem
        if engine is None:
            return
        stats = engine.stats
        status.semantic_entries = len(engine)
        status.semantic_lookups = stats.lookups
        status.semantic_hits = stats.hits
        status.semantic_saved_usd = self.saved_usd
        status.would_be_hits = stats.would_be_hits
        status.shadow_compared = stats.shadow_compared
        status.shadow_agreed = stats.shadow_agreed
        status.shadow_identical = stats.shadow_identical
        status.semantic_ineligible = dict(stats.ineligible)
        status.semantic_refused = dict(stats.refused)


def _wants_model(config: Config) -> bool:
    """Whether the config asks for the bundled model (semantic caching or a local provider)."""
    return config.cache.semantic.mode != "off" or any(
        provider.kind == "local" for provider in config.providers.values()
    )


def _hold_page(engine: SemanticCache, rows: list[StoredQuestion]) -> list[Statement]:
    """In a worker thread, on an engine not yet published: hold a page of stored questions;
    the statements that embed again those of another scheme and drop those the rules refuse."""
    from quotad.daemon.semantic import stored
    from quotad.daemon.semantic.cache import VECTOR_SCHEME

    written: list[Statement] = []
    for row in rows:
        if row.scheme == VECTOR_SCHEME and engine.restore(
            row.key, row.partition, row.text, stored.vector_of(row.vector)
        ):
            continue  # as stored (a vector of the wrong size or not unit length is refused)
        vector = engine.reembed(row.key, row.partition, row.text)
        if vector is None:
            written.append(stored.delete(row.key))
        else:
            written.append(stored.insert(row.key, row.partition, row.text, vector, VECTOR_SCHEME))
    return written
