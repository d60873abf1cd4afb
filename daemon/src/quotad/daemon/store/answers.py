"""What the response cache stores and how it is keyed (DESIGN §8): the stored shapes of chat and
embeddings answers (a streamed answer's text once, with the lengths of its chunks' deltas),
their MessagePack encoding, and the key of a request: a hash of what changes its answer (the
model as asked, the messages, tools and sampling parameters, ``extra``, and whether it
streams; not the app, priority, tags, user or cache mode). An embeddings request's key holds
the targets its model resolves to as well: a vector is only comparable with those of the model
that made it, so after a reload points a group at another embedding model, its old vectors are
no answer (they were: 8 dimensions of the old model served beside 256 of the new).
:mod:`.cache` keeps them in ``quotad.db`` under those keys."""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Literal, Protocol, TypeVar

import anyio.to_thread
import msgspec

from quotad.protocol.messages import (
    Chat,
    ChatChunk,
    ChatReply,
    Embed,
    EmbedReply,
    Usage,
)

Kind = Literal["chat", "embed"]

ReplyT = TypeVar("ReplyT", bound=ChatReply)
HitT = TypeVar("HitT", bound=ChatReply | EmbedReply)


class ChatAnswer(Protocol):
    """What the cache keeps of a chat answer, wherever it comes from: a reply, or a recorded
    response of ``quotad cache warm``."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None
    usage: Usage
    target: str


class Chunk(Protocol):
    """What the cache keeps of a chunk of a streamed answer (a :class:`ChatChunk` sent, a
    :class:`CachedChunk`)."""

    delta: str
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None


class CachedChunk(msgspec.Struct, array_like=True, omit_defaults=True):
    """One chunk of a streamed answer, whole: as rows of schema 7 and 8 hold each chunk, and
    as a stream whose deltas are not its content holds them (:class:`CachedChat`)."""

    delta: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class MarkedChunk(msgspec.Struct, array_like=True, omit_defaults=True):
    """A chunk of a streamed answer that carries more than text, by its position among the
    chunks (its delta is in the answer's content, :class:`CachedChat`)."""

    at: int
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class CachedChat(msgspec.Struct, array_like=True):
    """A chat answer as stored (and held in memory): the whole reply, and its chunks when it
    was streamed.

    A streamed answer's chunks are its content cut in pieces: they are kept as the lengths of
    their deltas (``delta_lengths``, in characters: one byte each up to 127) and the few
    chunks that carry tool calls or a finish reason (``marked_chunks``), and
    :meth:`replay_batches` cuts the content again into exactly those chunks, a batch at a time
    as a hit sends them. Kept as a chunk each (a MessagePack
    array and string header each, a Struct each to decode), a token stream of 1 to 8
    characters a chunk took ~1.9 bytes per byte of its text, and ~2.9M chunks for 13 MB held
    the event loop 1.5 s to decode and 360 MB of memory. A stream whose deltas do not join to
    its content keeps them whole in ``chunks``.

    Rows of schema 7 (content beside its chunks) and 8 (content None, ``content_in_chunks``:
    it is the join of the chunks' deltas) decode into this shape (:meth:`__post_init__`)."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None
    usage: Usage
    target: str
    chunks: list[CachedChunk] = msgspec.field(default_factory=list)
    """A stream's chunks whole: one whose deltas are not its content, or a row of schema 7
    or 8 until it is decoded."""
    content_in_chunks: bool = False
    """In a row of schema 8 only: ``content`` (None) is the join of the chunks' deltas."""
    delta_lengths: list[int] = msgspec.field(default_factory=list)
    """The length of each chunk's delta in ``content``, in order (none: not streamed)."""
    marked_chunks: list[MarkedChunk] = msgspec.field(default_factory=list)
    """The chunks that carry tool calls or a finish reason, in the order of their positions."""

    def __post_init__(self) -> None:
        """Chunks given whole (a row of schema 7 or 8, an answer made here) are kept as
        lengths and marks when their deltas join to the content (a row of schema 8: they
        are its content). Raises ``ValueError`` (``msgspec.ValidationError`` when decoding)
        for marks past the chunks or out of order."""
        if self.content_in_chunks:
            self.content = "".join([chunk.delta for chunk in self.chunks])
            self.content_in_chunks = False
        if self.chunks and (cut := _cut(self.content, self.chunks)) is not None:
            self.delta_lengths, self.marked_chunks = cut
            self.chunks = []
        previous, count = -1, len(self.delta_lengths)
        for mark in self.marked_chunks:
            if not previous < mark.at < count:
                raise ValueError("marked chunks past the chunks or out of order")
            previous = mark.at

    @classmethod
    def of(cls, answer: ChatAnswer, chunks: Sequence[Chunk] = ()) -> CachedChat:
        """What to store of an answer (and of its chunks, when it was streamed)."""
        cut = _cut(answer.content, chunks)
        whole = (
            []
            if cut is not None
            else [CachedChunk(c.delta, c.tool_calls, c.finish_reason) for c in chunks]
        )
        lengths, marked = cut or ([], [])
        return cls(
            content=answer.content,
            tool_calls=answer.tool_calls,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            target=answer.target,
            chunks=whole,
            delta_lengths=lengths,
            marked_chunks=marked,
        )

    def reply(
        self,
        kind: type[ReplyT],
        request_id: int,
        request_ref: str,
        saved_usd: float,
        similarity: float | None = None,
    ) -> ReplyT:
        """The ``ChatReply`` (or ``ChatEnd``) of a hit: no cost, ``saved_usd`` saved; a
        semantic hit (``similarity`` given) is marked ``cache="semantic"``."""
        reply = kind(
            id=request_id,
            content=self.content,
            tool_calls=self.tool_calls,
            finish_reason=self.finish_reason,
            cache="exact" if similarity is None else "semantic",
            similarity=similarity or 0.0,
        )
        return _hit(reply, self, request_ref, saved_usd)

    def replay(self, request_id: int) -> list[ChatChunk]:
        """The chunks a stream hit sends, all at once (:meth:`replay_batches`)."""
        return list(itertools.chain.from_iterable(self.replay_batches(request_id, sys.maxsize)))

    def replay_batches(self, request_id: int, size: int) -> Iterator[list[ChatChunk]]:
        """The chunks a stream hit sends, as they were stored, ``size`` at a time, each batch
        made when it is asked for (one chunk when the answer has none: not streamed, or a
        warmed answer without them). Made all at once, the 2.9M chunks of 13 MB streamed a few
        characters a chunk held the event loop 1.4 s and took ~500 MB until the last was
        sent."""
        whole = self.chunks
        if whole:
            for first in range(0, len(whole), size):
                yield [
                    ChatChunk(
                        id=request_id,
                        delta=chunk.delta,
                        tool_calls=chunk.tool_calls,
                        finish_reason=chunk.finish_reason,
                    )
                    for chunk in whole[first : first + size]
                ]
            return
        text = self.content or ""
        if not self.delta_lengths:
            yield [
                ChatChunk(
                    id=request_id,
                    delta=text,
                    tool_calls=self.tool_calls,
                    finish_reason=self.finish_reason,
                )
            ]
            return
        bounds = itertools.pairwise(itertools.accumulate(self.delta_lengths, initial=0))
        marks = iter(self.marked_chunks)
        mark = next(marks, None)
        first = 0
        while batch := [
            ChatChunk(id=request_id, delta=text[start:end])
            for start, end in itertools.islice(bounds, size)
        ]:
            after = first + len(batch)
            while mark is not None and mark.at < after:
                chunk = batch[mark.at - first]
                chunk.tool_calls = mark.tool_calls
                chunk.finish_reason = mark.finish_reason
                mark = next(marks, None)
            first = after
            yield batch


def _cut(
    content: str | None, chunks: Sequence[Chunk]
) -> tuple[list[int], list[MarkedChunk]] | None:
    """``chunks`` as :class:`CachedChat` keeps them: the lengths of their deltas and the
    chunks that carry more than text; None when their deltas do not join to ``content``
    (None joins to none)."""
    deltas = [chunk.delta for chunk in chunks]
    if "".join(deltas) != (content or ""):
        return None
    marked = [
        MarkedChunk(at, chunk.tool_calls, chunk.finish_reason)
        for at, chunk in enumerate(chunks)
        if chunk.tool_calls is not None or chunk.finish_reason is not None
    ]
    return list(map(len, deltas)), marked


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
        reply = EmbedReply(id=request_id, embeddings=self.embeddings)
        return _hit(reply, self, request_ref, saved_usd)


Answer = CachedChat | CachedEmbedding


def _hit(reply: HitT, answer: Answer, request_ref: str, saved_usd: float) -> HitT:
    """``reply`` as every cache hit answers: the stored usage and target, ``cached``, no cost,
    ``saved_usd`` saved, and ``request_ref``, the id of its own ledger row."""
    reply.usage = answer.usage
    reply.target = answer.target
    reply.cached = True
    reply.saved_usd = saved_usd
    reply.request_id = request_ref
    return reply


ANSWER_ENCODER: Final = msgspec.msgpack.Encoder()
ANSWER_DECODERS: Final[dict[str, msgspec.msgpack.Decoder[Any]]] = {
    "chat": msgspec.msgpack.Decoder(CachedChat),
    "embed": msgspec.msgpack.Decoder(CachedEmbedding),
}
_KEY_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")


def encode_answer(answer: Answer) -> bytes:
    """The payload stored of ``answer``."""
    return ANSWER_ENCODER.encode(answer)


def decode_answer(kind: str, payload: bytes) -> Answer:
    """The answer of ``kind`` stored as ``payload`` (a row of any schema); raises
    ``msgspec.DecodeError`` when it is none, or ``kind`` is unknown."""
    decoder = ANSWER_DECODERS.get(kind)
    if decoder is None:
        raise msgspec.DecodeError(f"unknown kind {kind!r}")
    answer: Answer = decoder.decode(payload)
    return answer


OFF_LOOP_KEY_BYTES: Final = 256 * 1024
"""A request whose key is hashed from at least this many bytes is hashed in a worker thread
(:func:`digest_off_loop`): blake2b lets go of the GIL for large data, so the event loop serves
the others meanwhile (a 13 MB chat's hash held it 16 ms); below, a thread's round trip costs
more than the hash."""


def chat_key(request: Chat) -> bytes:
    """The cache key of a chat request (what changes the answer, nothing else)."""
    return key_digest(chat_canonical(request))


def chat_canonical(request: Chat) -> bytes:
    """What :func:`chat_key` hashes."""
    return chat_encoding(request, "chat", request.messages)


def chat_encoding(request: Chat, scheme: str, *conversation: Any) -> bytes:
    """What is hashed of a chat request under ``scheme``: ``conversation`` (the messages, or
    what of them is to match) and every other field of ``request`` that changes its answer
    (the exact cache's key, the semantic cache's partition)."""
    canonical = (
        scheme,
        request.model,
        request.stream,
        *conversation,
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
    return _KEY_ENCODER.encode(canonical)


def embed_key(request: Embed, targets: Iterable[str]) -> bytes:
    """The cache key of an embeddings request whose model resolves to ``targets`` (their
    order does not count: a strategy's order is not a change of model)."""
    return key_digest(embed_canonical(request, targets))


def embed_canonical(request: Embed, targets: Iterable[str]) -> bytes:
    """What :func:`embed_key` hashes."""
    canonical = (
        "embed",
        request.model,
        sorted(targets),
        request.input,
        request.dimensions,
        request.extra,
    )
    return _KEY_ENCODER.encode(canonical)


def key_digest(canonical: bytes) -> bytes:
    """The 16-byte key of a request's canonical encoding."""
    return hashlib.blake2b(canonical, digest_size=16).digest()


async def digest_off_loop(canonical: bytes) -> bytes:
    """:func:`key_digest`, in a worker thread from :data:`OFF_LOOP_KEY_BYTES` bytes on."""
    if len(canonical) < OFF_LOOP_KEY_BYTES:
        return key_digest(canonical)
    return await anyio.to_thread.run_sync(key_digest, canonical)
