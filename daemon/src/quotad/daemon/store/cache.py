"""The response cache: answers held in memory for a fast hit path, persisted in ``quotad.db``.

The key is a hash of the canonical request (DESIGN §8): the model as asked (a group or a
target), the messages, tools and sampling parameters, ``extra``, and whether it streams; not
the app, priority, tags, user or cache mode. A streamed answer is stored with its chunks and a
stream hit replays them chunk by chunk, then its ``ChatEnd`` (``cached=True``); plain and
streamed requests are cached apart, so each gets the shape it asked for.

Per request, ``cache`` is ``use`` (look up; store a miss's answer), ``bypass`` (neither),
``refresh`` (do not look up; store the new answer) or ``only`` (look up; a miss is an error:
``bad_request`` with ``details["cache"] = "miss"``, and no provider is called).

Entries expire ``ttl_s`` after they were stored. The stored size of the answers is bounded by
``max_mb``; past it, entries are evicted by ``eviction``: ``lru`` (least recently used),
``lfu`` (fewest hits, then least recently used) or ``cost`` (what saves least per byte: the
cost of the call it replaces times one plus its hits, divided by its size). An entry just
stored is never its own victim. Writes (new entries, hit counts, evictions) join the group
commit of the request's ledger row; nothing on the hit path waits for SQLite beyond that.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeVar

import msgspec

from quotad.daemon.clock import Clock
from quotad.daemon.config import CacheConfig
from quotad.daemon.errors import RequestError
from quotad.daemon.store.db import Database, Statement
from quotad.daemon.store.warm import WarmEntry
from quotad.protocol.messages import (
    CacheMode,
    CacheStatus,
    Chat,
    ChatChunk,
    ChatReply,
    Embed,
    EmbedReply,
    Usage,
)

log = logging.getLogger("quotad.cache")

Kind = Literal["chat", "embed"]

ReplyT = TypeVar("ReplyT", bound=ChatReply)

HEAP_SLACK: Final = 1024
"""Stale heap items tolerated beyond twice the entries before the heap is rebuilt."""


class CachedChunk(msgspec.Struct, array_like=True, omit_defaults=True):
    """One chunk of a streamed answer."""

    delta: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class CachedChat(msgspec.Struct, array_like=True):
    """A chat answer as stored: the whole reply, and its chunks when it was streamed."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None
    usage: Usage
    target: str
    chunks: list[CachedChunk] = msgspec.field(default_factory=list)

    @classmethod
    def of(cls, reply: ChatReply, chunks: Sequence[ChatChunk] = ()) -> CachedChat:
        """What to store of a reply (and of its chunks, when it was streamed)."""
        return cls(
            content=reply.content,
            tool_calls=reply.tool_calls,
            finish_reason=reply.finish_reason,
            usage=reply.usage,
            target=reply.target,
            chunks=[CachedChunk(c.delta, c.tool_calls, c.finish_reason) for c in chunks],
        )

    def reply(
        self, kind: type[ReplyT], request_id: int, request_ref: str, saved_usd: float
    ) -> ReplyT:
        """The ``ChatReply`` (or ``ChatEnd``) of a hit: no cost, ``saved_usd`` saved."""
        return kind(
            id=request_id,
            content=self.content,
            tool_calls=self.tool_calls,
            finish_reason=self.finish_reason,
            usage=self.usage,
            cached=True,
            saved_usd=saved_usd,
            target=self.target,
            request_id=request_ref,
        )

    def replay(self, request_id: int) -> list[ChatChunk]:
        """The chunks a stream hit sends (one chunk when a warmed answer has none)."""
        chunks = self.chunks or [
            CachedChunk(self.content or "", self.tool_calls, self.finish_reason)
        ]
        return [
            ChatChunk(
                id=request_id,
                delta=chunk.delta,
                tool_calls=chunk.tool_calls,
                finish_reason=chunk.finish_reason,
            )
            for chunk in chunks
        ]


class CachedEmbedding(msgspec.Struct, array_like=True):
    """An embeddings answer as stored."""

    embeddings: list[list[float]]
    usage: Usage
    target: str

    @classmethod
    def of(cls, reply: EmbedReply) -> CachedEmbedding:
        """What to store of a reply."""
        return cls(reply.embeddings, reply.usage, reply.target)

    def reply(self, request_id: int, request_ref: str, saved_usd: float) -> EmbedReply:
        """The ``EmbedReply`` of a hit: no cost, ``saved_usd`` saved."""
        return EmbedReply(
            id=request_id,
            embeddings=self.embeddings,
            usage=self.usage,
            cached=True,
            saved_usd=saved_usd,
            target=self.target,
            request_id=request_ref,
        )


Answer = CachedChat | CachedEmbedding

_ANSWER_ENCODER: Final = msgspec.msgpack.Encoder()
_ANSWER_DECODERS: Final[dict[str, msgspec.msgpack.Decoder[Any]]] = {
    "chat": msgspec.msgpack.Decoder(CachedChat),
    "embed": msgspec.msgpack.Decoder(CachedEmbedding),
}
_KEY_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")


def chat_key(request: Chat) -> bytes:
    """The cache key of a chat request (what changes the answer, nothing else)."""
    canonical = (
        "chat",
        request.model,
        request.stream,
        request.messages,
        request.max_tokens,
        request.temperature,
        request.top_p,
        request.stop,
        request.seed,
        request.tools,
        request.tool_choice,
        request.response_format,
        request.extra,
    )
    return hashlib.blake2b(_KEY_ENCODER.encode(canonical), digest_size=16).digest()


def embed_key(request: Embed) -> bytes:
    """The cache key of an embeddings request."""
    canonical = ("embed", request.model, request.input, request.dimensions, request.extra)
    return hashlib.blake2b(_KEY_ENCODER.encode(canonical), digest_size=16).digest()


class Cacheable(NamedTuple):
    """An answer a request will store at step 7, under its key."""

    key: bytes
    kind: Kind
    answer: Answer


@dataclass(slots=True, eq=False)
class CacheEntry:
    """One stored answer and what eviction weighs."""

    key: bytes
    kind: Kind
    model: str
    answer: Answer
    size: int
    created: float
    last_used: float
    hits: int
    cost_usd: float
    version: int = 0


_INSERT: Final = (
    "INSERT OR REPLACE INTO cache (key, kind, model, payload, created, last_used, hits, "
    "cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_TOUCH: Final = "UPDATE cache SET hits = ?, last_used = ? WHERE key = ?"
_DELETE: Final = "DELETE FROM cache WHERE key = ?"


class Cache:
    """The response cache: an in-memory index of every entry, in front of the ``cache``
    table."""

    def __init__(self, config: CacheConfig, db: Database, clock: Clock) -> None:
        self.mode = config.mode
        self.enabled = config.mode == "on"
        self.ttl_s = config.ttl_s
        self.max_bytes = int(config.max_mb * 1024 * 1024)
        self.eviction = config.eviction
        self.clock = clock
        self._db = db
        self._entries: dict[bytes, CacheEntry] = {}
        self._heap: list[tuple[float, float, int, bytes]] = []
        self._filed = 0  # heap items filed so far: each item's unique version
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.saved_usd = 0.0

    # ------------------------------------------------------------------ lookups

    def key_of(self, request: Chat | Embed) -> bytes | None:
        """The request's key; None when it neither looks up nor stores (the cache is off,
        or ``cache="bypass"``), so that hashing costs such a request nothing."""
        if not self.enabled or request.cache == "bypass":
            return None
        return chat_key(request) if isinstance(request, Chat) else embed_key(request)

    def lookup(self, key: bytes | None, mode: CacheMode) -> CacheEntry | None:
        """The entry answering ``key``, counted as a hit; None on a miss or when ``mode``
        does not look up. ``only`` raises ``bad_request`` on a miss."""
        if not self.enabled and mode == "only":
            raise RequestError(
                "bad_request", 'cache="only" but the cache is off ([cache] mode = "off")'
            )
        if key is None or mode == "bypass" or mode == "refresh":
            return None
        now = self.clock.time()
        entry = self._entries.get(key)
        if entry is not None and now - entry.created > self.ttl_s:
            self._remove(entry)
            self._db.write_later([(_DELETE, (key,))])
            entry = None
        if entry is None:
            self.misses += 1
            if mode == "only":
                raise RequestError(
                    "bad_request",
                    'cache="only": no cached answer for this request (nothing was sent to a '
                    "provider)",
                    details={"cache": "miss"},
                )
            return None
        self.hits += 1
        self.saved_usd += entry.cost_usd
        entry.hits += 1
        entry.last_used = now
        self._push(entry)
        self._db.write_later([(_TOUCH, (entry.hits, now, key))])  # joins the hit's ledger row
        return entry

    def stores(self, mode: CacheMode) -> bool:
        """Whether a request with this ``mode`` stores its answer."""
        return self.enabled and (mode == "use" or mode == "refresh")

    # ------------------------------------------------------------------ storing

    def put(self, key: bytes, kind: Kind, model: str, answer: Answer, cost_usd: float) -> None:
        """Store ``answer`` (replacing any entry of ``key``), evicting past ``max_mb``; the
        rows join the next group commit (the request's ledger row's)."""
        statements = self._store(key, kind, model, answer, cost_usd)
        if statements:
            self._db.write_later(statements)

    async def warm(self, entries: Iterable[tuple[WarmEntry, float]]) -> int:
        """Store recorded requests and their answers (``quotad cache warm``), each with the
        cost it saves; returns once they are committed. How many were stored."""
        statements: list[Statement] = []
        stored = 0
        for entry, cost_usd in entries:
            response = entry.response
            answer = CachedChat(
                content=response.content,
                tool_calls=response.tool_calls,
                finish_reason=response.finish_reason,
                usage=response.usage,
                target=response.target,
                chunks=[CachedChunk(delta=delta) for delta in response.chunks or ()],
            )
            request = entry.request
            written = self._store(chat_key(request), "chat", request.model, answer, cost_usd)
            stored += bool(written)
            statements += written
        if statements:
            await self._db.write(statements)
        return stored

    def _store(
        self, key: bytes, kind: Kind, model: str, answer: Answer, cost_usd: float
    ) -> list[Statement]:
        """Add the entry in memory and evict past ``max_mb``; the statements that persist
        it (none when the answer alone is larger than the whole cache)."""
        payload = _ANSWER_ENCODER.encode(answer)
        size = len(payload) + len(key)
        if size > self.max_bytes:
            return []
        now = self.clock.time()
        previous = self._entries.get(key)
        if previous is not None:
            self._remove(previous)
        entry = CacheEntry(key, kind, model, answer, size, now, now, 0, cost_usd)
        self._add(entry)
        statements: list[Statement] = [
            (_INSERT, (key, kind, model, payload, now, now, 0, cost_usd))
        ]
        return statements + self._evict(keep=entry)

    async def clear(self, older_than_s: float | None = None) -> int:
        """Remove every entry, or those stored more than ``older_than_s`` ago; how many
        entries were removed from memory."""
        if older_than_s is None:
            removed = len(self._entries)
            self._entries.clear()
            self._heap.clear()
            self.bytes = 0
            await self._db.write([("DELETE FROM cache", ())])
            return removed
        cutoff = self.clock.time() - older_than_s
        victims = [entry for entry in self._entries.values() if entry.created < cutoff]
        for entry in victims:
            self._remove(entry)
        await self._db.write([("DELETE FROM cache WHERE created < ?", (cutoff,))])
        return len(victims)

    async def load(self) -> None:
        """Fill the index from ``quotad.db``; drops expired and unreadable entries, and
        evicts down to ``max_mb``."""
        if not self.enabled:
            return
        rows = await self._db.read(
            "SELECT key, kind, model, payload, created, last_used, hits, cost_usd FROM cache"
        )
        now = self.clock.time()
        dropped: list[Statement] = []
        for key, kind, model, payload, created, last_used, hits, cost_usd in rows:
            decoder = _ANSWER_DECODERS.get(kind)
            if now - created > self.ttl_s or decoder is None:
                dropped.append((_DELETE, (key,)))
                continue
            try:
                answer = decoder.decode(payload)
            except msgspec.DecodeError:
                log.warning("dropping an unreadable cache entry (%s)", bytes(key).hex())
                dropped.append((_DELETE, (key,)))
                continue
            size = len(payload) + len(key)
            self._add(
                CacheEntry(key, kind, model, answer, size, created, last_used, hits, cost_usd)
            )
        dropped += self._evict(keep=None)
        if dropped:
            self._db.write_later(dropped)

    def reconfigure(self, config: CacheConfig) -> None:
        """Apply a reloaded ``[cache]`` (SIGHUP), keeping the entries: a new eviction policy
        re-files them all, a smaller ``max_mb`` evicts at once (written with the next batch)."""
        policy_changed = config.eviction != self.eviction
        self.mode = config.mode
        self.enabled = config.mode == "on"
        self.ttl_s = config.ttl_s
        self.max_bytes = int(config.max_mb * 1024 * 1024)
        self.eviction = config.eviction
        if policy_changed:
            self._refile_all()
        if dropped := self._evict(keep=None):
            self._db.write_later(dropped)

    # ------------------------------------------------------------------ eviction

    def _priority(self, entry: CacheEntry) -> tuple[float, float]:
        if self.eviction == "lfu":
            return float(entry.hits), entry.last_used
        if self.eviction == "cost":
            return entry.cost_usd * (1 + entry.hits) / entry.size, entry.last_used
        return entry.last_used, 0.0

    def _push(self, entry: CacheEntry) -> None:
        """(Re)file ``entry`` in the eviction heap; older heap items of it (and of any entry
        it replaced under the same key) go stale, since versions are never reused."""
        self._filed += 1
        entry.version = self._filed
        first, second = self._priority(entry)
        heapq.heappush(self._heap, (first, second, entry.version, entry.key))
        if len(self._heap) > 2 * len(self._entries) + HEAP_SLACK:
            self._refile_all()

    def _refile_all(self) -> None:
        """Rebuild the eviction heap from the live entries (a new policy, or stale items)."""
        self._heap = [
            (*self._priority(entry), entry.version, entry.key) for entry in self._entries.values()
        ]
        heapq.heapify(self._heap)

    def _add(self, entry: CacheEntry) -> None:
        self._entries[entry.key] = entry
        self.bytes += entry.size
        self._push(entry)

    def _remove(self, entry: CacheEntry) -> None:
        del self._entries[entry.key]
        self.bytes -= entry.size

    def _evict(self, keep: CacheEntry | None) -> list[Statement]:
        """Evict by policy until the entries fit ``max_bytes``; their delete statements."""
        statements: list[Statement] = []
        kept: list[tuple[float, float, int, bytes]] = []
        while self.bytes > self.max_bytes and self._heap:
            item = heapq.heappop(self._heap)
            entry = self._entries.get(item[3])
            if entry is None or entry.version != item[2]:
                continue  # stale
            if entry is keep:
                kept.append(item)
                continue
            self._remove(entry)
            self.evictions += 1
            statements.append((_DELETE, (entry.key,)))
        for item in kept:
            heapq.heappush(self._heap, item)
        return statements

    # ------------------------------------------------------------------ figures

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def status(self) -> CacheStatus:
        """The cache's figures (hits, misses and saved_usd since the daemon started)."""
        lookups = self.hits + self.misses
        return CacheStatus(
            mode=self.mode,
            entries=len(self._entries),
            bytes=self.bytes,
            max_bytes=self.max_bytes,
            hits=self.hits,
            misses=self.misses,
            hit_rate=self.hits / lookups if lookups else 0.0,
            evictions=self.evictions,
            saved_usd=self.saved_usd,
        )
