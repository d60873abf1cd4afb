"""The OpenAI wire format as the sim speaks it: the bodies of ``POST /v1/chat/completions``
(:class:`OpenAIChatRequest`) and ``POST /v1/embeddings`` (:class:`EmbeddingsRequest`), and the
answers: a ``chat.completion`` plain or as SSE ``chat.completion.chunk`` events, an embeddings
``list``, the models ``list`` and the error body."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec

from quotad.daemon.sim.replies import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    SIM_MODELS,
    Messages,
    Reply,
    embedding,
)
from quotad.daemon.sim.settings import UsageReport
from quotad.daemon.tokens import estimate_text_tokens
from quotad.protocol.messages import PositiveInt


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class OpenAIChatRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: Messages
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[Any]
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=8192)] | None = None
    encoding_format: Literal["float", "base64"] = "float"


chat_request_decoder = msgspec.json.Decoder(OpenAIChatRequest)
embeddings_request_decoder = msgspec.json.Decoder(EmbeddingsRequest)

_json = msgspec.json.Encoder()
_ERROR_TYPES = {500: "server_error"}

OPENAI_MODELS = _json.encode(
    {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "quotad-sim"} for m in SIM_MODELS
        ],
    }
)


def first_openai_tool(tools: Iterable[dict[str, Any]] | None) -> tuple[str, Any] | None:
    """Name and parameter schema of the first tool of an OpenAI request, if it is a function."""
    for tool in tools or ():
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"], function.get("parameters")
        return None
    return None


def sse(data: Any) -> bytes:
    """One OpenAI server-sent event."""
    return b"data: " + _json.encode(data) + b"\n\n"


def openai_usage(reply: Reply, report: UsageReport) -> dict[str, int] | None:
    """A chat's ``usage``, as much of it as ``report`` says (None: none)."""
    if report == "none":
        return None
    if report == "prompt":
        return {"prompt_tokens": reply.prompt_tokens}
    completion = reply.completion_tokens
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + completion,
    }


def openai_chat_body(reply: Reply, created: int, report: UsageReport) -> bytes:
    """A ``chat.completion`` object (with no ``usage`` when ``report`` is ``none``)."""
    if reply.tool_name:
        call = {
            "id": f"call_sim{reply.number}",
            "type": "function",
            "function": {"name": reply.tool_name, "arguments": reply.arguments_json},
        }
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish_reason = "tool_calls"
    else:
        message = {"role": "assistant", "content": " ".join(reply.words), "refusal": None}
        finish_reason = "length" if reply.cut else "stop"
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    body = {
        "id": f"chatcmpl-sim{reply.number}",
        "object": "chat.completion",
        "created": created,
        "model": reply.model,
        "choices": [choice],
    }
    usage = openai_usage(reply, report)
    if usage is not None:
        body["usage"] = usage
    return _json.encode(body)


def openai_chat_events(
    reply: Reply, created: int, include_usage: bool, report: UsageReport
) -> list[bytes]:
    """The SSE events of a streamed chat completion, ``data: [DONE]`` last; with
    ``include_usage``, a last chunk with the usage ``report`` says (none when ``none``: as
    a server that ignores ``stream_options.include_usage``)."""
    usage = openai_usage(reply, report) if include_usage else None
    include_usage = usage is not None
    base: dict[str, Any] = {
        "id": f"chatcmpl-sim{reply.number}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": reply.model,
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**base, "choices": [choice]})

    if reply.tool_name:
        call = {
            "index": 0,
            "id": f"call_sim{reply.number}",
            "type": "function",
            "function": {"name": reply.tool_name, "arguments": ""},
        }
        arguments = {"index": 0, "function": {"arguments": reply.arguments_json}}
        events = [
            chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
            chunk({"tool_calls": [arguments]}),
            chunk({}, "tool_calls"),
        ]
    else:
        events = [chunk({"role": "assistant", "content": ""})]
        events.extend(
            chunk({"content": word if index == 0 else " " + word})
            for index, word in enumerate(reply.words)
        )
        events.append(chunk({}, "length" if reply.cut else "stop"))
    if include_usage:
        events.append(sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def embedding_inputs(raw: str | list[Any]) -> tuple[list[str], int] | None:
    """The inputs as texts, and their token count; None when the shape is not one OpenAI
    accepts (a string, strings, a token array or token arrays)."""
    if isinstance(raw, str):
        return [raw], estimate_text_tokens(raw)
    if not raw:
        return None
    if all(isinstance(item, str) for item in raw):
        return raw, sum(estimate_text_tokens(item) for item in raw)
    if all(isinstance(item, int) for item in raw):
        return [" ".join(map(str, raw))], len(raw)
    if all(isinstance(item, list) and all(isinstance(t, int) for t in item) for item in raw):
        return [" ".join(map(str, item)) for item in raw], sum(len(item) for item in raw)
    return None


def openai_embeddings_body(
    request: EmbeddingsRequest, texts: list[str], tokens: int, report: UsageReport
) -> bytes:
    """An embeddings ``list``: one vector per text (``dimensions`` of them, 8 by default), as
    floats or as base64 of little-endian float32s; its ``usage`` left out when ``report`` is
    ``none`` (its prompt's is all there is)."""
    dimensions = request.dimensions or DEFAULT_EMBEDDING_DIMENSIONS
    data = []
    for index, text in enumerate(texts):
        vector: list[float] | str = embedding(text, dimensions)
        if request.encoding_format == "base64":
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    body: dict[str, Any] = {"object": "list", "data": data, "model": request.model}
    if report != "none":
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json.encode(body)


def openai_error_body(status: int, message: str, code: str, error_type: str = "") -> bytes:
    """An error answer's body. Its ``type`` is ``error_type`` when given (429s name the limit:
    ``requests`` or ``tokens``), else the one for ``status``."""
    kind = error_type or _ERROR_TYPES.get(status, "invalid_request_error")
    return _json.encode({"error": {"message": message, "type": kind, "param": None, "code": code}})
