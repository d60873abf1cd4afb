"""Token counts before the provider's (quotad.daemon.tokens) and the limits a request may ask
for (quotad.daemon.request_limits): the budgets' upper bound holds against a worst-case
byte-level tokenizer for any text and any part, the gates' estimate stays close, and extra
cannot ask a provider for more than was reserved."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.errors import RequestError
from quotad.daemon.request_limits import (
    check_embed_extra,
    completion_limit,
    completion_tokens_upper_bound,
)
from quotad.daemon.tokens import (
    CONTEXT_WINDOW_TOKENS_UPPER_BOUND,
    DEFINED_TOOL_TOKENS_UPPER_BOUND,
    IMAGE_TOKENS_UPPER_BOUND,
    chat_prompt_tokens_upper_bound,
    estimate_prompt_tokens,
    input_tokens_upper_bound,
    prompt_tokens_upper_bound,
    text_tokens_upper_bound,
)
from quotad.protocol.messages import Chat, ChatMessage

JAPANESE = "東京の天気について詳しく教えてください。明日は雨が降りますか"


def utf8_bytes_of_strings(value: Any) -> int:
    """What a worst-case byte-level tokenizer counts for ``value``: one token per UTF-8
    byte of every string in it (keys included)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(utf8_bytes_of_strings(k) + utf8_bytes_of_strings(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(utf8_bytes_of_strings(item) for item in value)
    return 0


def worst_case_prompt(messages: list[ChatMessage], tools: Any = None) -> int:
    """A worst-case tokenizer's count of a prompt: the UTF-8 bytes of every string of each
    message (the names of a message's own fields are the chat template's, counted as framing)
    and of the tools."""
    fields = [[m.role, m.content, m.name, m.tool_calls, m.tool_call_id] for m in messages]
    return utf8_bytes_of_strings(fields) + utf8_bytes_of_strings(tools)


def user(content: str | list[dict[str, Any]]) -> ChatMessage:
    return ChatMessage(role="user", content=content)


# --------------------------------------------------------------------------- text


def test_japanese_is_bounded_by_its_bytes_where_the_estimate_undercounts_it() -> None:
    messages = [user(JAPANESE * 20)]
    bound = prompt_tokens_upper_bound(messages)
    assert bound >= len((JAPANESE * 20).encode())  # 3 bytes a character
    assert bound >= worst_case_prompt(messages)
    # the gates keep the closer estimate: four characters a token (a twelfth of the bytes)
    assert estimate_prompt_tokens(messages) < bound / 10


def test_text_bound_is_utf8_bytes() -> None:
    assert text_tokens_upper_bound("abc") == 3
    assert text_tokens_upper_bound("é") == 2
    assert text_tokens_upper_bound("😀") == 4
    assert text_tokens_upper_bound("\ud800") == 3  # a lone surrogate does not raise


part_strings = st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | part_strings,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(part_strings, children),
    max_leaves=8,
)
bytes_bounded_parts = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    st.sampled_from(["text", "input_text", "refusal", "input_audio", "tool_use"]),
    st.dictionaries(part_strings, json_values, max_size=3),
)
messages_strategy = st.lists(
    st.builds(
        ChatMessage,
        role=st.sampled_from(["system", "user", "assistant", "tool"]),
        content=st.none() | part_strings | st.lists(bytes_bounded_parts, max_size=3),
        name=st.none() | part_strings,
        tool_calls=st.none() | st.lists(st.dictionaries(part_strings, json_values), max_size=2),
        tool_call_id=st.none() | part_strings,
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=100, deadline=None)
@given(messages_strategy, st.none() | st.lists(st.dictionaries(part_strings, json_values)))
def test_the_bound_holds_against_a_worst_case_tokenizer(
    messages: list[ChatMessage], functions: list[dict[str, Any]] | None
) -> None:
    """Whatever strings are anywhere in the messages (any field of any part, nested, names,
    tool calls) and in the tools, the bound is at least one token per UTF-8 byte of them."""
    tools = [{"type": "function", "function": f} for f in functions] if functions else None
    assert prompt_tokens_upper_bound(messages, tools) >= worst_case_prompt(messages, tools)


# --------------------------------------------------------------------------- parts


def test_a_file_part_the_estimator_did_not_know_counts() -> None:
    """A ``file`` part of 40,000 characters counted 0 (1,607 USD spent on a 5 USD budget)."""
    part = {"type": "file", "file": {"file_data": "x" * 40_000, "filename": "a.pdf"}}
    messages = [user([part])]
    assert prompt_tokens_upper_bound(messages) >= CONTEXT_WINDOW_TOKENS_UPPER_BOUND
    assert estimate_prompt_tokens(messages) >= 10_000


@pytest.mark.parametrize(
    "part",
    [
        {"type": "document", "source": {"type": "url", "url": "https://x.test/a.pdf"}},
        {"type": "input_file", "file_id": "file-abc"},
        {"type": "video_url", "video_url": {"url": "https://x.test/v.mp4"}},
        {"type": "something_new", "x": 1},
        {"no_type": "at all"},
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]},
    ],
)
def test_content_its_bytes_do_not_bound_reserves_a_context_window(part: dict[str, Any]) -> None:
    messages = [user([{"type": "text", "text": "hi"}, part])]
    assert prompt_tokens_upper_bound(messages) >= CONTEXT_WINDOW_TOKENS_UPPER_BOUND


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}},
        {"type": "input_image", "image_url": "https://x.test/cat.png"},
    ],
)
def test_an_image_counts_its_ceiling_whatever_its_bytes(part: dict[str, Any]) -> None:
    bound = prompt_tokens_upper_bound([user([part])])
    assert IMAGE_TOKENS_UPPER_BOUND <= bound < IMAGE_TOKENS_UPPER_BOUND + 200
    two = prompt_tokens_upper_bound([user([part, part])])
    assert two >= 2 * IMAGE_TOKENS_UPPER_BOUND


def test_audio_and_tool_results_count_their_bytes() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "UklGR" * 2000, "format": "wav"}}
    assert prompt_tokens_upper_bound([user([audio])]) >= 10_000
    image = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    result = {"type": "tool_result", "tool_use_id": "t", "content": [image, {"type": "text"}]}
    assert prompt_tokens_upper_bound([user([result])]) >= IMAGE_TOKENS_UPPER_BOUND


# --------------------------------------------------------------------------- tools and extra


def test_tools_count_their_definitions_and_framing() -> None:
    messages = [user("hi")]
    bare = prompt_tokens_upper_bound(messages)
    function = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with_function = prompt_tokens_upper_bound(messages, [function])
    assert with_function - bare >= len(msgspec.json.encode(function)) + 346
    defined = {"type": "computer_20250124", "name": "computer", "display_width_px": 1024}
    with_defined = prompt_tokens_upper_bound(messages, [defined])
    assert with_defined - bare >= DEFINED_TOOL_TOKENS_UPPER_BOUND
    server = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    assert prompt_tokens_upper_bound(messages, [server]) >= CONTEXT_WINDOW_TOKENS_UPPER_BOUND


def test_what_extra_adds_to_the_prompt_counts() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "description": JAPANESE * 50}}]
    plain = Chat(model="m", messages=[user("hi")])
    in_extra = Chat(model="m", messages=[user("hi")], extra={"tools": tools, "system": JAPANESE})
    grown = chat_prompt_tokens_upper_bound(in_extra) - chat_prompt_tokens_upper_bound(plain)
    assert grown >= len((JAPANESE * 51).encode())
    searching = Chat(model="m", messages=[user("hi")], extra={"web_search_options": {}})
    assert chat_prompt_tokens_upper_bound(searching) >= CONTEXT_WINDOW_TOKENS_UPPER_BOUND
    formatted = Chat(model="m", messages=[user("hi")], response_format={"x": JAPANESE})
    assert chat_prompt_tokens_upper_bound(formatted) - chat_prompt_tokens_upper_bound(plain) > 60


@pytest.mark.parametrize("kind", [{}, [], 1], ids=["object", "array", "number"])
def test_a_type_that_is_not_a_string_names_nothing_and_reserves_a_context_window(
    kind: Any,
) -> None:
    """The estimate and the bound looked a part's or a tool's type up in a set: an object
    or an array there raised TypeError (a 500). The request check refuses such a part or
    tool; what is left (a tool in ``extra``, a part met before the check) is unmeasured."""
    part = {"type": kind, "text": "look"}
    assert estimate_prompt_tokens([user([part])]) > 0
    assert prompt_tokens_upper_bound([user([part])]) >= CONTEXT_WINDOW_TOKENS_UPPER_BOUND
    tool = {"type": kind, "function": {"name": "f"}}
    assert prompt_tokens_upper_bound([user("hi")], [tool]) >= CONTEXT_WINDOW_TOKENS_UPPER_BOUND
    in_extra = Chat(model="m", messages=[user("hi")], extra={"functions": [tool]})
    assert chat_prompt_tokens_upper_bound(in_extra) >= CONTEXT_WINDOW_TOKENS_UPPER_BOUND


def test_embedding_inputs_are_bounded_by_their_bytes() -> None:
    assert input_tokens_upper_bound(JAPANESE) >= len(JAPANESE.encode())
    assert input_tokens_upper_bound([JAPANESE, "abc"]) >= len(JAPANESE.encode()) + 3


# --------------------------------------------------------------------------- request limits


def chat(limit: int | None = None, **extra: Any) -> Chat:
    return Chat(model="m", messages=[user("hi")], max_tokens=limit, extra=extra)


@pytest.mark.parametrize(
    ("request_", "limit"),
    [
        (chat(), 1024),
        (chat(50), 50),
        (chat(1, max_completion_tokens=2000), 2000),
        (chat(None, max_completion_tokens=300), 300),
        (chat(900, max_tokens=10), 900),
        (chat(1, max_output_tokens=700, max_tokens=5), 700),
        (chat(1, n=1), 1),
    ],
)
def test_the_completion_limit_is_the_largest_asked_for(request_: Chat, limit: int) -> None:
    assert completion_limit(request_, 1024) == limit


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"max_completion_tokens": "2000"}, "extra.max_completion_tokens"),
        ({"max_tokens": 0}, "extra.max_tokens"),
        ({"max_output_tokens": True}, "extra.max_output_tokens"),
        ({"max_tokens": 1.5}, "extra.max_tokens"),
        ({"n": 4}, "extra.n"),
        ({"n": True}, "extra.n"),
        ({"model": "gpt-5-pro"}, "extra.model"),
        ({"messages": []}, "extra.messages"),
        ({"stream": True}, "extra.stream"),
        ({"stream_options": {"include_usage": False}}, "extra.stream_options"),
    ],
)
def test_extra_that_would_escape_the_reservation_is_refused(
    extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(RequestError) as refused:
        completion_limit(chat(10, **extra), 1024)
    assert refused.value.code == "bad_request"
    assert refused.value.message.startswith(field + ":")
    assert refused.value.details == {"field": field}


def test_a_prediction_is_billed_past_the_limit() -> None:
    prediction = {"type": "content", "content": JAPANESE * 10}
    bound = completion_tokens_upper_bound(100, {"prediction": prediction})
    assert bound >= 100 + len((JAPANESE * 10).encode())
    assert completion_tokens_upper_bound(100, {}) == 100


def test_embedding_extra_cannot_replace_the_model_or_inputs() -> None:
    check_embed_extra({"encoding_format": "base64"})
    for field in ("model", "input"):
        with pytest.raises(RequestError, match=f"extra.{field}"):
            check_embed_extra({field: "x"})


# --------------------------------------------------------------------------- cost


def estimate_of_strings(value: Any) -> int:
    """The estimate of every string in ``value`` (values, not keys), walked the plain way."""
    if isinstance(value, str):
        return -(-len(value) // 4)
    if isinstance(value, Mapping):
        return sum(estimate_of_strings(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(estimate_of_strings(item) for item in value)
    return 0


def test_a_part_is_estimated_by_every_string_in_it_at_any_depth() -> None:
    part: dict[str, Any] = {
        "type": "tool_result",
        "content": [{"type": "text", "text": "x" * 9}, ("abcde", 7, None)],
        "meta": MappingProxyType({"a": "bb", "b": ["ccccc", {"d": "e" * 13}]}),
    }
    expected = 4 + 3 + estimate_of_strings(part)  # framing, the reply, and the strings
    assert estimate_prompt_tokens([user([part])]) == expected == 4 + 3 + 16


def test_estimating_a_part_takes_no_python_call_per_item_in_it() -> None:
    """9,000 parts were estimated with a call per value and a generator per object (11 calls
    a part, 26 ms of the event loop for a 13 MB body); now one walk per part."""
    parts = [{"type": "text", "text": f"part {index}"} for index in range(9_000)]
    messages = [user(parts)]
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        estimate = estimate_prompt_tokens(messages)
    finally:
        sys.setprofile(None)
    assert estimate == 3 + 4 + sum(estimate_of_strings(part) for part in parts)
    assert calls <= 4 * len(parts) + 10  # its type, its walk, each of its 2 strings
