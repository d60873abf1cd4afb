"""The guardrails as steps of the request pipeline (DESIGN §2, §12): :class:`Guardrails` for
the daemon, one :class:`Screening` per request.

Step 0, before anything else sees a request (its cache key, its budget bound, its ledger row,
the provider): :meth:`Guardrails.check` applies the app's input rules and gives back the
request as it may leave the machine (masked), or raises
:class:`~quotad.daemon.guardrails.blocked.Blocked`. It leaves the request's
:class:`Screening` on the pipeline's context, for its reply and its ledger row. A request with
more than :data:`OFF_LOOP_CHARS` characters of text is checked in a worker thread, so that
the event loop goes on serving others meanwhile.

What comes back goes through the request's :class:`Screening`, in two steps: *screened* (the
output rules applied: what the cache may keep; placeholders in it, never a caller's value),
then *restored* (the request's own placeholders put back: what the caller gets):

- a reply: :meth:`Screening.screen`, then :meth:`Screening.restore`;
- a cache hit: :meth:`Screening.reply` (both: the entry may have been stored for an app whose
  output rules are not this one's; restoring uses this request's own values, which is what
  makes one entry right for every caller whose values were masked to the same placeholders);
- a stream: :meth:`Screening.stream`, a :class:`ScreenedStream` (a replayed hit:
  :meth:`Screening.replay`).

:attr:`Screening.counts` is what the ledger row records: entities found by kind, in the
request and in its reply, never what they were.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol, TypeVar, cast

import anyio
import anyio.to_thread
import msgspec

from quotad.daemon.config import Config, EntityKind
from quotad.daemon.guardrails.blocked import Blocked
from quotad.daemon.guardrails.policy import AppGuard, Checked, Guard
from quotad.daemon.guardrails.restore import Restorer, StreamRestore, StreamScreen
from quotad.daemon.guardrails.walk import rewrite_chat, rewrite_embed
from quotad.daemon.request_context import RequestContext
from quotad.daemon.streamed_answer import HIT_BATCH_CHUNKS, in_batches, merge_tool_calls
from quotad.protocol.messages import Chat, ChatChunk, ChatEnd, ChatReply, Embed

OFF_LOOP_CHARS: Final = 64 * 1024
"""Requests with more text than this (in characters) are checked in a worker thread."""
OFF_LOOP_THREADS: Final = 2
"""Checks running in worker threads at once (more wait for one to end)."""

RequestT = TypeVar("RequestT", Chat, Embed)
ReplyT = TypeVar("ReplyT", bound=ChatReply)
ToolCalls = list[dict[str, Any]]
_ENCODER: Final = msgspec.json.Encoder(order="sorted")


class Replayable(Protocol):
    """A stored streamed answer (:class:`~quotad.daemon.store.answers.CachedChat`), as a
    hit replays it."""

    def replay(self, request_id: int) -> list[ChatChunk]: ...

    def replay_batches(self, request_id: int, size: int) -> Iterator[list[ChatChunk]]: ...


class Screening:
    """The guardrails of one request: its input counts and its reply's way back."""

    __slots__ = ("input_counts", "restorer")

    def __init__(self, input_counts: dict[EntityKind, int], restorer: Restorer) -> None:
        self.input_counts = input_counts
        """Entities found in the request, by kind, whatever their action."""
        self.restorer = restorer

    @property
    def counts(self) -> dict[EntityKind, int]:
        """Entities found so far in the request and its reply, by kind."""
        output = self.restorer.counts
        if not output:
            return self.input_counts
        counts = dict(self.input_counts)
        for kind, count in output.items():
            counts[kind] = counts.get(kind, 0) + count
        return counts

    def ledger_entities(self) -> str:
        """The ledger's ``entities`` column: ``{"kind": count}`` as JSON, "" when none."""
        counts = self.counts
        return _ENCODER.encode(counts).decode() if counts else ""

    # ------------------------------------------------------------------ whole replies

    def screen(self, reply: ReplyT) -> ReplyT:
        """``reply`` with the output rules applied (what the cache may keep);
        :class:`Blocked` if one says block. The same object when nothing changed."""
        restorer = self.restorer
        if not restorer.screens:
            return reply
        return _rewritten(reply, restorer.screen, restorer.screen_tool_calls)

    def restore(self, reply: ReplyT) -> ReplyT:
        """A screened ``reply`` with this request's placeholders put back (what the caller
        gets). The same object when nothing changed."""
        restorer = self.restorer
        if not restorer.originals:
            return reply
        return _rewritten(reply, restorer.restore_content, restorer.restore_tool_calls)

    def reply(self, reply: ReplyT) -> ReplyT:
        """A reply from the cache as the caller may see it: screened, then restored."""
        return self.restore(self.screen(reply))

    # ------------------------------------------------------------------ streams

    def stream(self, request_id: int, *, keep: bool = False) -> ScreenedStream:
        """A stream's way back; ``keep``: keep its screened chunks (for the cache)."""
        return ScreenedStream(self.restorer, request_id, keep)

    def replay(
        self, chunks: Sequence[ChatChunk], end: ChatEnd, request_id: int
    ) -> tuple[list[ChatChunk], ChatEnd]:
        """A stream answered from the cache, all at once (before its ledger row is written,
        so that the row has the reply's counts): its chunks and its end as the caller may see
        them. The first chunk is always kept (it says who answers)."""
        if not self.restorer.active:
            return list(chunks), end
        stream = ScreenedStream(self.restorer, request_id, False)
        shown = [stream.first(chunks[0])] if chunks else []
        for chunk in chunks[1:]:
            if (piece := stream.chunk(chunk)) is not None:
                shown.append(piece)
        if (tail := stream.flush()) is not None:
            shown.append(tail)
        return shown, self.restore(stream.end(end))

    def replay_hit(
        self, answer: Replayable, end: ChatEnd, request_id: int
    ) -> tuple[Iterable[list[ChatChunk]], ChatEnd]:
        """A stream answered from the cache: its chunks, :data:`HIT_BATCH_CHUNKS` at a time,
        and its end, as the caller may see them. With nothing to screen or restore, each
        batch is cut from the stored ``answer`` as it is sent; else they are all screened at
        once (:meth:`replay`: the ledger row counts what the caller is shown)."""
        if not self.restorer.active:
            return answer.replay_batches(request_id, HIT_BATCH_CHUNKS), end
        chunks, end = self.replay(answer.replay(request_id), end, request_id)
        return in_batches(chunks), end


def decode_entities(column: str) -> dict[str, int]:
    """The counts of a ledger row's ``entities`` column (see :meth:`Screening.ledger_entities`)."""
    return msgspec.json.decode(column, type=dict[str, int]) if column else {}


def _rewritten(
    reply: ReplyT, text: Callable[[str], str], tool_calls: Callable[[ToolCalls], ToolCalls]
) -> ReplyT:
    """``reply`` with ``text`` applied to its content and ``tool_calls`` to its tool calls;
    the same object when neither changed anything."""
    content = reply.content
    if content is not None:
        content = text(content)
    calls = reply.tool_calls
    if calls is not None:
        calls = tool_calls(calls)
    if content is reply.content and calls is reply.tool_calls:
        return reply
    return msgspec.structs.replace(reply, content=content, tool_calls=calls)


IDLE: Final = Screening({}, Restorer({}, restore=False, output={}))
"""The screening of every request of an app without guardrails: changes nothing."""


class ScreenedStream:
    """One stream's way back: each provider chunk goes through :meth:`chunk`, which gives
    what the caller may see of it (None: nothing yet; text may be held back until it is
    settled) and keeps what the cache may (:attr:`sent`); :meth:`flush` at the end gives the
    rest; :meth:`end` makes the stream's ``ChatEnd`` of what was screened.

    A chunk with a ``finish_reason`` ends the answer: whatever is held comes out in it, so
    that no text follows the finish. A stream whose request has no guardrails passes every
    chunk through as it is."""

    __slots__ = (
        "_active",
        "_ended",
        "_request_id",
        "_restore",
        "_restorer",
        "_screen",
        "_screened_calls",
        "_screened_text",
        "_shown_text",
        "keep",
        "sent",
    )

    def __init__(self, restorer: Restorer, request_id: int, keep: bool) -> None:
        self._restorer = restorer
        self._active = restorer.active
        self._screen = StreamScreen(restorer)
        self._restore = StreamRestore(restorer)
        self._request_id = request_id
        self._ended = False
        self._screened_text: list[str] = []
        self._screened_calls: ToolCalls = []
        self._shown_text: list[str] = []
        self.keep = keep
        self.sent: list[ChatChunk] = []
        """The screened chunks (when ``keep``): what the cache keeps of the stream."""

    def first(self, chunk: ChatChunk) -> ChatChunk:
        """What the caller may see of a stream's first chunk: always a chunk (it says who
        answers), perhaps with its text held."""
        shown = self.chunk(chunk, first=True)
        assert shown is not None
        return shown

    def chunk(self, chunk: ChatChunk, *, first: bool = False) -> ChatChunk | None:
        """What the caller may see of a provider ``chunk``: None when all of it is held
        (a ``first`` chunk is always given). :class:`Blocked` when an output rule says
        block."""
        if not self._active:
            if self.keep:
                self.sent.append(chunk)
            return chunk
        final = chunk.finish_reason is not None
        text = self._screen.feed(chunk.delta)
        calls = chunk.tool_calls
        if calls:
            calls = self._screen.feed_tool_calls(calls)
        if final:
            self._ended = True
            text += self._screen.flush()
            calls = (calls or []) + self._screen.flush_tool_calls() or None
        screened = _chunk_with(chunk, text, calls)
        return self._show(screened, final=final, first=first)

    def flush(self) -> ChatChunk | None:
        """What is still held at the stream's end, as a last chunk (None: nothing is)."""
        if not self._active or self._ended:
            return None
        self._ended = True
        text = self._screen.flush()
        calls = self._screen.flush_tool_calls() or None
        screened = ChatChunk(id=self._request_id, delta=text, tool_calls=calls)
        return self._show(screened, final=True, first=False)

    def _show(self, screened: ChatChunk, *, final: bool, first: bool) -> ChatChunk | None:
        if screened.delta:
            self._screened_text.append(screened.delta)
        if screened.tool_calls:
            self._screened_calls += screened.tool_calls
        if self.keep and (first or _carries(screened)):
            self.sent.append(screened)
        text = self._restore.feed(screened.delta)
        calls = screened.tool_calls
        if calls:
            calls = self._restore.feed_tool_calls(calls)
        if final:
            text += self._restore.flush()
            calls = (calls or []) + self._restore.flush_tool_calls() or None
        if text:
            self._shown_text.append(text)
        shown = _chunk_with(screened, text, calls)
        return shown if first or _carries(shown) else None

    def end(self, end: ChatEnd) -> ChatEnd:
        """The stream's end built from what the provider sent (``end``), as the cache keeps
        it: its content and tool calls those of the screened chunks (the caller's:
        :meth:`Screening.restore` of it)."""
        if not self._active:
            return end
        return msgspec.structs.replace(
            end,
            content="".join(self._screened_text),
            tool_calls=merge_tool_calls(self._screened_calls),
        )

    def partial(self, received: str) -> str:
        """The text of a stream that broke, for its error's ``partial_content``: ``received``
        (the provider's) when there are no guardrails, else what the caller was shown and
        the rest of what was held, screened and restored (left out if an output rule would
        block it)."""
        if not self._active:
            return received
        shown = "".join(self._shown_text)
        if self._ended:
            return shown
        self._ended = True
        try:
            rest = self._screen.flush()
        except Blocked:
            rest = ""
        return shown + self._restore.feed(rest) + self._restore.flush()


def _carries(chunk: ChatChunk) -> bool:
    """Whether a chunk has anything for its reader."""
    return bool(chunk.delta or chunk.tool_calls or chunk.finish_reason is not None)


def _chunk_with(chunk: ChatChunk, text: str, calls: ToolCalls | None) -> ChatChunk:
    if text == chunk.delta and calls is chunk.tool_calls:
        return chunk
    return msgspec.structs.replace(chunk, delta=text, tool_calls=calls)


class _TextSize:
    """Counts the characters of a request's text (a TextRewriter that changes nothing)."""

    __slots__ = ("chars",)

    def __init__(self) -> None:
        self.chars = 0

    def text(self, text: str) -> str:
        self.chars += len(text)
        return text

    def json(self, text: str) -> str:
        self.chars += len(text)
        return text

    def value(self, value: Any) -> Any:
        self.chars += len(_ENCODER.encode(value))
        return value


def text_size(request: Chat | Embed) -> int:
    """The characters of text a check of ``request`` reads."""
    size = _TextSize()
    if isinstance(request, Chat):
        rewrite_chat(request, size)
    else:
        rewrite_embed(request, size)
    return size.chars


class Guardrails:
    """The daemon's guardrails, for the config it serves (:meth:`reconfigure` on reload)."""

    def __init__(self, config: Config, *, off_loop_chars: int = OFF_LOOP_CHARS) -> None:
        self.guard = Guard(config)
        self.off_loop_chars = off_loop_chars
        """Requests with more text than this are checked in a worker thread."""
        self._limiter: anyio.CapacityLimiter | None = None

    def reconfigure(self, config: Config) -> None:
        """The guardrails of a reloaded config, for requests that start from now on."""
        self.guard = Guard(config)

    async def check(self, request: RequestT, context: RequestContext) -> tuple[RequestT, Screening]:
        """Step 0: ``request`` as it may leave the machine, and its :class:`Screening` (also
        left in ``context.screening``, for the ledger row); :class:`Blocked` (with the
        counts in ``context``) if an input rule says block."""
        guard = self.guard.for_app(context.caller.app)
        if not guard.active:
            context.screening = IDLE
            return request, IDLE
        check: Callable[[], Checked[Any]]
        if isinstance(request, Chat):
            check = functools.partial(guard.check_chat, request)
        else:
            check = functools.partial(guard.check_embed, request)
        checked: Checked[Any]
        try:
            if text_size(request) > self.off_loop_chars:
                checked = await anyio.to_thread.run_sync(check, limiter=self._off_loop())
            else:
                checked = check()
        except Blocked as blocked:
            context.screening = Screening(blocked.counts, IDLE.restorer)
            raise
        screening = context.screening = Screening(checked.counts, checked.restorer)
        return cast(RequestT, checked.request), screening

    def _off_loop(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(OFF_LOOP_THREADS)
        return self._limiter

    def for_app(self, app: str) -> AppGuard:
        """The guardrails of ``app``."""
        return self.guard.for_app(app)


__all__ = ["IDLE", "Guardrails", "ScreenedStream", "Screening", "decode_entities", "text_size"]
