"""A streamed chat answer as the pipeline relays it: the stream a provider opened with its first
piece (:class:`OpenedStream`), the chunks sent on (the first says who answers:
:func:`announce`; a cache hit's go in batches: :func:`hit_batches`), what was delivered so far
(:class:`StreamedAnswer`: its text, its tool calls merged from their fragments, its chunks for
the cache, the usage it is charged), and the error of a stream that broke
(:func:`broken_stream`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final, NamedTuple

from quotad.daemon.errors import RequestError
from quotad.daemon.providers.base import ChatDelta, ChatStream, ProviderError
from quotad.daemon.rate_limit_info import RateLimitInfo
from quotad.daemon.request_context import RequestContext
from quotad.daemon.routing import Target
from quotad.protocol.messages import ChatChunk, Usage

HIT_BATCH_CHUNKS: Final = 64
"""The chunks of a cache hit sent on between two turns of the other tasks (see
:func:`hit_batches`)."""


class OpenedStream(NamedTuple):
    """A stream whose provider accepted it, with its first piece (None: it was empty)."""

    stream: ChatStream
    first: ChatDelta | None

    @property
    def rate_limits(self) -> RateLimitInfo:
        """The provider's rate-limit headers on the stream's response."""
        return self.stream.rate_limits


def chunk_of(request_id: int, delta: ChatDelta) -> ChatChunk:
    """The chunk that sends ``delta`` on."""
    return ChatChunk(
        id=request_id,
        delta=delta.delta,
        tool_calls=delta.tool_calls,
        finish_reason=delta.finish_reason,
    )


def announce(chunk: ChatChunk, context: RequestContext, target: str) -> ChatChunk:
    """Make ``chunk`` a stream's first: it also says who answers (see :class:`ChatChunk`)."""
    chunk.request_id = context.request_id
    chunk.target = target
    chunk.attempts = context.attempts
    chunk.wait_s = context.wait_s
    if context.cached:
        chunk.cached = True
        chunk.cache = "exact" if context.similarity is None else "semantic"
        chunk.similarity = context.similarity or 0.0
    return chunk


def hit_batches(
    batches: Iterable[list[ChatChunk]], context: RequestContext, target: str
) -> Iterator[list[ChatChunk]]:
    """A cache hit's chunks in ``batches`` (of :data:`HIT_BATCH_CHUNKS`: :func:`in_batches`,
    or made one by one as they are asked for), the first announcing who answers. Between two
    batches their sender gives the other tasks a turn: the chunks are all at hand, and a
    caller that reads them as fast as they come never makes its sender wait, so a cached
    answer of 9,000 chunks held the event loop ~0.9 s."""
    batches = iter(batches)
    first = next(batches)  # a hit has one chunk at least
    announce(first[0], context, target)
    yield first
    yield from batches


def in_batches(chunks: list[ChatChunk]) -> Iterator[list[ChatChunk]]:
    """``chunks``, :data:`HIT_BATCH_CHUNKS` at a time."""
    for start in range(0, len(chunks), HIT_BATCH_CHUNKS):
        yield chunks[start : start + HIT_BATCH_CHUNKS]


class StreamedAnswer:
    """What a live stream has delivered so far: its text, its tool-call fragments, and (when
    the cache will store the answer) the chunks sent, to replay on a hit."""

    __slots__ = ("_parts", "_request_id", "chunks", "tool_call_fragments")

    def __init__(self, request_id: int, *, keep_chunks: bool) -> None:
        self._request_id = request_id
        self._parts: list[str] = []
        self.tool_call_fragments: list[dict[str, Any]] = []
        self.chunks: list[ChatChunk] | None = [] if keep_chunks else None

    def first_chunk(self, delta: ChatDelta, context: RequestContext) -> ChatChunk:
        """The stream's first chunk, which says who answers (see :func:`announce`)."""
        return self._sent(announce(self._delivered(delta), context, context.target_name))

    def chunk(self, delta: ChatDelta) -> ChatChunk:
        """A later chunk."""
        return self._sent(self._delivered(delta))

    def _delivered(self, delta: ChatDelta) -> ChatChunk:
        self._parts.append(delta.delta)
        if delta.tool_calls:
            self.tool_call_fragments += delta.tool_calls
        return chunk_of(self._request_id, delta)

    def _sent(self, chunk: ChatChunk) -> ChatChunk:
        if self.chunks is not None:
            self.chunks.append(chunk)
        return chunk

    @property
    def content(self) -> str:
        """The text delivered."""
        return "".join(self._parts)

    def tool_calls(self) -> list[dict[str, Any]] | None:
        """The tool calls delivered, whole (see :func:`merge_tool_calls`)."""
        return merge_tool_calls(self.tool_call_fragments)

    def charged_usage(self, stream: ChatStream, context: RequestContext, *, ended: bool) -> Usage:
        """The usage the stream is charged for what it delivered: what its provider reported
        and bounds for what it did not (:meth:`RequestContext.charged_usage`). Before its end
        (it broke, or its reader left), the completion's count is not final (a stream usually
        reports usage only at its end), so its bound stands."""
        reported = stream.usage_reported
        if not ended:
            reported = reported._replace(completion=False)
        return context.charged_usage(stream.usage, reported, self.content, self.tool_call_fragments)


def merge_tool_calls(fragments: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """A stream's whole tool calls (for its ``ChatEnd``) from its OpenAI-shaped fragments:
    per ``index`` (0 when null or missing), the id, type and name its fragments give, and
    their ``arguments`` pieces joined in order. None when the stream had none."""
    calls: dict[int, dict[str, Any]] = {}
    pieces: dict[int, list[str]] = {}
    for fragment in fragments:
        index = fragment.get("index") or 0  # an integer or null (see the providers)
        call = calls.get(index)
        if call is None:
            call = calls[index] = {"id": "", "type": "function", "function": {"name": ""}}
            pieces[index] = []
        for field in ("id", "type"):
            if isinstance(fragment.get(field), str) and fragment[field]:
                call[field] = fragment[field]
        function = fragment.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str) and function["name"]:
                call["function"]["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                pieces[index].append(function["arguments"])
    for index, call in calls.items():
        call["function"]["arguments"] = "".join(pieces[index])
    return [calls[index] for index in sorted(calls)] or None


def broken_stream(target: Target, error: ProviderError, partial_content: str) -> RequestError:
    """The ``upstream_error`` of a stream ``target`` broke after it started (counted against
    it), with the text the caller had of it (``partial_content``)."""
    target.stream_broke()
    return RequestError(
        "upstream_error",
        f"{target.name} broke the stream after it started ({error.kind}): {error.message}",
        details={"partial_content": partial_content, "target": target.name},
    )
