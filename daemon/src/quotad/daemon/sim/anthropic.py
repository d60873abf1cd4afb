"""The Anthropic wire format as the sim speaks it: the body of ``POST /v1/messages``
(:class:`AnthropicRequest`), and the answers: a ``message`` plain or as named SSE events, the
models list and the error body."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from quotad.daemon.sim.replies import SIM_MODELS, Messages, Reply
from quotad.daemon.sim.settings import UsageReport
from quotad.protocol.messages import PositiveInt


class AnthropicRequest(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: PositiveInt
    messages: Messages
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None


messages_request_decoder = msgspec.json.Decoder(AnthropicRequest)

_json = msgspec.json.Encoder()
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
}

ANTHROPIC_MODELS = _json.encode(
    {
        "data": [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in SIM_MODELS
        ],
        "has_more": False,
        "first_id": SIM_MODELS[0],
        "last_id": SIM_MODELS[-1],
    }
)


def first_anthropic_tool(tools: Iterable[dict[str, Any]] | None) -> tuple[str, Any] | None:
    """Name and input schema of the first tool of an Anthropic request."""
    for tool in tools or ():
        if isinstance(tool.get("name"), str):
            return tool["name"], tool.get("input_schema")
        return None
    return None


def anthropic_sse(data: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event (named after its ``type``)."""
    event: str = data["type"]
    return b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"


def anthropic_usage(reply: Reply, report: UsageReport) -> dict[str, int] | None:
    """A message's ``usage``, as much of it as ``report`` says (None: none)."""
    if report == "none":
        return None
    if report == "prompt":
        return {"input_tokens": reply.prompt_tokens}
    return {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens}


def anthropic_message(reply: Reply, report: UsageReport) -> dict[str, Any]:
    """A Messages API ``message`` object (with no ``usage`` when ``report`` is ``none``)."""
    if reply.tool_name:
        content: list[dict[str, Any]] = [
            {
                "type": "tool_use",
                "id": f"toolu_sim{reply.number}",
                "name": reply.tool_name,
                "input": reply.tool_arguments,
            }
        ]
        stop_reason = "tool_use"
    else:
        content = [{"type": "text", "text": " ".join(reply.words)}]
        stop_reason = "max_tokens" if reply.cut else "end_turn"
    message: dict[str, Any] = {
        "id": f"msg_sim{reply.number}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }
    usage = anthropic_usage(reply, report)
    if usage is not None:
        message["usage"] = usage
    return message


def anthropic_message_body(reply: Reply, report: UsageReport) -> bytes:
    """A ``message`` object, encoded."""
    return _json.encode(anthropic_message(reply, report))


def anthropic_events(reply: Reply, report: UsageReport) -> list[bytes]:
    """The SSE events of a streamed message: message_start, content_block_start, deltas,
    content_block_stop, message_delta, message_stop. The usage ``report`` says: ``all``,
    the prompt's and a first output count in message_start and the output's in
    message_delta; ``prompt``, message_start's alone; ``none``, neither."""
    message = anthropic_message(reply, "none")
    block = message["content"][0]
    if reply.tool_name:
        start_block = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": reply.arguments_json}]
    else:
        start_block = {"type": "text", "text": ""}
        deltas = [
            {"type": "text_delta", "text": word if index == 0 else " " + word}
            for index, word in enumerate(reply.words)
        ]
    start: dict[str, Any] = {**message, "content": [], "stop_reason": None}
    if report != "none":
        start["usage"] = {"input_tokens": reply.prompt_tokens, "output_tokens": 1}
    end: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
    }
    if report == "all":
        end["usage"] = {"output_tokens": reply.completion_tokens}
    return [
        anthropic_sse({"type": "message_start", "message": start}),
        anthropic_sse({"type": "content_block_start", "index": 0, "content_block": start_block}),
        *(
            anthropic_sse({"type": "content_block_delta", "index": 0, "delta": delta})
            for delta in deltas
        ),
        anthropic_sse({"type": "content_block_stop", "index": 0}),
        anthropic_sse(end),
        anthropic_sse({"type": "message_stop"}),
    ]


def anthropic_error_body(status: int, message: str) -> bytes:
    """An error answer's body, its ``type`` the one for ``status``."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return _json.encode({"type": "error", "error": {"type": kind, "message": message}})
