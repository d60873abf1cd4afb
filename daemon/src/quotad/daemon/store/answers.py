"""What the response cache stores and how it is keyed (DESIGN §8): the stored shapes of chat and
embeddings answers (a streamed answer with its chunks, its text once), their MessagePack
encoding, and the key of a request: a hash of what changes its answer (the model as asked, the
messages, tools and sampling parameters, ``extra``, and whether it streams; not the app,
priority, tags, user or cache mode). An embeddings request's key holds the targets its model
resolves to as well: a vector is only comparable with those of the model that made it, so after
a reload points a group at another embedding model, its old vectors are no answer (they were: 8
dimensions of the old model served beside 256 of the new). :mod:`.cache` keeps them in
``quotad.db`` under those keys."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
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


class CachedChunk(msgspec.Struct, array_like=True, omit_defaults=True):
    """One chunk of a streamed answer."""

    delta: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class CachedChat(msgspec.Struct, array_like=True):
    """A chat answer as stored: the whole reply, and its chunks when it was streamed.

    A streamed answer's text is stored once: when ``content`` is the join of its chunks'
    deltas (nearly always), it is encoded as None with ``content_in_chunks`` set
    (:meth:`stored`) and rebuilt when it is read (:meth:`read`), so a stored answer holds
    the whole reply, as every hit serves it, either way. Stored twice, a 13 MB answer was a
    26 MB row, read, decoded and weighed by ``max_mb`` as such. Rows of either shape decode
    (an older one, its content beside its chunks, has no ``content_in_chunks``)."""

    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None
    usage: Usage
    target: str
    chunks: list[CachedChunk] = msgspec.field(default_factory=list)
    content_in_chunks: bool = False
    """Set in what is encoded only: ``content`` (None) is the join of the chunks' deltas."""

    @classmethod
    def of(cls, answer: ChatAnswer, chunks: Sequence[ChatChunk] = ()) -> CachedChat:
        """What to store of an answer (and of its chunks, when it was streamed)."""
        return cls(
            content=answer.content,
            tool_calls=answer.tool_calls,
            finish_reason=answer.finish_reason,
            usage=answer.usage,
            target=answer.target,
            chunks=[CachedChunk(c.delta, c.tool_calls, c.finish_reason) for c in chunks],
        )

    def stored(self) -> CachedChat:
        """What is encoded of this answer: without its content when that is the join of its
        chunks' deltas (a copy: this one is served as it is meanwhile), else itself."""
        if self.content is None or not self.chunks or self.content_in_chunks:
            return self  # a tool calls' stream keeps content None: no text to rebuild
        if self.content != "".join([chunk.delta for chunk in self.chunks]):
            return self  # a content of its own is stored beside the chunks, as it was
        return msgspec.structs.replace(self, content=None, content_in_chunks=True)

    def read(self) -> CachedChat:
        """This answer as decoded, its content rebuilt from its chunks when it was stored
        without it (:meth:`stored`)."""
        if self.content_in_chunks:
            self.content = "".join([chunk.delta for chunk in self.chunks])
            self.content_in_chunks = False
        return self

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
    """The payload stored of ``answer`` (a streamed chat's text once: :meth:`CachedChat.stored`)."""
    return ANSWER_ENCODER.encode(answer.stored() if isinstance(answer, CachedChat) else answer)


def decode_answer(kind: str, payload: bytes) -> Answer:
    """The answer of ``kind`` stored as ``payload``, whole (:meth:`CachedChat.read`); raises
    ``msgspec.DecodeError`` when it is none, or ``kind`` is unknown."""
    decoder = ANSWER_DECODERS.get(kind)
    if decoder is None:
        raise msgspec.DecodeError(f"unknown kind {kind!r}")
    answer: Answer = decoder.decode(payload)
    return answer.read() if isinstance(answer, CachedChat) else answer


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
