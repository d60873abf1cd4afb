"""The Anthropic Messages API shape of the front door (``POST /v1/messages``): requests
converted to a protocol :class:`~quotad.protocol.messages.Chat` (OpenAI-shaped messages), and
answers, stream events and errors converted back.

Any target can answer, whatever its wire format: the broker's providers convert OpenAI-shaped
requests to Anthropic's and back, so a request converted here reaches an Anthropic target
with what it said (text, images, tool use and results, ``cache_control``, documents) intact,
and reaches an OpenAI-compatible target as the nearest OpenAI request.

Requests: ``system`` → a system message (text parts when it is blocks); each user turn →
``tool`` messages for its ``tool_result`` blocks, then a user message with the other blocks
(text → text parts, ``image`` → ``image_url`` parts, others such as ``document`` as they are);
each assistant turn → text content plus ``tool_use`` blocks as tool calls (``thinking``
blocks are left out: the protocol has no place for them). Tools → function tools (server
tools as they are); ``tool_choice`` auto/any/none/tool → auto/required/none/the function;
``stop_sequences`` → stop; ``metadata.user_id`` → user; ``top_k``, ``thinking`` and
``service_tier`` pass through in ``Chat.extra``.

Answers: content → a text block, tool calls → ``tool_use`` blocks; finish_reason → stop_reason
(stop → end_turn, length → max_tokens, tool_calls → tool_use, content_filter → refusal);
usage → input (prompt minus cached), output and cache-read tokens. Streams are Anthropic's
events: message_start, a content block per text run or tool call (start, deltas, stop),
message_delta with the stop reason and usage, message_stop; a failure after the start is an
``error`` event.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from quotad.daemon.config import Fraction
from quotad.daemon.errors import RequestError
from quotad.daemon.front_door.wire import answered_model, bad_request, passthrough
from quotad.protocol.messages import (
    Chat,
    ChatChunk,
    ChatEnd,
    ChatMessage,
    ChatReply,
    Name,
    PositiveInt,
    Usage,
)

STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TOOL_CHOICES: Final = {"auto": "auto", "any": "required", "none": "none"}
ERROR_TYPES: Final = {
    "bad_request": "invalid_request_error",
    "bad_frame": "invalid_request_error",
    "blocked": "invalid_request_error",
    "unauthorized": "authentication_error",
    "unknown_model": "not_found_error",
    "budget_exceeded": "rate_limit_error",
    "rate_limited": "rate_limit_error",
    "overloaded": "overloaded_error",
    "cancelled": "overloaded_error",
}
"""Anthropic's error ``type`` per error code; the rest are ``api_error``."""
PASSTHROUGH: Final = ("top_k", "thinking", "service_tier")


# --------------------------------------------------------------------------- requests


class InputMessage(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class Metadata(msgspec.Struct):
    user_id: Name | None = None


class MessagesRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/messages``."""

    model: Name
    max_tokens: PositiveInt
    messages: Annotated[list[InputMessage], msgspec.Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: Fraction | None = None
    top_p: Fraction | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: Metadata | None = None
    thinking: dict[str, Any] | None = None
    service_tier: str | None = None


MESSAGES_DECODER: Final = msgspec.json.Decoder(MessagesRequest)
_ENCODER: Final = msgspec.json.Encoder()


def _text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad_request(f"{where}.text", "expected a string")
    return text


def _part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An OpenAI content part for a user content block."""
    kind = block.get("type")
    part: dict[str, Any]
    if kind == "text":
        part = {"type": "text", "text": _text(block, where)}
    elif kind == "image":
        source = block.get("source")
        if not isinstance(source, dict):
            raise bad_request(f"{where}.source", "expected an object")
        if source.get("type") == "base64":
            media_type, data = source.get("media_type"), source.get("data")
            if not isinstance(media_type, str) or not isinstance(data, str):
                raise bad_request(f"{where}.source", "a base64 image needs media_type and data")
            url = f"data:{media_type};base64,{data}"
        elif source.get("type") == "url":
            if not isinstance(source.get("url"), str):
                raise bad_request(f"{where}.source.url", "expected a string")
            url = source["url"]
        else:
            raise bad_request(f"{where}.source.type", "expected 'base64' or 'url'")
        part = {"type": "image_url", "image_url": {"url": url}}
    elif isinstance(kind, str):
        return block  # document, search_result…: as they are (an Anthropic target reads them)
    else:
        raise bad_request(f"{where}.type", "expected a string")
    if "cache_control" in block:
        part["cache_control"] = block["cache_control"]
    return part


def _tool_message(block: dict[str, Any], where: str) -> ChatMessage:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise bad_request(f"{where}.tool_use_id", "expected a string")
    content = block.get("content")
    if content is None or isinstance(content, str):
        result: str | list[dict[str, Any]] = content or ""
    elif isinstance(content, list):
        result = [
            _part(part, f"{where}.content[{index}]")
            for index, part in enumerate(content)
            if isinstance(part, dict)
        ]
    else:
        raise bad_request(f"{where}.content", "expected a string or a list of blocks")
    return ChatMessage(role="tool", tool_call_id=tool_use_id, content=result)


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    name = block.get("name")
    if not isinstance(name, str):
        raise bad_request(f"{where}.name", "expected a string")
    arguments = _ENCODER.encode(block.get("input") or {}).decode()
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _user_turn(blocks: list[dict[str, Any]], where: str) -> list[ChatMessage]:
    """Tool results first (each its own ``tool`` message), then the rest as a user message."""
    messages: list[ChatMessage] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        at = f"{where}[{index}]"
        if block.get("type") == "tool_result":
            messages.append(_tool_message(block, at))
        else:
            parts.append(_part(block, at))
    if parts:
        messages.append(ChatMessage(role="user", content=parts))
    return messages


def _assistant_turn(blocks: list[dict[str, Any]], where: str) -> ChatMessage:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, f"{where}[{index}]"))
        elif kind in ("tool_use", "server_tool_use"):
            calls.append(_tool_call(block, f"{where}[{index}]"))
    return ChatMessage(role="assistant", content="".join(texts) or None, tool_calls=calls or None)


def _system(system: str | list[dict[str, Any]]) -> ChatMessage:
    if isinstance(system, str):
        return ChatMessage(role="system", content=system)
    parts = [_part(block, f"system[{index}]") for index, block in enumerate(system)]
    return ChatMessage(role="system", content=parts)


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom") or "input_schema" not in tool:
        return tool  # a server tool (web search, bash…): as it is
    name = tool.get("name")
    if not isinstance(name, str):
        raise bad_request(f"{where}.name", "expected a string")
    function: dict[str, Any] = {"name": name, "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    converted: dict[str, Any] = {"type": "function", "function": function}
    if "cache_control" in tool:
        converted["cache_control"] = tool["cache_control"]
    return converted


def _tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            raise bad_request("tool_choice.name", "expected a string")
        return {"type": "function", "function": {"name": name}}
    if not isinstance(kind, str) or kind not in TOOL_CHOICES:
        raise bad_request("tool_choice.type", "expected one of auto, any, tool, none")
    return TOOL_CHOICES[kind]


def chat_request(body: MessagesRequest) -> Chat:
    """The protocol request for a Messages API request."""
    messages: list[ChatMessage] = []
    if body.system:
        messages.append(_system(body.system))
    for index, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, str):
            messages.append(ChatMessage(role=message.role, content=content))
        elif message.role == "user":
            messages += _user_turn(content, f"messages[{index}].content")
        else:
            messages.append(_assistant_turn(content, f"messages[{index}].content"))
    extra = passthrough(body, PASSTHROUGH)
    return Chat(
        model=body.model,
        messages=messages,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences,
        tools=[_tool(tool, f"tools[{index}]") for index, tool in enumerate(body.tools)]
        if body.tools
        else None,
        tool_choice=_tool_choice(body.tool_choice) if body.tool_choice is not None else None,
        stream=body.stream,
        user=(body.metadata.user_id or "") if body.metadata else "",
        extra=extra,
    )


# --------------------------------------------------------------------------- answers


def message_id(request_id: str) -> str:
    """The ``id`` of a message answering quotad request ``request_id``."""
    return "msg_" + request_id


def stop_reason(finish_reason: str | None) -> str:
    """Anthropic's stop_reason for an OpenAI finish_reason."""
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def _tool_input(arguments: Any) -> Any:
    """A tool call's arguments (JSON text) as the ``input`` object of a tool_use block; none
    (``{}``) when they are not an object, or not JSON, or nested deeper than decoding takes."""
    if not isinstance(arguments, str):
        return arguments if isinstance(arguments, dict) else {}
    try:
        value = msgspec.json.decode(arguments or "{}")
    except (msgspec.DecodeError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or "",
        "name": function.get("name") or "",
        "input": _tool_input(function.get("arguments")),
    }


def message_body(reply: ChatReply, requested_model: str) -> bytes:
    """A ``message`` object."""
    content: list[dict[str, Any]] = []
    if reply.content:
        content.append({"type": "text", "text": reply.content})
    content += [_tool_use(call) for call in reply.tool_calls or ()]
    return _ENCODER.encode(
        {
            "id": message_id(reply.request_id),
            "type": "message",
            "role": "assistant",
            "model": answered_model(reply.target, requested_model),
            "content": content,
            "stop_reason": stop_reason(reply.finish_reason),
            "stop_sequence": None,
            "usage": _usage(reply.usage),
        }
    )


def _event(data: dict[str, Any]) -> bytes:
    kind: str = data["type"]
    return b"event: " + kind.encode() + b"\ndata: " + _ENCODER.encode(data) + b"\n\n"


class MessageStream:
    """Encodes a broker stream as Messages API server-sent events.

    Text runs and tool calls become content blocks in order: a text delta opens a text block
    unless one is open; a tool-call delta carrying an ``id`` opens a ``tool_use`` block; its
    argument deltas become ``input_json_delta``\\ s. Opening a block closes the open one.
    """

    __slots__ = ("_block", "_block_type", "_model", "_started", "_tool_blocks")

    def __init__(self, requested_model: str) -> None:
        self._model = requested_model
        self._started = False
        self._block = -1  # index of the open block, -1: none
        self._block_type = ""
        self._tool_blocks: dict[int, int] = {}  # tool call index → block index

    def _start(self, request_id: str, target: str, events: list[bytes]) -> None:
        self._started = True
        self._model = answered_model(target, self._model)
        message: dict[str, Any] = {
            "id": message_id(request_id),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        events.append(_event({"type": "message_start", "message": message}))

    def _open(self, block: dict[str, Any], events: list[bytes]) -> None:
        self._close(events)
        self._block += 1
        self._block_type = block["type"]
        event = {"type": "content_block_start", "index": self._block, "content_block": block}
        events.append(_event(event))

    def _close(self, events: list[bytes]) -> None:
        if self._block_type:
            events.append(_event({"type": "content_block_stop", "index": self._block}))
            self._block_type = ""

    def _delta(self, block: int, delta: dict[str, Any], events: list[bytes]) -> None:
        events.append(_event({"type": "content_block_delta", "index": block, "delta": delta}))

    def chunk(self, chunk: ChatChunk) -> bytes:
        """The events for one piece of the answer."""
        events: list[bytes] = []
        if not self._started:
            self._start(chunk.request_id, chunk.target, events)
        if chunk.delta:
            if self._block_type != "text":
                self._open({"type": "text", "text": ""}, events)
            self._delta(self._block, {"type": "text_delta", "text": chunk.delta}, events)
        for call in chunk.tool_calls or ():
            self._tool_call_delta(call, events)
        return b"".join(events)

    def _tool_call_delta(self, call: dict[str, Any], events: list[bytes]) -> None:
        index = call.get("index", 0)
        function = call.get("function") or {}
        if call.get("id") or index not in self._tool_blocks:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "",
                "name": function.get("name") or "",
                "input": {},
            }
            self._open(block, events)
            self._tool_blocks[index] = self._block
        arguments = function.get("arguments")
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            self._delta(self._tool_blocks[index], delta, events)

    def end(self, end: ChatEnd) -> bytes:
        """The last events: the open block's stop, message_delta, message_stop."""
        events: list[bytes] = []
        if not self._started:
            self._start(end.request_id, end.target, events)
            if end.content:
                self._open({"type": "text", "text": ""}, events)
                self._delta(self._block, {"type": "text_delta", "text": end.content}, events)
        self._close(events)
        delta = {"stop_reason": stop_reason(end.finish_reason), "stop_sequence": None}
        events.append(_event({"type": "message_delta", "delta": delta, "usage": _usage(end.usage)}))
        events.append(_event({"type": "message_stop"}))
        return b"".join(events)

    @staticmethod
    def error(error: RequestError) -> bytes:
        """A failure after the stream started: an ``error`` event (then the stream ends)."""
        return b"event: error\ndata: " + error_body(error) + b"\n\n"


def models_body(names: list[str]) -> bytes:
    """``GET /v1/models`` as Anthropic's SDK reads it (one page holding every name)."""
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"}
        for name in names
    ]
    first, last = (names[0], names[-1]) if names else (None, None)
    return _ENCODER.encode({"data": data, "has_more": False, "first_id": first, "last_id": last})


def error_body(error: RequestError) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}``."""
    kind = ERROR_TYPES.get(error.code, "api_error")
    return _ENCODER.encode({"type": "error", "error": {"type": kind, "message": error.message}})
