"""The response cache: answers stored in ``quotad.db``, a compact index of them in memory.

The key is a hash of the canonical request (DESIGN §8, :mod:`.answers`): the model as asked (a
group or a target), the messages, tools and sampling parameters, ``extra``, and whether it
streams; not the app, priority, tags, user or cache mode. A streamed answer is stored with its
chunks and a stream hit replays them chunk by chunk, then its ``ChatEnd`` (``cached=True``);
plain and streamed requests are cached apart, so each gets the shape it asked for.

Per request, ``cache`` is ``use`` (look up; store a miss's answer), ``bypass`` (neither),
``refresh`` (do not look up; store the new answer) or ``only`` (look up; a miss is an error:
``bad_request`` with ``details["cache"] = "miss"``, and no provider is called).

Memory. The answers live in ``quotad.db``: a hit reads its answer there by key, on the event
loop (:meth:`Database.read_now`, ~10 µs), and decodes it; one of :data:`OFF_LOOP_ANSWER_BYTES`
or more is read off the loop. In memory are the index of
:mod:`.cache_index` (what lookups and eviction weigh, ~0.2-0.3 KB an entry), the answers stored
but not committed yet (a hit in between is served from those), and the last
:data:`RECENT_ANSWERS` answers stored or hit, decoded (:data:`RECENT_BYTES` of them at most: a
prompt asked again and again is answered without a read).

Entries expire ``ttl_s`` after they were stored. ``max_mb`` bounds the sum of the entries'
sizes, each its stored answer and key plus :data:`BYTES_PER_ENTRY` for its index in memory: it
bounds both the disk the answers take and the memory the index takes. Past it, entries are
evicted by ``eviction``: ``lru`` (least recently used), ``lfu`` (fewest hits, then least
recently used) or ``cost`` (what saves least per byte: the cost of the call it replaces times
one plus its hits, divided by its size). An entry just stored is never its own victim. Writes
(new entries, hit counts, evictions) join the group commit of the request's ledger row; nothing
on the hit path waits for a commit beyond that. An entry whose write fails (a full disk) leaves
the index: what is in the index is in the file, or about to be.

Follower. The semantic cache (:mod:`quotad.daemon.semantic.step`) keeps a question beside some
entries; as the :class:`CacheFollower` it is told of every entry that goes (evicted, expired,
replaced, unreadable, not written, cleared) and adds its figures to :meth:`Cache.status`.
:meth:`Cache.take`, :meth:`~Cache.peek` and :meth:`~Cache.alive` are its way in: an entry used
without counting an exact hit, read without using it, and whether it still answers.
"""

from __future__ import annotations

import logging
import math
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple, Protocol

import msgspec

from quotad.daemon.clock import Clock
from quotad.daemon.config import CacheConfig
from quotad.daemon.errors import RequestError
from quotad.daemon.store.answers import (
    ANSWER_DECODERS,
    Answer,
    CachedChat,
    CachedChunk,
    CachedEmbedding,
    ChatAnswer,
    Kind,
    chat_canonical,
    chat_key,
    decode_answer,
    digest_off_loop,
    embed_canonical,
    embed_key,
    encode_answer,
)
from quotad.daemon.store.cache_index import BYTES_PER_ENTRY, KEY_BYTES, CacheIndex
from quotad.daemon.store.db import Database, Statement, StoreError, WriteFailed
from quotad.daemon.store.warm import WarmEntry
from quotad.protocol.messages import CacheMode, CacheStatus, Chat, ChatChunk, Embed, EmbedReply

__all__ = [  # the stored shapes and keys live in .answers; imported from here too
    "Answer",
    "Cache",
    "CacheEntry",
    "CacheFollower",
    "Cacheable",
    "CachedChat",
    "CachedChunk",
    "CachedEmbedding",
    "Kind",
    "chat_key",
    "embed_key",
]

log = logging.getLogger("quotad.cache")

RECENT_ANSWERS: Final = 256
"""Answers kept in memory after their last use (decoded, ready to answer a hit)."""
RECENT_BYTES: Final = 1024 * 1024
"""The most the answers kept after their last use may take, stored."""
RECENT_ANSWER_BYTES: Final = 64 * 1024
"""The largest answer (stored) kept in memory after its use."""
OFF_LOOP_ANSWER_BYTES: Final = 256 * 1024
"""An answer stored this large or larger is committed on the writer's thread, not on the
event loop (:meth:`Database.write_later`'s ``large``): SQLite writing 13 MB into the WAL held the
loop ~30 ms; a smaller one costs less than the thread's round trip. A hit reads one this large
off the loop too (:meth:`Cache._read_stored`)."""
LOAD_PAGE_ROWS: Final = 4096
"""Rows read at a time when the index is filled at start (not 100k rows' tuples at once)."""
MAX_HITS: Final = 2**62
"""The most hits a row may count at start: the index keeps them in 64-bit integers."""


class Cacheable(NamedTuple):
    """An answer a request will store at step 7, under its key."""

    key: bytes
    kind: Kind
    answer: Answer

    @classmethod
    def of(
        cls, key: bytes, reply: ChatAnswer | EmbedReply, chunks: Sequence[ChatChunk] = ()
    ) -> Cacheable:
        """What is stored of ``reply`` under ``key`` (with its chunks, when it was streamed)."""
        if isinstance(reply, EmbedReply):
            return cls(key, "embed", CachedEmbedding.of(reply))
        return cls(key, "chat", CachedChat.of(reply, chunks))


class CacheEntry(NamedTuple):
    """A hit: the stored answer, what the call it replaces cost, and its hits so far; a
    semantic hit also its similarity (None: an exact hit)."""

    key: bytes
    kind: Kind
    answer: Answer
    cost_usd: float
    hits: int
    similarity: float | None = None


class CacheFollower(Protocol):
    """What keeps state per entry beside the cache (the semantic cache's questions): told
    when an entry goes, and adds its figures to the cache's."""

    def removed(self, key: bytes) -> None:
        """The entry of ``key`` is gone (evicted, expired, replaced, unreadable, cleared)."""

    def cleared(self) -> None:
        """Every entry is gone."""

    def add_figures(self, status: CacheStatus) -> None:
        """Fill in the follower's fields of the cache's status."""


class _Held(NamedTuple):
    """An answer held in memory (one not committed yet, or one of the recently used), and
    its stored size."""

    kind: Kind
    answer: Answer
    size: int


_INSERT: Final = (
    "INSERT OR REPLACE INTO cache (key, kind, model, payload, created, last_used, hits, "
    "cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_TOUCH: Final = "INSERT OR REPLACE INTO cache_use (key, last_used, hits) VALUES (?, ?, ?)"
_DELETE: Final = "DELETE FROM cache WHERE key = ?"
_ANSWER: Final = "SELECT kind, payload FROM cache WHERE key = ?"
_LOAD_PAGE: Final = (
    "SELECT cache.rowid, cache.key, kind, created, coalesce(cache_use.last_used, "
    "cache.last_used), coalesce(cache_use.hits, cache.hits), cost_usd, length(payload) "
    "FROM cache LEFT JOIN cache_use ON cache_use.key = cache.key "
    "WHERE cache.rowid > ? ORDER BY cache.rowid LIMIT ?"
)


class Cache:
    """The response cache: a compact in-memory index of every entry, in front of the
    ``cache`` table that holds the answers."""

    def __init__(self, config: CacheConfig, db: Database, clock: Clock) -> None:
        self.mode = config.mode
        self.enabled = config.mode == "on"
        self.ttl_s = config.ttl_s
        self.max_bytes = int(config.max_mb * 1024 * 1024)
        self.clock = clock
        self._db = db
        self._index = CacheIndex(config.eviction)
        self._unwritten: dict[bytes, _Held] = {}
        self._recent: OrderedDict[bytes, _Held] = OrderedDict()
        self._recent_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.saved_usd = 0.0
        self.follower: CacheFollower | None = None
        """Told of every entry that goes (the semantic cache, when it is on)."""

    @property
    def eviction(self) -> str:
        return self._index.eviction

    @property
    def size_bytes(self) -> int:
        """The entries' sizes: their stored answers and keys, and their index in memory."""
        return self._index.bytes

    # ------------------------------------------------------------------ lookups

    async def key_of(self, request: Chat | Embed, targets: Iterable[str] = ()) -> bytes | None:
        """The request's key (an embeddings request's with ``targets``, those its model
        resolves to: :func:`embed_key`), a big request's hashed off the event loop
        (:func:`digest_off_loop`); None when it neither looks up nor stores (the cache is off,
        or ``cache="bypass"``), so that hashing costs such a request nothing."""
        if not self.enabled or request.cache == "bypass":
            return None
        if isinstance(request, Chat):
            return await digest_off_loop(chat_canonical(request))
        return await digest_off_loop(embed_canonical(request, targets))

    async def lookup(self, key: bytes | None, mode: CacheMode) -> CacheEntry | None:
        """The entry answering ``key``, counted as a hit; None on a miss or when ``mode``
        does not look up. ``only`` raises ``bad_request`` on a miss."""
        if not self.enabled and mode == "only":
            raise RequestError(
                "bad_request", 'cache="only" but the cache is off ([cache] mode = "off")'
            )
        if key is None or mode == "bypass" or mode == "refresh":
            return None
        hit = await self.take(key)
        if hit is None:
            self.misses += 1
            if mode == "only":
                raise self.only_missed()
            return None
        self.hits += 1
        return hit

    async def take(self, key: bytes, similarity: float | None = None) -> CacheEntry | None:
        """The live entry of ``key``, used: filed as just used, its hit counted for eviction
        and its savings in :attr:`saved_usd` (not in :attr:`hits` or :attr:`misses`: the
        caller counts those); None when it is absent, expired (then dropped) or unreadable.
        ``similarity`` marks a semantic hit (see :class:`CacheEntry`)."""
        index = self._index
        slot = index.find(key)
        if slot is None:
            return None
        if self.clock.time() - index.created(slot) > self.ttl_s:
            self._drop(slot, key)
            return None
        hit = await self._read(slot, key)
        return None if hit is None else self.use(hit, similarity)

    def use(self, entry: CacheEntry, similarity: float | None = None) -> CacheEntry | None:
        """Use ``entry``, just read (by :meth:`peek`: a big answer is not read twice), as
        :meth:`take` does; None when it has gone since it was read."""
        index = self._index
        key = entry.key
        slot = index.find(key)  # where it is now: a large one was read off the event loop
        if slot is None:
            return None
        index.touch(slot)
        self.saved_usd += entry.cost_usd
        self._db.write_later([(_TOUCH, (key, self.clock.time(), index.hits(slot)))])
        return entry if similarity is None else entry._replace(similarity=similarity)

    async def peek(self, key: bytes) -> CacheEntry | None:
        """The live entry of ``key`` without using it (nothing counted or filed again)."""
        slot = self._index.find(key)
        if slot is None or self.clock.time() - self._index.created(slot) > self.ttl_s:
            return None
        return await self._read(slot, key)

    def alive(self, key: bytes) -> bool:
        """Whether ``key`` has an entry that has not expired."""
        slot = self._index.find(key)
        return slot is not None and self.clock.time() - self._index.created(slot) <= self.ttl_s

    @staticmethod
    def only_missed() -> RequestError:
        """The error of a ``cache="only"`` request that found no answer."""
        return RequestError(
            "bad_request",
            'cache="only": no cached answer for this request (nothing was sent to a provider)',
            details={"cache": "miss"},
        )

    async def _read(self, slot: int, key: bytes) -> CacheEntry | None:
        """The answer of ``slot``: held in memory (not committed yet, or recently used), else
        read from ``quotad.db`` (a large one off the event loop: :meth:`_read_stored`). None
        (and the entry dropped) when it cannot be read, or it went while it was read."""
        held = self._unwritten.get(key)
        if held is None and (held := self._recent.get(key)) is not None:
            self._recent.move_to_end(key)
        if held is None:
            if self._index.size(slot) >= OFF_LOOP_ANSWER_BYTES:
                held = await self._read_stored(key, off_loop=True)
                found = self._index.find(key)  # it may have gone, or been replaced, meanwhile
                if held is None or found is None:
                    return None
                slot = found
            else:
                held = await self._read_stored(key, off_loop=False)
                if held is None:
                    return None
            self._remember(key, held)
        index = self._index
        return CacheEntry(key, held.kind, held.answer, index.cost_usd(slot), index.hits(slot) + 1)

    async def _read_stored(self, key: bytes, *, off_loop: bool) -> _Held | None:
        """The answer of ``key`` as read from ``quotad.db`` and decoded: ``off_loop``, read on
        the read connection's thread (SQLite, which lets go of the GIL, read a 13 MB answer
        from its pages in ~200 ms on the loop), else here (:meth:`Database.read_now`: a small
        one costs less than the round trip). It is decoded here: msgspec holds the GIL, so a
        thread would not spare the loop. None when it is not there or unreadable (then
        dropped, if still in the index)."""
        try:
            if off_loop:
                rows = await self._db.read(_ANSWER, (key,))
            else:
                rows = self._db.read_now(_ANSWER, (key,))
        except StoreError as error:
            log.warning("cache entry %s not read, a miss: %s", key.hex(), error)
            return None
        if not rows:  # not in the file (never happens: a write that failed drops it)
            if (slot := self._index.find(key)) is not None:
                self._index.remove(slot)
                self._forget(key)
            return None
        kind, payload = rows[0]
        try:
            answer = decode_answer(kind, payload)
        except msgspec.DecodeError as error:
            log.warning("dropping an unreadable cache entry (%s): %s", key.hex(), error)
            if (slot := self._index.find(key)) is not None:
                self._drop(slot, key)
            return None
        return _Held(kind, answer, len(payload))

    def _drop(self, slot: int, key: bytes) -> None:
        """Remove an entry (expired, unreadable) from the index and the file."""
        self._index.remove(slot)
        self._forget(key)
        self._db.write_later([(_DELETE, (key,))])

    def _remember(self, key: bytes, held: _Held) -> None:
        """Keep ``held`` among the recently used answers (unless it is large), forgetting the
        least recently used past :data:`RECENT_ANSWERS` or :data:`RECENT_BYTES`."""
        if held.size > RECENT_ANSWER_BYTES:
            return
        recent = self._recent
        previous = recent.pop(key, None)
        if previous is not None:
            self._recent_bytes -= previous.size
        recent[key] = held
        self._recent_bytes += held.size
        while len(recent) > RECENT_ANSWERS or self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= recent.popitem(last=False)[1].size

    def _forget(self, key: bytes) -> None:
        """The answer of ``key`` is gone (replaced, evicted, expired): no copy of it stays,
        and the follower is told."""
        self._unwritten.pop(key, None)
        if (held := self._recent.pop(key, None)) is not None:
            self._recent_bytes -= held.size
        if self.follower is not None:
            self.follower.removed(key)

    def stores(self, mode: CacheMode) -> bool:
        """Whether a request with this ``mode`` stores its answer."""
        return self.enabled and (mode == "use" or mode == "refresh")

    # ------------------------------------------------------------------ storing

    def put(self, key: bytes, kind: Kind, model: str, answer: Answer, cost_usd: float) -> None:
        """Store ``answer`` (replacing any entry of ``key``), evicting past ``max_mb``; the
        rows join the next group commit (the request's ledger row's), on the writer's thread when
        the answer is large (:data:`OFF_LOOP_ANSWER_BYTES`)."""
        statements, stored = self._store(key, kind, model, answer, cost_usd)
        if statements:
            large = stored[0][1].size >= OFF_LOOP_ANSWER_BYTES
            self._db.write_later(
                statements, lambda failure: self._written(stored, failure), large=large
            )

    async def warm(self, entries: Iterable[tuple[WarmEntry, float]]) -> int:
        """Store recorded requests and their answers (``quotad cache warm``), each with the
        cost it saves; returns once they are committed. How many were stored."""
        statements: list[Statement] = []
        stored: list[tuple[bytes, _Held]] = []
        for entry, cost_usd in entries:
            response = entry.response
            chunks = [CachedChunk(delta) for delta in response.chunks or ()]
            answer = CachedChat.of(response, chunks)
            request = entry.request
            written, added = self._store(chat_key(request), "chat", request.model, answer, cost_usd)
            statements += written
            stored += added
        if statements:
            try:
                await self._db.write(statements)
            except WriteFailed as failure:
                self._written(stored, failure)
                raise
            self._written(stored, None)
        return len(stored)

    def _store(
        self, key: bytes, kind: Kind, model: str, answer: Answer, cost_usd: float
    ) -> tuple[list[Statement], list[tuple[bytes, _Held]]]:
        """Add the entry to the index and evict past ``max_mb``: the statements that persist
        it (none when the answer alone is larger than the whole cache), and the answer kept
        in memory until they are committed."""
        payload = encode_answer(answer)
        size = len(payload) + len(key) + BYTES_PER_ENTRY
        if size > self.max_bytes or len(key) != KEY_BYTES:
            return [], []
        now = self.clock.time()
        index = self._index
        statements: list[Statement] = [
            (_INSERT, (key, kind, model, payload, now, now, 0, cost_usd))
        ]
        self._forget(key)  # a replaced answer
        slot, displaced = index.add(key, size, now, cost_usd)
        if displaced is not None:
            self._forget(displaced)
            statements.append((_DELETE, (displaced,)))
        unwritten = self._unwritten[key] = _Held(kind, answer, len(payload))
        return statements + self._evict(keep=slot), [(key, unwritten)]

    def _written(self, stored: list[tuple[bytes, _Held]], failure: WriteFailed | None) -> None:
        """The outcome of storing answers: committed, they are read from the file from now
        on (kept among the recently used meanwhile); not written (a full disk), their entries
        leave the index."""
        for key, unwritten in stored:
            if self._unwritten.get(key) is not unwritten:
                continue  # replaced, evicted or cleared meanwhile
            del self._unwritten[key]
            if failure is None:
                self._remember(key, unwritten)
            elif (slot := self._index.find(key)) is not None:
                self._index.remove(slot)
                self._forget(key)

    async def clear(self, older_than_s: float | None = None) -> int:
        """Remove every entry, or those stored more than ``older_than_s`` ago; how many
        entries were removed from memory."""
        index = self._index
        if older_than_s is None:
            removed = len(index)
            index.clear()
            self._unwritten.clear()
            self._recent.clear()
            self._recent_bytes = 0
            if self.follower is not None:
                self.follower.cleared()
            await self._db.write([("DELETE FROM cache", ())])
            return removed
        cutoff = self.clock.time() - older_than_s
        removed = 0
        for slot in index.slots():
            if index.created(slot) < cutoff:
                self._forget(index.key(slot))
                index.remove(slot)
                removed += 1
        await self._db.write([("DELETE FROM cache WHERE created < ?", (cutoff,))])
        return removed

    async def load(self) -> None:
        """Fill the index from ``quotad.db`` (the answers stay there), a page of rows at a
        time; drops expired entries and rows that are not entries (:func:`_entry_row`), and
        evicts down to ``max_mb``."""
        if not self.enabled:
            return
        index = self._index
        index.clear()
        self._unwritten.clear()
        self._recent.clear()
        self._recent_bytes = 0
        expired_before = self.clock.time() - self.ttl_s
        dropped: list[Statement] = []
        last_used = array("d")
        after = 0
        while rows := await self._db.read(_LOAD_PAGE, (after, LOAD_PAGE_ROWS)):
            for rowid, key, kind, created, used, hits, cost_usd, payload_size in rows:
                after = rowid
                if (
                    not _entry_row(key, created, used, hits, cost_usd)
                    or created < expired_before
                    or kind not in ANSWER_DECODERS
                ):
                    dropped.append((_DELETE, (key,)))
                    continue
                size = payload_size + len(key) + BYTES_PER_ENTRY
                slot, displaced = index.add(key, size, created, cost_usd, hits, file=False)
                if displaced is not None:
                    dropped.append((_DELETE, (displaced,)))
                if slot == len(last_used):
                    last_used.append(used)
                else:
                    last_used[slot] = used
        index.order_uses(last_used)
        dropped += self._evict(keep=None)
        if dropped:
            self._db.write_later(dropped)

    def reconfigure(self, config: CacheConfig) -> None:
        """Apply a reloaded ``[cache]`` (SIGHUP), keeping the entries: a new eviction policy
        re-files them all, a smaller ``max_mb`` evicts at once (written with the next batch)."""
        self.mode = config.mode
        self.enabled = config.mode == "on"
        self.ttl_s = config.ttl_s
        self.max_bytes = int(config.max_mb * 1024 * 1024)
        if config.eviction != self._index.eviction:
            self._index.refile_all(config.eviction)
        if dropped := self._evict(keep=None):
            self._db.write_later(dropped)

    # ------------------------------------------------------------------ eviction

    def _evict(self, keep: int | None) -> list[Statement]:
        """Evict by policy until the entries fit ``max_bytes``; their delete statements."""
        if self._index.bytes <= self.max_bytes:
            return []
        victims = self._index.evict(self.max_bytes, keep)
        for key in victims:
            self._forget(key)
        self.evictions += len(victims)
        return [(_DELETE, (key,)) for key in victims]

    # ------------------------------------------------------------------ figures

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._index.find(key) is not None

    def status(self) -> CacheStatus:
        """The cache's figures (hits, misses and saved_usd since the daemon started), and the
        follower's (the semantic cache's)."""
        lookups = self.hits + self.misses
        status = CacheStatus(
            mode=self.mode,
            entries=len(self._index),
            bytes=self.size_bytes,
            max_bytes=self.max_bytes,
            hits=self.hits,
            misses=self.misses,
            hit_rate=self.hits / lookups if lookups else 0.0,
            evictions=self.evictions,
            saved_usd=self.saved_usd,
        )
        if self.follower is not None:
            self.follower.add_figures(status)
        return status


def _entry_row(key: object, created: object, used: object, hits: object, cost: object) -> bool:
    """Whether a ``cache`` row's columns are an entry's. ``quotad.db`` is the daemon's to
    write, but SQLite keeps any value in any column: one damaged or edited by hand held a text
    or a float where a count is, and the start failed (an integer key would have been read
    as that many zero bytes)."""
    return (
        isinstance(key, bytes)
        and len(key) == KEY_BYTES
        and isinstance(hits, int)
        and 0 <= hits <= MAX_HITS
        and isinstance(cost, (int, float))
        and 0 <= cost < math.inf
        and isinstance(created, (int, float))
        and -math.inf < created < math.inf
        and isinstance(used, (int, float))
        and -math.inf < used < math.inf
    )
