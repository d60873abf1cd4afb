"""Which counts of its usage a provider reported, as each wire format's adapter tells it
(``usage_reported``), and what the broker charges for those it did not
(:meth:`~quotad.daemon.request_context.RequestContext.charged_usage`). ``Usage`` holds a count
left out as 0, so without this an answer from a server that leaves usage out (one that
ignores ``stream_options.include_usage``, a body without ``usage``, an Anthropic stream
without the usage of ``message_start`` or ``message_delta``) was charged $0."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from quotad.daemon.caller import Caller
from quotad.daemon.providers.base import (
    ALL_REPORTED,
    NOTHING_REPORTED,
    UsageReported,
)
from quotad.daemon.request_context import RequestContext
from quotad.daemon.tokens import (
    chat_prompt_tokens_upper_bound,
    input_tokens_upper_bound,
    value_tokens_upper_bound,
)
from quotad.protocol.messages import Chat, Embed, Usage
from tests.unit.test_providers import (
    anthropic,
    anthropic_sse,
    chat,
    collect,
    openai,
    reply,
    sse,
    streamed,
)

PROMPT_ONLY = UsageReported(prompt=True, completion=False)
TEXT = [
    {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]


def tokens(prompt: int, completion: int, cached: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def openai_answer(usage: dict[str, Any] | None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"content": "Hi"}, "finish_reason": "stop"}]
    }
    if usage is not None:
        answer["usage"] = usage
    return answer


OPENAI_USAGES = [
    pytest.param(
        {"prompt_tokens": 7, "completion_tokens": 2}, tokens(7, 2), ALL_REPORTED, id="both"
    ),
    pytest.param(
        {"prompt_tokens": 0, "completion_tokens": 0}, Usage(), ALL_REPORTED, id="zeros-reported"
    ),
    pytest.param({"prompt_tokens": 7}, tokens(7, 0), PROMPT_ONLY, id="prompt-only"),
    pytest.param({}, Usage(), NOTHING_REPORTED, id="empty"),
    pytest.param(None, Usage(), NOTHING_REPORTED, id="absent"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("usage", "counts", "reported"), OPENAI_USAGES)
async def test_openai_chat_says_which_counts_it_reported(
    usage: dict[str, Any] | None, counts: Usage, reported: UsageReported
) -> None:
    provider, _ = openai(reply(openai_answer(usage)))
    result = await provider.chat("m", chat(), 10)
    assert (result.usage, result.usage_reported) == (counts, reported)


@pytest.mark.anyio
@pytest.mark.parametrize(("usage", "counts", "reported"), OPENAI_USAGES)
async def test_openai_stream_says_which_counts_it_reported(
    usage: dict[str, Any] | None, counts: Usage, reported: UsageReported
) -> None:
    """``absent``: a server that ignores ``stream_options.include_usage`` sends no usage
    chunk at all."""
    events = TEXT if usage is None else [*TEXT, {"choices": [], "usage": usage}]
    provider, _ = openai(streamed(sse(*events)))
    stream = await provider.open_stream("m", chat(), 10)
    assert stream.usage_reported == NOTHING_REPORTED  # nothing yet
    await collect(stream)
    assert (stream.usage, stream.usage_reported) == (counts, reported)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("usage", "prompt_reported"),
    [({"prompt_tokens": 3, "total_tokens": 3}, True), ({"total_tokens": 3}, False), (None, False)],
)
async def test_openai_embeddings_say_whether_the_prompt_was_reported(
    usage: dict[str, Any] | None, prompt_reported: bool
) -> None:
    answer: dict[str, Any] = {"data": [{"index": 0, "embedding": [1.0]}]}
    if usage is not None:
        answer["usage"] = usage
    provider, _ = openai(reply(answer))
    result = await provider.embed("e", ["a"], None, {})
    assert result.usage_reported.prompt is prompt_reported


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("usage", "counts", "reported"),
    [
        ({"input_tokens": 7, "output_tokens": 2}, tokens(7, 2), ALL_REPORTED),
        ({"input_tokens": 7}, tokens(7, 0), PROMPT_ONLY),
        ({"output_tokens": 2}, tokens(0, 2), UsageReported(prompt=False, completion=True)),
        (None, Usage(), NOTHING_REPORTED),
    ],
)
async def test_anthropic_message_says_which_counts_it_reported(
    usage: dict[str, Any] | None, counts: Usage, reported: UsageReported
) -> None:
    message: dict[str, Any] = {
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
    }
    if usage is not None:
        message["usage"] = usage
    provider, _ = anthropic(reply(message))
    result = await provider.chat("c", chat(), 10)
    assert (result.usage, result.usage_reported) == (counts, reported)


def anthropic_stream(start: dict[str, Any] | None, end: dict[str, Any] | None) -> bytes:
    """A streamed message "Hi" whose message_start and message_delta carry ``start`` and
    ``end`` as their usage (None: none)."""
    message: dict[str, Any] = {"content": []} if start is None else {"content": [], "usage": start}
    delta: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    if end is not None:
        delta["usage"] = end
    text = {"type": "text_delta", "text": "Hi"}
    return anthropic_sse(
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": text},
        {"type": "content_block_stop", "index": 0},
        delta,
        {"type": "message_stop"},
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("start", "end", "counts", "reported"),
    [
        ({"input_tokens": 7, "output_tokens": 1}, {"output_tokens": 2}, tokens(7, 2), ALL_REPORTED),
        # message_start's output count is a first one, not the answer's
        ({"input_tokens": 7, "output_tokens": 1}, None, tokens(7, 1), PROMPT_ONLY),
        (None, {"input_tokens": 7, "output_tokens": 2}, tokens(7, 2), ALL_REPORTED),
        (None, {"output_tokens": 2}, tokens(0, 2), UsageReported(prompt=False, completion=True)),
        (None, None, Usage(), NOTHING_REPORTED),
    ],
)
async def test_anthropic_stream_says_which_counts_it_reported(
    start: dict[str, Any] | None, end: dict[str, Any] | None, counts: Usage, reported: UsageReported
) -> None:
    provider, _ = anthropic(streamed(anthropic_stream(start, end)))
    stream = await provider.open_stream("c", chat(), 10)
    await collect(stream)
    assert (stream.usage, stream.usage_reported) == (counts, reported)


# --------------------------------------------------------------------------- what is charged

MAX_TOKENS = 200
CHAT = msgspec.convert(
    {"model": "g", "messages": [{"role": "user", "content": "東京の天気は"}]}, Chat
)
EMBED = msgspec.convert({"model": "g", "input": ["東京", "weather"]}, Embed)


def planned(request: Chat | Embed) -> RequestContext:
    context = RequestContext(
        request_id="r", kind="chat", caller=Caller(app="a"), model="g", started=0
    )
    context.request, context.max_tokens = request, MAX_TOKENS if isinstance(request, Chat) else 0
    return context


def test_counts_reported_are_charged_as_they_are_zeros_included() -> None:
    for usage in (tokens(7, 2, 1), Usage()):
        assert planned(CHAT).charged_usage(usage, ALL_REPORTED, "delivered") == usage


def test_counts_left_out_are_charged_their_bounds() -> None:
    prompt_bound = chat_prompt_tokens_upper_bound(CHAT)
    charged = planned(CHAT).charged_usage(Usage(), NOTHING_REPORTED, "晴れ")  # 6 bytes
    assert charged == Usage(prompt_tokens=prompt_bound, completion_tokens=6)


def test_a_completion_left_out_is_what_was_delivered_at_most_its_limit() -> None:
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    context = planned(CHAT)
    charged = context.charged_usage(tokens(7, 0, 3), PROMPT_ONLY, "Hi", calls)
    assert charged == tokens(7, 2 + value_tokens_upper_bound(calls), 3)
    assert context.charged_usage(tokens(7, 0), PROMPT_ONLY, "x" * 1000).completion_tokens == 200


def test_a_running_count_above_the_bound_stands() -> None:
    """A count given before the final one (message_start's, a server's running count) is
    charged at least."""
    charged = planned(CHAT).charged_usage(tokens(7, 40), PROMPT_ONLY, "Hi")
    assert charged.completion_tokens == 40


def test_embedding_inputs_left_out_are_charged_their_bound() -> None:
    charged = planned(EMBED).charged_usage(Usage(), NOTHING_REPORTED)
    assert charged == Usage(prompt_tokens=input_tokens_upper_bound(["東京", "weather"]))
