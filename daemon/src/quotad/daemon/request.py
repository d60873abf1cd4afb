"""What the pipeline knows of one request while it runs: who sent it (:class:`Caller`), its
ids, its :class:`RequestContext`, and the small pieces the broker builds its replies from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from quotad.daemon.gates import Reservation
from quotad.daemon.providers.base import ChatDelta, ChatStream, RateLimitInfo
from quotad.daemon.routing import Target
from quotad.daemon.store.budgets import BudgetHold
from quotad.daemon.tokens import (
    chat_prompt_tokens_upper_bound,
    text_tokens_upper_bound,
    value_tokens_upper_bound,
)
from quotad.protocol.messages import Chat, ChatChunk, Usage


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the app it names, and the peer process when known (SO_PEERCRED)."""

    app: str
    via: str = "socket"
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None


class RequestIds:
    """Request ids unique across daemon restarts: a random prefix per daemon, then a counter."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = "qd-" + os.urandom(4).hex() + "-"
        self._count = 0

    def next(self) -> str:
        """A new request id."""
        self._count += 1
        return f"{self._prefix}{self._count}"


@dataclass(slots=True)
class RequestContext:
    """What the pipeline knows of one request while it runs."""

    request_id: str
    kind: str
    caller: Caller
    model: str
    started: float
    priority: str = "normal"
    max_wait_s: float | None = None
    max_tokens: int = 0
    tokens: int = 0
    attempts: int = 0
    wait_s: float = 0.0
    target: Target | None = None
    reservation: Reservation | None = None
    finished: bool = False
    user: str = ""
    tags: list[str] | None = None
    budget: BudgetHold | None = None
    cached: bool = False
    saved_usd: float = 0.0
    cost_usd: float = 0.0

    @property
    def target_name(self) -> str:
        """The name of the target that answers ("" before one was picked)."""
        return self.target.name if self.target is not None else ""


class OpenedStream(NamedTuple):
    """A stream whose provider accepted it, with its first piece (None: it was empty)."""

    stream: ChatStream
    first: ChatDelta | None

    @property
    def rate_limits(self) -> RateLimitInfo:
        """The provider's rate-limit headers on the stream's response."""
        return self.stream.rate_limits


class ProviderAnswer(Protocol):
    """Any provider result: each carries the provider's rate-limit headers."""

    @property
    def rate_limits(self) -> RateLimitInfo: ...


def chunk_of(request_id: int, delta: ChatDelta) -> ChatChunk:
    return ChatChunk(
        id=request_id,
        delta=delta.delta,
        tool_calls=delta.tool_calls,
        finish_reason=delta.finish_reason,
    )


def merge_tool_calls(fragments: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """A stream's whole tool calls (for its ``ChatEnd``) from its OpenAI-shaped fragments:
    per ``index``, the id, type and name its fragments give, and their ``arguments`` pieces
    joined in order. None when the stream had none."""
    calls: dict[int, dict[str, Any]] = {}
    pieces: dict[int, list[str]] = {}
    for fragment in fragments:
        index = fragment.get("index", 0)
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


def partial_usage(
    usage: Usage,
    request: Chat,
    delivered: str,
    tool_call_fragments: list[dict[str, Any]],
    max_tokens: int,
) -> Usage:
    """The usage of a stream that broke, for its row and its budgets: what the provider
    reported, and upper bounds for what it did not (a stream usually reports usage only at
    its end): the request's prompt bound, and for the completion the UTF-8 bytes of what was
    delivered (text and tool calls), at most ``max_tokens``, so that a budget is never
    charged less than what was delivered can have cost."""
    completion = text_tokens_upper_bound(delivered)
    if tool_call_fragments:
        completion += value_tokens_upper_bound(tool_call_fragments)
    return Usage(
        prompt_tokens=usage.prompt_tokens or chat_prompt_tokens_upper_bound(request),
        completion_tokens=max(usage.completion_tokens, min(completion, max_tokens)),
        cached_tokens=usage.cached_tokens,
    )


def announce(chunk: ChatChunk, context: RequestContext, target: str) -> ChatChunk:
    """Make ``chunk`` a stream's first: it also says who answers (see :class:`ChatChunk`)."""
    chunk.request_id = context.request_id
    chunk.target = target
    chunk.attempts = context.attempts
    chunk.wait_s = context.wait_s
    chunk.cached = context.cached
    return chunk


def first_chunk_of(request_id: int, delta: ChatDelta, context: RequestContext) -> ChatChunk:
    """A live stream's first chunk (see :func:`announce`)."""
    return announce(chunk_of(request_id, delta), context, context.target_name)
