"""The semantic cache in the pipeline, in process: a real broker and store (``quotad.db`` in a
temp dir) and the bundled model, with a provider that answers from the prompt and counts its
calls. Exact first, then semantic; mode on serves, shadow counts and compares; warm requests,
near misses and tool-call answers are never served; a hit's marks (reply, chunks, ledger, day
sums, stats); questions follow their entries out (eviction, TTL, clear, replacement) in memory
and in the file, and come back at start (a vector of another scheme embedded again)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import Config
from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import ALL_REPORTED, ChatDelta, ChatResult
from quotad.daemon.rate_limit_info import NO_RATE_LIMITS
from quotad.daemon.routing import Router
from quotad.daemon.semantic.cache import VECTOR_SCHEME
from quotad.daemon.store import Store
from quotad.daemon.store.cache import OFF_LOOP_ANSWER_BYTES
from quotad.daemon.store.transactions import in_thread
from quotad.protocol.messages import (
    Chat,
    ChatChunk,
    ChatEnd,
    ChatMessage,
    ChatReply,
    Spend,
    Usage,
)
from tests.support.providers import InProcessProvider, one_provider_config

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

CALLER = Caller(app="agent")
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
ASKED = "How do I reverse a string in Python?"
PARAPHRASE = "What's the best way to reverse a string in Python?"


class Stream:
    """A provider stream: the answer in three pieces, read once over all calls of
    :meth:`deltas` (as a provider's response is; ``PiecesStream`` starts over at each)."""

    rate_limits = NO_RATE_LIMITS
    finish_reason: str | None = "stop"
    usage_reported = ALL_REPORTED

    def __init__(self, text: str) -> None:
        self.usage = Usage(prompt_tokens=10, completion_tokens=6)
        third = len(text) // 3
        self._pieces = iter((text[:third], text[third : 2 * third], text[2 * third :]))

    async def deltas(self) -> AsyncIterator[ChatDelta]:
        for piece in self._pieces:  # one iteration over all calls, as a provider's stream
            yield ChatDelta(delta=piece)

    async def aclose(self) -> None:
        pass


class Provider(InProcessProvider):
    """Answers "answer to: <last user turn>", or calls a tool when the turn says "tool"."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.padding = ""
        """Added to each answer (to make a big one)."""

    def _text(self, request: Chat) -> str:
        content = request.messages[-1].content
        assert isinstance(content, str)
        self.asked.append(content)
        return content

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        text = self._text(request)
        usage = Usage(prompt_tokens=10, completion_tokens=6)
        if request.tools and "tool" in text:
            call = {"id": "c1", "type": "function", "function": {"name": "lookup"}}
            return ChatResult(
                content=None, tool_calls=[call], finish_reason="tool_calls", usage=usage
            )
        return ChatResult(content=f"answer to: {text}{self.padding}", usage=usage)

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> Stream:
        return Stream(f"answer to: {self._text(request)}")


def config(mode: str = "on", **semantic: Any) -> Config:
    cache = semantic.pop("cache", {})
    cache["semantic"] = {"mode": mode, **semantic}
    return one_provider_config(cache=cache)


def chat(text: str, *, temperature: float | None = 0.0, **fields: Any) -> Chat:
    messages = [
        ChatMessage(role="system", content="You answer questions."),
        ChatMessage(role="user", content=text),
    ]
    return Chat(id=1, model="g", messages=messages, temperature=temperature, **fields)


class Daemon:
    """A broker and its store in ``directory``, as a daemon would build them."""

    def __init__(self, directory: Path, cfg: Config, clock: VirtualClock | None = None) -> None:
        self.directory, self.config = directory, cfg
        self.provider = Provider()
        self.store = Store(cfg, directory, clock or VirtualClock())
        self.broker = Broker(cfg, Router(cfg, {"p": self.provider}), self.store)

    async def open(self) -> Daemon:
        await self.store.open()
        await self.broker.semantic.start()
        return self

    async def close(self) -> None:
        await self.broker.semantic.comparisons_done()
        await self.store.close()

    async def ask(self, text: str, **fields: Any) -> ChatReply:
        return await self.broker.chat(chat(text, **fields), CALLER)

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        await self.store.db.write([])  # what was submitted is committed
        return await self.store.db.read(sql)

    async def restarted(self) -> Daemon:
        """This daemon closed and a new one opened on its directory and config."""
        await self.close()
        return await Daemon(self.directory, self.config).open()

    def semantic_entries(self) -> int:
        """How many questions the semantic index holds (it must be running)."""
        engine = self.broker.semantic.engine
        assert engine is not None
        return len(engine)


@pytest.fixture
async def daemon(directory: Path) -> AsyncIterator[Daemon]:
    opened = await Daemon(directory, config()).open()
    yield opened
    await opened.close()


async def test_an_exact_miss_asked_in_other_words_is_served_semantically_and_marked(
    daemon: Daemon,
) -> None:
    first = await daemon.ask(ASKED)
    assert (first.cached, first.cache) == (False, "")
    again = await daemon.ask(ASKED)
    assert (again.cached, again.cache, again.similarity) == (True, "exact", 0.0)
    other = await daemon.ask(PARAPHRASE)
    assert (other.cached, other.cache) == (True, "semantic")
    assert 0.92 <= other.similarity <= 1.0
    assert other.content == f"answer to: {ASKED}"
    assert other.saved_usd == first.cost_usd > 0
    assert daemon.provider.asked == [ASKED]
    rows = await daemon.rows("SELECT status, cached, semantic_similarity FROM ledger ORDER BY id")
    semantic_row = ("semantic", 1, pytest.approx(other.similarity))  # its own status (§11)
    assert rows == [("ok", 0, None), ("ok", 1, None), semantic_row]
    assert await daemon.rows("SELECT cache_hits, semantic_hits, errors FROM spend_daily") == [
        (2, 1, 0)
    ]
    report = await daemon.broker.reports.spend(Spend(period="day", by="app"))
    assert (report.total.cache_hits, report.total.semantic_hits) == (2, 1)
    assert report.total.saved_usd == pytest.approx(2 * first.cost_usd)
    status = daemon.store.cache.status()
    assert (status.hits, status.misses, status.semantic_hits, status.semantic_lookups) == (
        1,
        2,
        1,
        2,
    )
    assert (status.semantic_mode, status.semantic_entries) == ("on", 1)
    assert status.saved_usd == pytest.approx(2 * first.cost_usd)
    assert status.semantic_saved_usd == pytest.approx(first.cost_usd)


async def test_a_big_answer_served_semantically_is_read_from_the_file_once(
    directory: Path,
) -> None:
    """A semantic hit looks at its answer (a tool call is never served) and then uses it: a
    big answer, not kept in memory, was read from ``quotad.db`` twice (13 MB: ~200 ms each)."""
    first = await Daemon(directory, config()).open()
    first.provider.padding = " pad" * (OFF_LOOP_ANSWER_BYTES // 4)
    await first.ask(ASKED)
    daemon = await first.restarted()  # nothing held in memory
    try:
        reads: list[str] = []

        def traced(statement: str) -> None:
            if statement.startswith("SELECT kind, payload FROM cache"):
                reads.append(statement)

        db = daemon.store.db
        assert db._reader is not None
        assert db._point_reader is not None
        await in_thread(db._reader, lambda connection: connection.set_trace_callback(traced))
        db._point_reader.set_trace_callback(traced)
        other = await daemon.ask(PARAPHRASE)
        assert (other.cached, other.cache) == (True, "semantic")
        assert other.content == f"answer to: {ASKED}" + " pad" * (OFF_LOOP_ANSWER_BYTES // 4)
        assert len(reads) == 1
        assert daemon.store.cache.status().semantic_hits == 1
    finally:
        await daemon.close()


async def test_near_misses_reach_the_provider(daemon: Daemon) -> None:
    await daemon.ask("Set a meeting at 3pm")
    await daemon.ask("Turn on dark mode")
    for near in (
        "Set a meeting at 4pm",
        "Turn off dark mode",
        "How do I reverse a list in Python?",
    ):
        reply = await daemon.ask(near)
        assert not reply.cached
        assert reply.content == f"answer to: {near}"
    assert len(daemon.provider.asked) == 5
    refused = daemon.store.cache.status().semantic_refused
    assert (refused["numbers"], refused["polarity"]) == (1, 1), refused


@pytest.mark.parametrize("temperature", [None, 0.5, 1.0])
async def test_warm_requests_are_never_served_semantically(
    daemon: Daemon, temperature: float | None
) -> None:
    """No temperature counts as 1.0; both above max_temperature (0.0): never a question,
    neither looked up nor held (an exact repeat is still an exact hit)."""
    await daemon.ask(ASKED, temperature=temperature)
    reply = await daemon.ask(PARAPHRASE, temperature=temperature)
    assert not reply.cached
    assert (await daemon.ask(PARAPHRASE, temperature=temperature)).cache == "exact"
    status = daemon.store.cache.status()
    assert (status.semantic_entries, status.semantic_lookups) == (0, 0)
    assert status.semantic_ineligible == {"warm": 2}  # the exact hit asked nothing


async def test_a_warm_temperature_allowed_by_max_temperature_is_served(directory: Path) -> None:
    """The control of the test above: the same temperature is served once allowed."""
    daemon = await Daemon(directory, config(max_temperature=0.7)).open()
    try:
        await daemon.ask(ASKED, temperature=0.5)
        assert (await daemon.ask(PARAPHRASE, temperature=0.5)).cache == "semantic"
        assert not (await daemon.ask(PARAPHRASE + " ", temperature=0.9)).cached
    finally:
        await daemon.close()


async def test_shadow_mode_serves_nothing_counts_would_be_hits_and_compares(
    directory: Path,
) -> None:
    daemon = await Daemon(directory, config("shadow")).open()
    try:
        await daemon.ask(ASKED)
        reply = await daemon.ask(PARAPHRASE)
        assert (reply.cached, reply.cache) == (False, "")
        assert reply.content == f"answer to: {PARAPHRASE}"
        await daemon.ask("How can I reverse a string in Python?")
        await daemon.ask("Turn off dark mode")
        assert len(daemon.provider.asked) == 4
        await daemon.broker.semantic.comparisons_done()
        status = daemon.store.cache.status()
        assert (status.semantic_mode, status.semantic_hits, status.would_be_hits) == (
            "shadow",
            0,
            2,
        )
        assert status.shadow_compared == 2
        assert 0 <= status.shadow_agreed <= 2
        assert status.shadow_identical == 0
        # every answer was held: shadow mode measures what mode on would serve
        assert status.semantic_entries == 4
        assert await daemon.rows("SELECT count(*) FROM ledger WHERE cached = 1") == [(0,)]
    finally:
        await daemon.close()


async def test_tool_call_answers_are_never_held_nor_served(daemon: Daemon) -> None:
    await daemon.ask("Use the tool to find the weather in Paris", tools=TOOLS)
    reply = await daemon.ask("Please use the tool to find the weather in Paris", tools=TOOLS)
    assert not reply.cached
    assert daemon.store.cache.status().semantic_entries == 0
    assert await daemon.rows("SELECT count(*) FROM semantic_questions") == [(0,)]
    # a text answer under the same tools is held and served
    await daemon.ask("What is the capital of France?", tools=TOOLS)
    assert (await daemon.ask("what's the capital of france", tools=TOOLS)).cache == "semantic"


async def test_refresh_holds_the_new_answer_and_a_tool_call_answer_drops_the_old_question(
    daemon: Daemon,
) -> None:
    text = "Explain recursion"
    await daemon.ask(text, cache="refresh")
    assert daemon.store.cache.status().semantic_entries == 1
    assert (await daemon.ask("Please explain recursion.")).cache == "semantic"
    tool_text = "Explain the tool"
    await daemon.ask(tool_text, cache="use")  # a text answer (no tools offered): held
    assert daemon.store.cache.status().semantic_entries == 2
    daemon.provider.asked.clear()

    async def tool_call(model: str, request: Chat, max_tokens: int) -> ChatResult:
        call = {"id": "c", "type": "function", "function": {"name": "f"}}
        return ChatResult(content=None, tool_calls=[call], finish_reason="tool_calls")

    daemon.provider.chat = tool_call  # type: ignore[method-assign]
    await daemon.ask(tool_text, cache="refresh")  # the same key's answer is now a tool call
    assert daemon.store.cache.status().semantic_entries == 1
    assert await daemon.rows("SELECT text FROM semantic_questions") == [(text,)]


async def test_cache_only_takes_a_semantic_hit_and_misses_without_one(daemon: Daemon) -> None:
    await daemon.ask(ASKED)
    assert (await daemon.ask(PARAPHRASE, cache="only")).cache == "semantic"
    with pytest.raises(RequestError) as missed:
        await daemon.ask("How do I reverse a list in Python?", cache="only")
    assert missed.value.code == "bad_request"
    assert missed.value.details == {"cache": "miss"}
    assert daemon.provider.asked == [ASKED]


async def test_a_stream_hit_replays_its_chunks_the_first_marked(daemon: Daemon) -> None:
    async for _ in daemon.broker.chat_stream(chat(ASKED, stream=True), CALLER):
        pass
    replies = [
        item async for item in daemon.broker.chat_stream(chat(PARAPHRASE, stream=True), CALLER)
    ]
    chunks = [item for item in replies if isinstance(item, ChatChunk)]
    end = replies[-1]
    assert isinstance(end, ChatEnd)
    assert len(chunks) == 3
    assert (chunks[0].cached, chunks[0].cache) == (True, "semantic")
    assert chunks[0].similarity == end.similarity >= 0.92
    assert (chunks[1].cache, chunks[1].similarity) == ("", 0.0)
    assert "".join(chunk.delta for chunk in chunks) == end.content == f"answer to: {ASKED}"
    assert (end.cached, end.cache) == (True, "semantic")
    # a plain request is another partition: a stream's answer never serves it
    assert not (await daemon.ask(PARAPHRASE)).cached


async def test_questions_go_with_their_entries_evicted_expired_and_cleared(
    directory: Path,
) -> None:
    clock = VirtualClock()
    cfg = config(cache={"ttl_s": 100.0, "max_mb": 0.002})  # room for a few entries
    daemon = await Daemon(directory, cfg, clock).open()
    try:
        texts = [
            f"Explain the history of {topic}"
            for topic in ("Rome", "Paris", "Lisbon", "Oslo", "Cairo", "Lima")
        ]
        for text in texts:
            await daemon.ask(text)
        cache = daemon.store.cache
        assert cache.evictions > 0
        semantic = daemon.broker.semantic.engine
        assert semantic is not None
        assert len(semantic) == len(cache) < len(texts)
        assert await daemon.rows("SELECT count(*) FROM semantic_questions") == [(len(cache),)]
        assert not (await daemon.ask("Please explain the history of Rome.")).cached  # evicted
        clock.advance(101)
        assert not (await daemon.ask("Please explain the history of Lima.")).cached  # expired
        assert daemon.provider.asked[-2:] == [
            "Please explain the history of Rome.",
            "Please explain the history of Lima.",
        ]
        await cache.clear(older_than_s=50)
        assert len(semantic) == len(cache) == 1
        await cache.clear()
        assert len(semantic) == 0
        assert await daemon.rows("SELECT count(*) FROM semantic_questions") == [(0,)]
    finally:
        await daemon.close()


async def test_a_restart_restores_the_questions_from_the_file(directory: Path) -> None:
    daemon = await Daemon(directory, config()).open()
    await daemon.ask(ASKED)
    await daemon.ask("Turn on dark mode")
    again = await daemon.restarted()
    try:
        assert again.semantic_entries() == 2
        assert (await again.ask(PARAPHRASE)).cache == "semantic"
        assert not (await again.ask("Turn off dark mode")).cached
        assert again.provider.asked == ["Turn off dark mode"]
    finally:
        await again.close()


async def test_a_restart_embeds_again_vectors_of_another_scheme_and_drops_orphans(
    directory: Path,
) -> None:
    daemon = await Daemon(directory, config()).open()
    await daemon.ask(ASKED)
    await daemon.ask("Turn on dark mode")
    await daemon.store.db.write(
        [
            (
                "UPDATE semantic_questions SET scheme = 'old', vector = x'00' WHERE text = ?",
                (ASKED,),
            ),
            ("INSERT INTO semantic_questions VALUES (x'00', x'00', 'orphan', x'00', 'old')", ()),
        ]
    )
    again = await daemon.restarted()
    try:
        assert again.semantic_entries() == 2
        rows = await again.rows("SELECT text, scheme, length(vector) FROM semantic_questions")
        assert sorted(rows) == [
            (ASKED, VECTOR_SCHEME, 256),
            ("Turn on dark mode", VECTOR_SCHEME, 256),
        ]
        assert (await again.ask(PARAPHRASE)).cache == "semantic"
    finally:
        await again.close()


async def test_mode_off_looks_nothing_up_and_a_reload_turns_it_on(directory: Path) -> None:
    daemon = await Daemon(directory, config("off")).open()
    try:
        await daemon.ask(ASKED)
        assert not (await daemon.ask(PARAPHRASE)).cached
        assert daemon.broker.semantic.engine is None
        assert daemon.store.cache.status().semantic_mode == "off"
        daemon.store.reconfigure(config())
        daemon.broker.semantic.reconfigure(config())
        starting = daemon.broker.semantic._starting
        assert starting is not None
        await starting
        assert daemon.store.cache.status().semantic_mode == "on"
        # answers stored while off have no question: asked again, then served in other words
        assert not (await daemon.ask("how to reverse a string in python")).cached
        await daemon.ask("Turn on dark mode")
        assert (await daemon.ask("turn on dark mode, please")).cache == "semantic"
    finally:
        await daemon.close()


async def test_with_guardrails_the_semantic_cache_holds_placeholders_and_restores_each_callers(
    directory: Path,
) -> None:
    """Guardrails run before step 3: the question held and the answer cached carry the
    placeholder, never a value, and a semantic hit for another caller's paraphrase comes back
    with that caller's own value."""
    cfg = one_provider_config(
        cache={"semantic": {"mode": "on"}}, guardrails={"input": {"email": "mask"}}
    )
    daemon = await Daemon(directory, cfg).open()
    try:
        first = await daemon.ask("How do I send a reminder to jane.doe@example.com in Python?")
        assert (
            first.content
            == "answer to: How do I send a reminder to jane.doe@example.com in Python?"
        )
        other = await daemon.ask(
            "What's the best way to send a reminder to bob.smith@example.org in Python?"
        )
        assert (other.cached, other.cache) == (True, "semantic")
        assert "bob.smith@example.org" in (other.content or "")
        assert "jane.doe" not in (other.content or "")
        [sent] = daemon.provider.asked
        assert "@" not in sent
        [(held,)] = await daemon.rows("SELECT text FROM semantic_questions")
        assert "@" not in held
    finally:
        await daemon.close()
    assert not files_holding(directory, (b"jane.doe", b"bob.smith"))


def files_holding(directory: Path, values: tuple[bytes, ...]) -> list[Path]:
    """The files under ``directory`` whose bytes hold any of ``values``."""
    return [
        path
        for path in directory.rglob("*")
        if path.is_file() and any(value in path.read_bytes() for value in values)
    ]
