"""The response cache: keys, modes, TTL on a virtual clock, each eviction policy, persistence
across a restart, clearing and warming."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import CacheConfig
from quotad.daemon.errors import RequestError
from quotad.daemon.store import answers
from quotad.daemon.store.answers import CachedEmbedding
from quotad.daemon.store.cache import (
    OFF_LOOP_ANSWER_BYTES,
    Answer,
    Cache,
    CachedChat,
    CachedChunk,
    chat_key,
    embed_key,
)
from quotad.daemon.store.cache_index import BYTES_PER_ENTRY
from quotad.daemon.store.db import Database
from quotad.daemon.store.transactions import in_thread
from quotad.daemon.store.warm import WarmEntry
from quotad.protocol.messages import Chat, ChatEnd, ChatReply, Embed, EmbedReply, Usage
from tests.support.event_loop import threads_hashing_keys

pytestmark = pytest.mark.anyio

ENTRY_BYTES = 1100 + BYTES_PER_ENTRY  # about what one answer below takes, with its index
BASE: dict[str, Any] = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


def chat(**fields: Any) -> Chat:
    return msgspec.convert({**BASE, **fields}, Chat)


def answer(text: str = "", size: int = 1000) -> CachedChat:
    content = (text + " " + "x" * size)[:size]
    return CachedChat(content, None, "stop", Usage(prompt_tokens=3, completion_tokens=5), "p/m")


async def hit_answer(cache: Cache, key: bytes) -> Answer:
    """The answer ``cache`` holds for ``key`` (looked up as ``use``), which must be a hit."""
    hit = await cache.lookup(key, "use")
    assert hit is not None
    return hit.answer


def cache_of(
    db: Database, clock: VirtualClock, *, entries: float = 100, eviction: Any = "lru", **more: Any
) -> Cache:
    config = CacheConfig(max_mb=entries * ENTRY_BYTES / 2**20, eviction=eviction, **more)
    return Cache(config, db, clock)


async def stored_keys(db: Database) -> set[bytes]:
    await db.write([])  # everything submitted before is committed after this
    return {bytes(row[0]) for row in await db.read("SELECT key FROM cache")}


# --------------------------------------------------------------------------- keys


def test_the_key_ignores_who_asks_and_how_urgently() -> None:
    key = chat_key(chat())
    same = chat(app="other", priority="high", tags=["x"], user="u", cache="refresh", max_wait_s=3)
    assert chat_key(same) == key


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"messages": [{"role": "system", "content": "hi"}]},
        {"temperature": 0.5},
        {"max_tokens": 9},
        {"seed": 1},
        {"stop": ["."]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "json_object"}},
        {"extra": {"top_k": 3}},
        {"stream": True},
    ],
)
def test_the_key_changes_with_what_changes_the_answer(change: dict[str, Any]) -> None:
    assert chat_key(chat(**change)) != chat_key(chat())


def test_the_key_does_not_depend_on_dict_order() -> None:
    one = chat(extra={"a": 1, "b": {"c": 2, "d": 3}})
    two = chat(extra={"b": {"d": 3, "c": 2}, "a": 1})
    assert chat_key(one) == chat_key(two)


async def test_requests_that_neither_look_up_nor_store_are_not_hashed(db: Database) -> None:
    assert await cache_of(db, VirtualClock()).key_of(chat()) == chat_key(chat())
    assert await cache_of(db, VirtualClock()).key_of(chat(cache="bypass")) is None
    assert await Cache(CacheConfig(mode="off"), db, VirtualClock()).key_of(chat()) is None


async def test_a_big_request_is_hashed_off_the_event_loop(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """blake2b lets go of the GIL: a 13 MB chat's hash (16 ms) no longer holds the loop."""
    cache = cache_of(db, VirtualClock())
    big = chat(messages=[{"role": "user", "content": "x" * answers.OFF_LOOP_KEY_BYTES}])
    small_embed = msgspec.convert({"model": "fast", "input": "hi"}, Embed)
    big_embed = msgspec.convert({"model": "fast", "input": "x" * 2**20}, Embed)
    expected = [chat_key(big), chat_key(chat()), embed_key(big_embed, ["p/fast"])]
    expected.append(embed_key(small_embed, ["p/fast"]))
    threads = threads_hashing_keys(monkeypatch)
    keys = [await cache.key_of(big), await cache.key_of(chat())]
    keys += [await cache.key_of(big_embed, ["p/fast"]), await cache.key_of(small_embed, ["p/fast"])]
    assert keys == expected
    loop = threading.get_ident()
    assert [thread == loop for thread in threads] == [False, True, False, True]


async def test_a_big_answer_is_committed_off_the_event_loop(db: Database) -> None:
    """SQLite copies a value into the WAL with the GIL let go: a 13 MB answer's commit (~30
    ms) no longer holds the loop; a small one's is still committed on it (no round trip)."""
    on_loop: list[bool] = []
    loop = threading.get_ident()

    def traced(statement: str) -> None:
        if statement.startswith("INSERT OR REPLACE INTO cache"):
            on_loop.append(threading.get_ident() == loop)

    assert db._writer is not None
    db._writer._conn.set_trace_callback(traced)
    cache = cache_of(db, VirtualClock(), entries=2000)
    small, big = answer("small"), answer("big", 2**20)  # past OFF_LOOP_ANSWER_BYTES
    small_key, big_key = chat_key(chat()), chat_key(chat(max_tokens=9))
    committed_on_loop = []
    for key, stored in ((small_key, small), (big_key, big)):
        cache.put(key, "chat", "fast", stored, 0.01)
        await db.committed()
        committed_on_loop.append(set(on_loop))
        on_loop.clear()
    assert committed_on_loop == [{True}, {False}]
    assert await hit_answer(cache, big_key) == big
    assert await hit_answer(cache, small_key) == small
    assert await stored_keys(db) == {small_key, big_key}


async def test_a_big_answer_is_read_off_the_event_loop(db: Database) -> None:
    """SQLite read a 13 MB answer from its pages in ~200 ms, holding the loop; a small one
    is still read on it (no round trip)."""
    loop = threading.get_ident()
    read_on_loop: list[bool] = []

    def traced(statement: str) -> None:
        if statement.startswith("SELECT kind, payload FROM cache"):
            read_on_loop.append(threading.get_ident() == loop)

    assert db._reader is not None
    assert db._point_reader is not None
    await in_thread(db._reader, lambda connection: connection.set_trace_callback(traced))
    db._point_reader.set_trace_callback(traced)
    cache = cache_of(db, VirtualClock(), entries=2000)
    small, big = answer("small"), answer("big", OFF_LOOP_ANSWER_BYTES)
    small_key, big_key = chat_key(chat()), chat_key(chat(max_tokens=9))
    cache.put(small_key, "chat", "fast", small, 0.01)
    cache.put(big_key, "chat", "fast", big, 0.01)
    await db.committed()
    reloaded = cache_of(db, VirtualClock(), entries=2000)  # nothing held in memory
    await reloaded.load()
    assert await hit_answer(reloaded, small_key) == small
    assert await hit_answer(reloaded, big_key) == big
    assert read_on_loop == [True, False]


def test_chat_and_embed_keys_never_collide() -> None:
    embed = msgspec.convert({"model": "fast", "input": "hi"}, Embed)
    assert embed_key(embed, ["p/fast"]) != chat_key(chat())


# --------------------------------------------------------------------------- modes


async def test_use_misses_then_hits_and_counts(db: Database) -> None:
    cache = cache_of(db, VirtualClock())
    key = chat_key(chat())
    assert await cache.lookup(key, "use") is None
    assert cache.stores("use")
    cache.put(key, "chat", "fast", answer("first"), 0.002)
    assert await hit_answer(cache, key) == answer("first")
    status = cache.status()
    assert (status.hits, status.misses, status.entries) == (1, 1, 1)
    assert status.hit_rate == 0.5
    assert status.saved_usd == 0.002
    assert key in await stored_keys(db)


async def test_bypass_neither_looks_up_nor_stores(db: Database) -> None:
    cache = cache_of(db, VirtualClock())
    key = chat_key(chat())
    cache.put(key, "chat", "fast", answer(), 0.0)
    assert await cache.lookup(key, "bypass") is None
    assert not cache.stores("bypass")
    assert (cache.status().hits, cache.status().misses) == (0, 0)


async def test_refresh_skips_the_lookup_and_replaces_the_answer(db: Database) -> None:
    cache = cache_of(db, VirtualClock())
    key = chat_key(chat())
    cache.put(key, "chat", "fast", answer("old"), 0.0)
    assert await cache.lookup(key, "refresh") is None
    assert cache.stores("refresh")
    cache.put(key, "chat", "fast", answer("new"), 0.0)
    assert await hit_answer(cache, key) == answer("new")
    assert len(cache) == 1


async def test_only_answers_hits_and_refuses_misses(db: Database) -> None:
    cache = cache_of(db, VirtualClock())
    key = chat_key(chat())
    with pytest.raises(RequestError) as refused:
        await cache.lookup(key, "only")
    assert refused.value.code == "bad_request"
    assert refused.value.details == {"cache": "miss"}
    assert not cache.stores("only")
    cache.put(key, "chat", "fast", answer(), 0.0)
    assert await cache.lookup(key, "only") is not None


async def test_a_cache_that_is_off_never_answers(db: Database) -> None:
    cache = Cache(CacheConfig(mode="off"), db, VirtualClock())
    key = chat_key(chat())
    assert await cache.lookup(key, "use") is None
    assert not cache.stores("use")
    with pytest.raises(RequestError, match="the cache is off"):
        await cache.lookup(key, "only")
    assert cache.status().mode == "off"


# --------------------------------------------------------------------------- TTL


async def test_entries_expire_after_ttl(db: Database) -> None:
    clock = VirtualClock()
    cache = cache_of(db, clock, ttl_s=60)
    key = chat_key(chat())
    cache.put(key, "chat", "fast", answer(), 0.0)
    clock.advance(59)
    assert await cache.lookup(key, "use") is not None
    clock.advance(2)
    assert await cache.lookup(key, "use") is None
    assert len(cache) == 0
    assert key not in await stored_keys(db)


# --------------------------------------------------------------------------- eviction


def keys_named(*names: str) -> dict[str, bytes]:
    return {name: chat_key(chat(messages=[{"role": "user", "content": name}])) for name in names}


async def test_lru_evicts_the_least_recently_used(db: Database) -> None:
    clock = VirtualClock()
    cache = cache_of(db, clock, entries=3.5, eviction="lru")
    keys = keys_named("a", "b", "c", "d")
    for name in "abc":
        cache.put(keys[name], "chat", "fast", answer(name), 0.01)
        clock.advance(1)
    assert await cache.lookup(keys["a"], "use") is not None  # a is now the most recent
    clock.advance(1)
    cache.put(keys["d"], "chat", "fast", answer("d"), 0.01)
    assert {name for name, key in keys.items() if key in cache} == {"a", "c", "d"}
    assert cache.status().evictions == 1
    assert keys["b"] not in await stored_keys(db)
    assert cache.size_bytes <= cache.max_bytes


async def test_lfu_evicts_the_least_frequently_used_but_never_the_newcomer(db: Database) -> None:
    clock = VirtualClock()
    cache = cache_of(db, clock, entries=3.5, eviction="lfu")
    keys = keys_named("a", "b", "c", "d", "e")
    for name in "abc":
        cache.put(keys[name], "chat", "fast", answer(name), 0.01)
        clock.advance(1)
    for name in "aac":
        await cache.lookup(keys[name], "use")
        clock.advance(1)
    cache.put(keys["d"], "chat", "fast", answer("d"), 0.01)  # b has no hits: it goes
    assert {name for name, key in keys.items() if key in cache} == {"a", "c", "d"}
    clock.advance(1)
    cache.put(keys["e"], "chat", "fast", answer("e"), 0.01)  # d has no hits now: it goes
    assert {name for name, key in keys.items() if key in cache} == {"a", "c", "e"}


async def test_cost_evicts_what_saves_least_per_byte(db: Database) -> None:
    clock = VirtualClock()
    cache = cache_of(db, clock, entries=3.5, eviction="cost")
    keys = keys_named("dear", "cheap", "mid", "new", "newer")
    for name, cost in (("dear", 0.05), ("cheap", 0.0001), ("mid", 0.002)):
        cache.put(keys[name], "chat", "fast", answer(name), cost)
        clock.advance(1)
    cache.put(keys["new"], "chat", "fast", answer("new"), 0.001)
    assert {name for name, key in keys.items() if key in cache} == {"dear", "mid", "new"}
    for _ in range(5):  # hits multiply what "new" saves: 0.001 x 6 > 0.002 x 1
        await cache.lookup(keys["new"], "use")
    cache.put(keys["newer"], "chat", "fast", answer("newer"), 0.03)
    assert {name for name, key in keys.items() if key in cache} == {"dear", "new", "newer"}


async def test_a_replaced_entry_is_weighed_by_its_new_use(db: Database) -> None:
    clock = VirtualClock()
    cache = cache_of(db, clock, entries=2.5, eviction="lru")
    keys = keys_named("a", "b", "c")
    for name in "ab":
        cache.put(keys[name], "chat", "fast", answer(name), 0.01)
        clock.advance(1)
    cache.put(keys["a"], "chat", "fast", answer("a again"), 0.01)  # a refresh: a is new now
    clock.advance(1)
    cache.put(keys["c"], "chat", "fast", answer("c"), 0.01)
    assert {name for name, key in keys.items() if key in cache} == {"a", "c"}


async def test_an_answer_larger_than_the_cache_is_not_stored(db: Database) -> None:
    cache = cache_of(db, VirtualClock(), entries=1)
    cache.put(chat_key(chat()), "chat", "fast", answer(size=5000), 0.0)
    assert len(cache) == 0
    assert cache.size_bytes == 0


# --------------------------------------------------------------------------- persistence


async def test_entries_and_hit_counts_survive_a_restart_expired_ones_do_not(
    directory: Path,
) -> None:
    clock = VirtualClock()
    keys = keys_named("kept", "old")
    first = Database(directory / "quotad.db")
    await first.open()
    cache = cache_of(first, clock, ttl_s=100)
    cache.put(keys["old"], "chat", "fast", answer("old"), 0.5)
    clock.advance(50)
    streamed = CachedChat("ab", None, "stop", Usage(), "p/m", [CachedChunk("a"), CachedChunk("b")])
    cache.put(keys["kept"], "chat", "fast", streamed, 0.25)
    await cache.lookup(keys["kept"], "use")
    await first.close()

    clock.advance(60)  # "old" is 110 s old now
    second = Database(directory / "quotad.db")
    await second.open()
    try:
        reloaded = cache_of(second, clock, ttl_s=100)
        await reloaded.load()
        assert keys["old"] not in reloaded
        hit = await reloaded.lookup(keys["kept"], "use")
        assert hit is not None
        assert hit.answer == streamed
        assert (hit.hits, hit.cost_usd) == (2, 0.25)
        assert await stored_keys(second) == {keys["kept"]}
    finally:
        await second.close()


async def test_a_hit_is_written_in_a_row_of_its_own_not_in_its_answer_s(db: Database) -> None:
    """Its count and time were updated in the answer's row, which made SQLite read the whole
    answer again: 80 ms for 26 MB, at every hit, on the event loop. The row of use goes
    with its answer (replaced, cleared)."""
    written: list[str] = []
    assert db._writer is not None
    db._writer._conn.set_trace_callback(written.append)
    clock = VirtualClock()
    stored_at = clock.time()
    cache = cache_of(db, clock)
    key = chat_key(chat())
    cache.put(key, "chat", "fast", answer("first"), 0.01)
    await db.committed()
    clock.advance(5)
    written.clear()
    assert await cache.lookup(key, "use") is not None
    await db.committed()
    assert [statement.split(" (")[0] for statement in written if "cache" in statement] == [
        "INSERT OR REPLACE INTO cache_use"
    ]
    assert await db.read("SELECT hits, last_used FROM cache_use") == [(1, stored_at + 5)]
    assert await db.read("SELECT hits, last_used FROM cache") == [(0, stored_at)]  # as stored
    cache.put(key, "chat", "fast", answer("second"), 0.01)  # a new answer: not used yet
    await db.committed()
    assert await db.read("SELECT count(*) FROM cache_use") == [(0,)]
    assert await cache.lookup(key, "use") is not None
    await cache.clear()
    assert await db.read("SELECT count(*) FROM cache_use") == [(0,)]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("key", 10**12),  # bytes(10**12) would be a terabyte
        ("key", "text"),
        ("key", b"short"),
        ("created", "text"),
        ("created", float("inf")),
        ("cost_usd", b"\x00"),
        ("cost_usd", -1.0),
        ("hits", "text"),
        ("hits", 1.5),
        ("hits", -5),
        ("hits", 2**63 - 1),  # the next hit would not fit its array
        ("last_used", "text"),
        ("use.hits", "text"),
        ("use.last_used", float("inf")),
    ],
)
async def test_a_row_that_is_no_entry_is_dropped_at_start_and_the_others_load(
    db: Database, column: str, value: Any
) -> None:
    """``quotad.db`` is the daemon's to write, but one damaged or edited by hand held a cache
    row of odd values: the start failed with a TypeError (a text, a float, bytes for a
    number), or would have allocated a terabyte (an integer key)."""
    clock = VirtualClock()
    now = clock.time()
    good, odd = chat_key(chat()), chat_key(chat(max_tokens=9))
    payload = answers.ANSWER_ENCODER.encode(answer("good"))
    row = {"key": odd, "created": now, "last_used": now, "hits": 1, "cost_usd": 0.5}
    if not column.startswith("use."):
        row[column] = value
    insert = "INSERT INTO cache VALUES (?, 'chat', 'fast', ?, ?, ?, ?, ?)"
    odd_row = (row["key"], payload, row["created"], row["last_used"], row["hits"], row["cost_usd"])
    await db.write([(insert, (good, payload, now, now, 2, 0.25)), (insert, odd_row)])
    if column.startswith("use."):
        use = {"use.hits": (now, value), "use.last_used": (value, 1)}[column]
        await db.write([("INSERT INTO cache_use VALUES (?, ?, ?)", (odd, *use))])
    cache = cache_of(db, clock)
    await cache.load()
    assert good in cache
    assert odd not in cache
    await db.committed()
    assert await db.read("SELECT count(*) FROM cache") == [(1,)]  # the odd row is dropped
    hit = await cache.lookup(good, "use")
    assert hit is not None
    assert (hit.hits, hit.cost_usd) == (3, 0.25)


async def test_clear_everything_or_only_older_entries(db: Database) -> None:
    clock = VirtualClock()
    cache = cache_of(db, clock)
    keys = keys_named("old", "young")
    cache.put(keys["old"], "chat", "fast", answer(), 0.0)
    clock.advance(3600)
    cache.put(keys["young"], "chat", "fast", answer(), 0.0)
    assert await cache.clear(older_than_s=1800) == 1
    assert await stored_keys(db) == {keys["young"]}
    assert await cache.clear() == 1
    assert await stored_keys(db) == set()
    assert cache.size_bytes == 0


async def test_warming_stores_recorded_answers_under_the_live_key(db: Database) -> None:
    cache = cache_of(db, VirtualClock())
    line = {
        "request": {**BASE, "stream": True},
        "response": {"content": "ab", "chunks": ["a", "b"], "usage": {"prompt_tokens": 2}},
    }
    entry = msgspec.convert(line, WarmEntry)
    assert await cache.warm([(entry, 0.125)]) == 1
    hit = await cache.lookup(chat_key(chat(stream=True)), "only")
    assert hit is not None
    assert hit.cost_usd == 0.125
    assert isinstance(hit.answer, CachedChat)
    assert [chunk.delta for chunk in hit.answer.replay(7)] == ["a", "b"]
    assert len(await stored_keys(db)) == 1
    chunks = [CachedChunk("a"), CachedChunk("b")]
    assert hit.answer == CachedChat("ab", None, "stop", Usage(prompt_tokens=2), "", chunks)


def test_a_hit_answers_the_stored_answer_cached_with_what_it_saved() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=5)
    stored = CachedChat("hi", [{"id": "call_1"}], "tool_calls", usage, "p/m")
    fields: dict[str, Any] = {
        "id": 7,
        "content": "hi",
        "tool_calls": [{"id": "call_1"}],
        "finish_reason": "tool_calls",
        "usage": usage,
        "cached": True,
        "saved_usd": 0.25,
        "target": "p/m",
        "request_id": "r-1",
    }
    exact = stored.reply(ChatReply, 7, "r-1", 0.25)
    assert exact == ChatReply(**fields, cache="exact")
    semantic = stored.reply(ChatEnd, 7, "r-1", 0.25, similarity=0.93)
    assert type(semantic) is ChatEnd
    assert semantic == ChatEnd(**fields, cache="semantic", similarity=0.93)
    embedding = CachedEmbedding([[0.5, 1.0]], usage, "p/e").reply(8, "r-2", 0.5)
    assert embedding == EmbedReply(
        id=8,
        embeddings=[[0.5, 1.0]],
        usage=usage,
        cached=True,
        saved_usd=0.5,
        target="p/e",
        request_id="r-2",
    )


# --------------------------------------------------------------------------- answers in the file


async def test_an_entry_whose_write_fails_leaves_the_index(directory: Path) -> None:
    db = Database(directory / "quotad.db", max_size_mb=0.25)
    await db.open()
    try:
        cache = cache_of(db, VirtualClock(), entries=2000)
        written = 0
        for number in range(1000):  # until an entry can no longer be written
            key = chat_key(chat(messages=[{"role": "user", "content": str(number)}]))
            cache.put(key, "chat", "fast", answer(str(number), size=3000), 0.0)
            assert await cache.lookup(key, "use") is not None  # served before its commit
            await db.write([])
            if key not in cache:
                break
            written += 1
        else:
            raise AssertionError("the database never filled up")
        assert await cache.lookup(key, "use") is None
        assert len(cache) == written
        assert len(await stored_keys(db)) == written
    finally:
        await db.close()


async def test_an_unreadable_answer_is_a_miss_and_is_dropped(directory: Path) -> None:
    first = Database(directory / "quotad.db")
    await first.open()
    key = chat_key(chat())
    cache_of(first, VirtualClock()).put(key, "chat", "fast", answer(), 0.0)
    await first.write([("UPDATE cache SET payload = x'c1c1' WHERE key = ?", (key,))])
    await first.close()
    second = Database(directory / "quotad.db")
    await second.open()
    try:
        cache = cache_of(second, VirtualClock())
        await cache.load()  # the answers stay in the file: not decoded here
        assert key in cache
        assert await cache.lookup(key, "use") is None
        assert key not in cache
        assert key not in await stored_keys(second)
    finally:
        await second.close()


async def test_a_replaced_answer_is_never_served_again(db: Database) -> None:
    cache = cache_of(db, VirtualClock())
    key = chat_key(chat())
    cache.put(key, "chat", "fast", answer("old"), 0.0)
    await db.write([])
    assert await hit_answer(cache, key) == answer("old")  # now among the recently used
    cache.put(key, "chat", "fast", answer("new"), 0.0)
    for _ in range(2):  # before its commit, then after it
        assert await hit_answer(cache, key) == answer("new")
        await db.write([])


async def test_a_restart_keeps_the_order_of_use_and_reads_in_pages(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("quotad.daemon.store.cache.LOAD_PAGE_ROWS", 2)
    clock = VirtualClock()
    keys = keys_named("a", "b", "c", "d", "e")
    first = Database(directory / "quotad.db")
    await first.open()
    cache = cache_of(first, clock, entries=4.5)
    for name in "abcd":
        cache.put(keys[name], "chat", "fast", answer(name), 0.01)
        clock.advance(1)
    await cache.lookup(keys["a"], "use")  # b is now the least recently used
    await first.close()

    second = Database(directory / "quotad.db")
    await second.open()
    try:
        reloaded = cache_of(second, clock, entries=4.5)
        await reloaded.load()
        assert len(reloaded) == 4
        hit = await reloaded.lookup(keys["c"], "use")
        assert hit is not None
        assert hit.answer == answer("c")
        clock.advance(1)
        reloaded.put(keys["e"], "chat", "fast", answer("e"), 0.01)
        assert {name for name, key in keys.items() if key in reloaded} == {"a", "c", "d", "e"}
    finally:
        await second.close()


# --------------------------------------------------------------------------- streamed answers

WORLDS = "Grüße, мир, 世界 🌍 👩‍👩‍👧 e\u0301te\u0301 — "
"""Non-English text: 2-, 3- and 4-byte UTF-8, an emoji sequence, combining marks."""
CALL = {"index": 0, "id": "call_1", "type": "function"}


def streamed(content: str | None, *deltas: str, calls: Any = None, end: str = "stop") -> CachedChat:
    """A streamed answer: a chunk per delta, then one that ends it (with ``calls``)."""
    chunks = [CachedChunk(delta) for delta in deltas] + [CachedChunk("", calls, end)]
    return CachedChat(content, calls, end, Usage(prompt_tokens=3), "p/m", chunks)


async def stored_and_read(db: Database, answer: CachedChat) -> tuple[CachedChat, int]:
    """``answer`` as a hit serves it once it is read from the file, and its payload's size."""
    key = chat_key(chat(stream=True))
    cache_of(db, VirtualClock(), entries=2000).put(key, "chat", "fast", answer, 0.01)
    await db.committed()
    reloaded = cache_of(db, VirtualClock(), entries=2000)  # nothing held in memory
    await reloaded.load()
    read = await hit_answer(reloaded, key)
    assert isinstance(read, CachedChat)
    [(size,)] = await db.read("SELECT length(payload) FROM cache")
    assert reloaded.size_bytes == size + len(key) + BYTES_PER_ENTRY
    return read, size


def served(answer: CachedChat) -> tuple[Any, ...]:
    """What every consumer of a hit sees of it: the reply, the stream's end and its chunks."""
    return (
        answer.reply(ChatReply, 7, "r-1", 0.5),
        answer.reply(ChatEnd, 7, "r-1", 0.5, similarity=0.9),
        answer.replay(7),
        answer.content,
    )


@pytest.mark.parametrize("text", ["word " * 40_000, WORLDS * 5_000])
async def test_a_streamed_answer_s_text_is_stored_once(db: Database, text: str) -> None:
    """Its content beside its chunks, a 13 MB answer was a 26 MB row: twice the disk, the
    write, the read, the decoding, and half the entries ``max_mb`` holds."""
    deltas = [text[start : start + 100] for start in range(0, len(text), 100)]
    answer = streamed(text, *deltas)
    read, size = await stored_and_read(db, answer)
    assert read == answer
    assert served(read) == served(answer)
    text_bytes = len(text.encode())
    assert text_bytes < size < text_bytes * 1.1  # and the chunks' framing, ~5 bytes each


@pytest.mark.parametrize(
    "answer",
    [
        streamed("abc", "a", "b", "c"),
        streamed(WORLDS * 3, *WORLDS * 3),  # a chunk per code point: marks apart from their e
        streamed(None, calls=[CALL], end="tool_calls"),  # tool calls only: no content
        streamed("", "", end="stop"),  # an empty stream
        streamed("", end="length"),
        streamed("", "a", "b"),  # a content of its own, whatever its chunks say
        streamed("ab", "a", "b", calls=[CALL], end="tool_calls"),
        CachedChat(WORLDS, None, "stop", Usage(), "p/m"),  # not streamed: no chunks
        CachedChat(
            "ab" + WORLDS,
            [CALL],
            "tool_calls",
            Usage(),
            "p/m",
            [
                CachedChunk("a"),
                CachedChunk("", [CALL]),  # tool calls amid the text
                CachedChunk("", []),  # an empty list is not None
                CachedChunk("b", None, ""),
                CachedChunk(WORLDS, None, "tool_calls"),  # the end with text
            ],
        ),
    ],
    ids=[
        "text",
        "non-english",
        "tool-calls",
        "empty",
        "empty-cut",
        "own",
        "text-and-calls",
        "plain",
        "calls-amid-text",
    ],
)
async def test_a_streamed_answer_is_served_as_it_was_stored(
    db: Database, answer: CachedChat
) -> None:
    read, _ = await stored_and_read(db, answer)
    assert read == answer
    assert served(read) == served(answer)
    assert type(read.content) is type(answer.content)  # None stays None, "" stays ""


def token_deltas(count: int) -> list[str]:
    """``count`` deltas as a model streams them: 1 to 8 characters (some of them not English,
    some none)."""
    draw = random.Random(count)
    text = ("The quick brown fox " + WORLDS) * 4
    deltas = []
    for _ in range(count):
        at = draw.randrange(len(text) - 8)
        deltas.append(text[at : at + draw.randint(0, 8)])
    return deltas


def token_stream(deltas: list[str]) -> CachedChat:
    """A streamed answer of ``deltas``, then a tool call in two pieces, then the end."""
    chunks = [CachedChunk(delta) for delta in deltas]
    chunks += [CachedChunk("", [CALL]), CachedChunk("", [{"index": 0, "arguments": "{}"}])]
    chunks.append(CachedChunk("", None, "tool_calls"))
    return CachedChat("".join(deltas), [CALL], "tool_calls", Usage(), "p/m", chunks)


async def test_a_token_stream_is_stored_in_little_more_than_its_text(db: Database) -> None:
    """Each chunk stored as a MessagePack array of its delta, tool calls and finish reason
    took 4 bytes besides its text: a stream of 1 to 8 characters a chunk was ~1.9 bytes per
    byte of its text, in the file and in what ``max_mb`` weighs. Its text is stored once and
    each chunk as its length (a byte), and a hit replays the very same chunks."""
    deltas = token_deltas(20_000)
    answer = token_stream(deltas)
    read, size = await stored_and_read(db, answer)
    assert served(read) == served(answer)
    assert [chunk.delta for chunk in read.replay(7)] == [*deltas, "", "", ""]
    text_bytes = len((answer.content or "").encode())
    assert size < text_bytes + 20_000 + 300  # a byte a chunk; the marked ones, the usage...
    assert size < 1.3 * text_bytes


@pytest.mark.parametrize("size", [1, 2, 3, 64])
def test_a_hit_s_chunks_made_a_batch_at_a_time_are_the_chunks_stored(size: int) -> None:
    """Marked chunks (tool calls, a finish reason) land where they were, whatever batch
    they fall in; a stream kept whole (its deltas not its content) is batched alike."""
    deltas = ["a", "", "bc", WORLDS, "d", "", "e"]
    chunks = [CachedChunk(delta) for delta in deltas]
    chunks[1] = CachedChunk("", [CALL])
    chunks[2] = CachedChunk("bc", None, "")
    chunks[3] = CachedChunk(WORLDS, [CALL], "stop")
    chunks[6] = CachedChunk("e", None, "stop")
    for content in ("".join(deltas), "a content of its own"):
        answer = CachedChat(content, [CALL], "stop", Usage(), "p/m", chunks)
        batches = list(answer.replay_batches(7, size))
        assert all(0 < len(batch) <= size for batch in batches)
        replayed = [chunk for batch in batches for chunk in batch]
        assert replayed == answer.replay(7)
        assert [(c.delta, c.tool_calls, c.finish_reason) for c in replayed] == [
            (c.delta, c.tool_calls, c.finish_reason) for c in chunks
        ]


async def cache_holding(db: Database, layout: list[Any]) -> tuple[Cache, bytes]:
    """A cache loaded from ``db`` holding one row of a chat answer stored as ``layout`` (as
    some code wrote it, or a damaged one), and the row's key."""
    clock = VirtualClock()
    now = clock.time()
    key = chat_key(chat(stream=True))
    insert = "INSERT INTO cache VALUES (?, 'chat', 'fast', ?, ?, ?, 0, 0.5)"
    await db.write([(insert, (key, msgspec.msgpack.encode(layout), now, now))])
    cache = cache_of(db, clock)
    await cache.load()
    return cache, key


async def test_an_answer_stored_with_its_text_in_its_chunks_still_serves(db: Database) -> None:
    """Rows written by schema 8 hold the chunks whole, and the content as None (the join of
    their deltas): they decode into the answer they were."""
    usage = Usage(prompt_tokens=3)
    schema_8_layout = [
        None,
        [CALL],
        "tool_calls",
        usage,
        "p/m",
        [["a", None, None], [WORLDS, None, None], ["", [CALL], "tool_calls"]],
        True,
    ]  # as the code of schema 8 wrote it
    read = await hit_answer(*await cache_holding(db, schema_8_layout))
    chunks = [CachedChunk("a"), CachedChunk(WORLDS), CachedChunk("", [CALL], "tool_calls")]
    answer = CachedChat("a" + WORLDS, [CALL], "tool_calls", usage, "p/m", chunks)
    assert isinstance(read, CachedChat)
    assert read == answer
    assert served(read) == served(answer)
    assert [chunk.delta for chunk in read.replay(7)] == ["a", WORLDS, ""]


@pytest.mark.parametrize(
    "marks",
    [[[5, None, "stop"]], [[-1, None, "stop"]], [[2, None, "stop"], [1, [CALL]]]],
    ids=["past", "before", "out-of-order"],
)
async def test_a_row_marking_a_chunk_it_does_not_have_is_a_miss(
    db: Database, marks: list[Any]
) -> None:
    """A damaged row (``quotad.db`` edited by hand) is dropped as unreadable, not an internal
    error (or the wrong chunks) at every hit."""
    layout = msgspec.msgpack.decode(answers.encode_answer(streamed("ab", "a", "b")))
    layout[-1] = marks  # of the three chunks there are
    cache, key = await cache_holding(db, layout)
    assert await cache.lookup(key, "use") is None
    assert key not in cache


async def test_an_answer_stored_with_its_content_beside_its_chunks_still_serves(
    db: Database,
) -> None:
    """Rows written before the text was stored once hold it twice: they decode as they did."""
    usage = Usage(prompt_tokens=3)
    old_layout = [
        "ab" + WORLDS,
        [CALL],
        "stop",
        usage,
        "p/m",
        [["a", None, None], ["b", None, None], [WORLDS, None, "stop"]],
    ]  # as the code before wrote it
    read = await hit_answer(*await cache_holding(db, old_layout))
    chunks = [CachedChunk("a"), CachedChunk("b"), CachedChunk(WORLDS, None, "stop")]
    answer = CachedChat("ab" + WORLDS, [CALL], "stop", usage, "p/m", chunks)
    assert read == answer
    assert isinstance(read, CachedChat)
    assert served(read) == served(answer)
