"""What the cache holds in memory: a few hundred bytes an entry whatever the answers' size,
and never more than ``max_mb``. Memory is counted exactly, not read from RSS: the index's
objects by :meth:`CacheIndex.memory_bytes`, and everything the cache allocates with
tracemalloc (slow: on fewer entries)."""

from __future__ import annotations

import hashlib
import tracemalloc
from typing import Any

import pytest

from quotad.daemon.clock import VirtualClock
from quotad.daemon.config import CacheConfig
from quotad.daemon.store.cache import Cache, CachedChat
from quotad.daemon.store.cache_index import BYTES_PER_ENTRY
from quotad.daemon.store.db import Database
from quotad.protocol.messages import Usage

pytestmark = pytest.mark.anyio

GOAL_BYTES_PER_ENTRY = 400
"""Issue 13's goal for a cache entry's memory (the index that held the answers took ~1 KB)."""
USAGE = Usage(prompt_tokens=10, completion_tokens=16)


def key_of(number: int) -> bytes:
    return hashlib.blake2b(f"request {number}".encode(), digest_size=16).digest()


def answer(number: int) -> CachedChat:
    """An answer like the sim's (~170 bytes stored)."""
    text = f"sim reply to: request {number} lorem ipsum dolor sit amet consectetur adipiscing"
    return CachedChat(text, None, "stop", USAGE, "sim/gpt-4o-mini")


async def fill(cache: Cache, db: Database, entries: int, clock: VirtualClock) -> None:
    """``entries`` answers stored, then every third one still stored hit twice, all
    committed (a commit every 256 writes, as concurrent requests' rows make)."""
    for number in range(entries):
        cache.put(key_of(number), "chat", "fast", answer(number), 4e-5)
        clock.advance(0.001)
        if number % 256 == 255:
            await db.write([])
    for number in range(0, entries, 3):
        await cache.lookup(key_of(number), "use")
        await cache.lookup(key_of(number), "use")
        if number % 768 == 0:
            await db.write([])
    await db.write([])


@pytest.mark.parametrize("eviction", ["lru", "lfu", "cost"])
async def test_the_index_takes_what_max_mb_counts_for_it(db: Database, eviction: Any) -> None:
    clock = VirtualClock()
    cache = Cache(CacheConfig(max_mb=1024, eviction=eviction), db, clock)
    entries = 20_000
    await fill(cache, db, entries, clock)
    assert len(cache) == entries
    assert cache.status().hits == 2 * len(range(0, entries, 3))
    assert cache._index.memory_bytes() / entries < BYTES_PER_ENTRY < GOAL_BYTES_PER_ENTRY


async def test_an_entry_takes_a_few_hundred_bytes_of_memory(db: Database) -> None:
    clock = VirtualClock()
    cache = Cache(CacheConfig(max_mb=1024), db, clock)
    entries = 4096
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await fill(cache, db, entries, clock)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(cache) == entries
    assert (after - before) / entries < GOAL_BYTES_PER_ENTRY


async def test_max_mb_bounds_the_memory_of_many_small_entries(db: Database) -> None:
    clock = VirtualClock()
    max_mb = 0.5
    cache = Cache(CacheConfig(max_mb=max_mb), db, clock)
    await fill(cache, db, 8000, clock)
    status = cache.status()
    assert status.evictions > 0
    assert status.bytes <= max_mb * 2**20
    # the answers take ~170 bytes each on disk; with their index counted, fewer fit
    assert len(cache) < max_mb * 2**20 / BYTES_PER_ENTRY
    assert cache._index.memory_bytes() < max_mb * 2**20
