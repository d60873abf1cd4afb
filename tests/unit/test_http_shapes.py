"""The API shapes of the front door as pure functions: Anthropic requests converted to the
protocol's OpenAI-shaped Chat (and back through the Anthropic provider unchanged), answers and
stream events in each API's shape."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from quotad.daemon.errors import RequestError
from quotad.daemon.front_door import anthropic, openai
from quotad.daemon.providers.anthropic import messages_body
from quotad.protocol.messages import ChatChunk, ChatEnd, ChatMessage, ChatReply, Usage

IMAGE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
CONVERSATION: dict[str, Any] = {
    "model": "claude/c",
    "max_tokens": 100,
    "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image", "source": IMAGE},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "let me look"},
                {"type": "tool_use", "id": "toolu_1", "name": "zoom", "input": {"x": 2}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                {"type": "text", "text": "and now?"},
            ],
        },
    ],
    "tools": [
        {"name": "zoom", "description": "zoom in", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
    ],
    "tool_choice": {"type": "tool", "name": "zoom"},
    "stop_sequences": ["END"],
    "temperature": 0.5,
    "top_k": 5,
    "metadata": {"user_id": "u-7"},
}


def convert(body: dict[str, Any]) -> Any:
    return anthropic.chat_request(anthropic.MESSAGES_DECODER.decode(msgspec.json.encode(body)))


def test_anthropic_request_becomes_openai_shaped_chat() -> None:
    chat = convert(CONVERSATION)
    assert [message.role for message in chat.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "user",
    ]
    system, question, answer, result, follow_up = chat.messages
    assert system.content == [
        {"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}
    ]
    assert question.content[1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    assert answer.content == "let me look"
    assert answer.tool_calls == [
        {"id": "toolu_1", "type": "function", "function": {"name": "zoom", "arguments": '{"x":2}'}}
    ]
    assert (result.tool_call_id, result.content) == ("toolu_1", "a cat")
    assert follow_up.content == [{"type": "text", "text": "and now?"}]
    assert chat.tools[0] == {
        "type": "function",
        "function": {"name": "zoom", "parameters": {"type": "object"}, "description": "zoom in"},
    }
    assert chat.tools[1]["type"] == "web_search_20250305"
    assert chat.tool_choice == {"type": "function", "function": {"name": "zoom"}}
    assert (chat.stop, chat.temperature, chat.max_tokens, chat.user) == (["END"], 0.5, 100, "u-7")
    assert chat.extra == {"top_k": 5}


def test_the_round_trip_to_an_anthropic_target_keeps_the_conversation() -> None:
    chat = convert(CONVERSATION)
    body = messages_body("c", chat, 100, stream=False)
    assert body["system"] == CONVERSATION["system"]
    assert body["messages"][0]["content"][1] == {"type": "image", "source": IMAGE}
    assert body["messages"][1]["content"] == CONVERSATION["messages"][1]["content"][1:]
    assert body["messages"][2]["content"] == CONVERSATION["messages"][2]["content"]
    assert body["tools"][0] == CONVERSATION["tools"][0]
    assert body["tool_choice"] == {"type": "tool", "name": "zoom"}
    assert body["top_k"] == 5


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image", "source": {"type": "x"}}]}
                ]
            },
            "messages[0].content[0].source.type",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "text", "text": 3}]}]},
            "messages[0].content[0].text",
        ),
        ({"tools": [{"input_schema": {}, "name": 4}]}, "tools[0].name"),
    ],
)
def test_bad_anthropic_shapes_name_their_field(change: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        convert({**CONVERSATION, **change})
    assert caught.value.code == "bad_request"
    assert caught.value.details["field"] == param
    assert caught.value.message.startswith(param + ": ")


@pytest.mark.parametrize(
    "arguments",
    # broken JSON; JSON nested deeper than decoding takes (RecursionError, a 500 before)
    ["{", '{"a": ' * 100_000 + "1" + "}" * 100_000],
    ids=["broken", "too_deep"],
)
def test_anthropic_message_body_from_a_reply_with_tool_calls(arguments: str) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    reply = ChatReply(
        content="calling",
        tool_calls=[call],
        finish_reason="length",
        usage=Usage(prompt_tokens=10, completion_tokens=3),
        target="openai/gpt-x",
        request_id="qd-1",
    )
    body = msgspec.json.decode(anthropic.message_body(reply, "fast"))
    assert body["model"] == "gpt-x"
    assert body["content"] == [
        {"type": "text", "text": "calling"},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {}},  # not decoded: no input
    ]
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["input_tokens"] == 10


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            event, payload = block.split("\n")
            out.append((event.removeprefix("event: "), msgspec.json.decode(payload[6:])))
    return out


def test_anthropic_stream_events_open_and_close_blocks_in_order() -> None:
    stream = anthropic.MessageStream("fast")
    data = stream.chunk(ChatChunk(delta="a", request_id="qd-2", target="p/m"))
    data += stream.chunk(ChatChunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f"}}]))
    data += stream.chunk(ChatChunk(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
    data += stream.chunk(ChatChunk(delta="b"))
    data += stream.end(ChatEnd(finish_reason="stop", usage=Usage(completion_tokens=2)))
    seen = events(data)
    assert [name for name, _ in seen] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert seen[0][1]["message"]["id"] == "msg_qd-2"
    assert [payload["index"] for name, payload in seen if name == "content_block_start"] == [
        0,
        1,
        2,
    ]
    assert seen[4][1]["content_block"]["type"] == "tool_use"
    assert seen[5][1]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert seen[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_openai_chat_request_passes_known_parameters_through() -> None:
    body = openai.CHAT_DECODER.decode(
        msgspec.json.encode(
            {
                "model": "fast",
                "messages": [{"role": "user", "content": "x"}],
                "frequency_penalty": 0.5,
                "seed": 3,
                "response_format": {"type": "json_object"},
                "some_unknown_field": 1,
            }
        )
    )
    chat = openai.chat_request(body)
    assert chat.extra == {"frequency_penalty": 0.5}
    assert chat.seed == 3
    assert chat.response_format == {"type": "json_object"}
    assert chat.messages == [ChatMessage(role="user", content="x")]


def test_openai_stream_without_chunks_still_ends_properly() -> None:
    stream = openai.CompletionStream("fast", 0, include_usage=True)
    end = ChatEnd(content="", finish_reason="stop", target="p/m", request_id="qd-3")
    data = stream.end(end).decode()
    events = [line.removeprefix("data: ") for line in data.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    first, finish, usage = (msgspec.json.decode(event) for event in events[:-1])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == []
    assert usage["id"] == "chatcmpl-qd-3"
