"""The Anthropic Messages wire format: ``POST {base_url}/messages`` (plain, or streamed as
server-sent events) and ``GET {base_url}/models``; Anthropic has no embeddings.

Requests come in OpenAI shape and are converted:

- system and developer messages (wherever they are) → the top-level ``system`` text (as
  text blocks when a part carries ``cache_control``, so that prompt caching works);
- user and assistant text and parts → content blocks (``image_url`` parts → ``image`` blocks,
  from base64 data URLs or http(s) URLs; parts of any other type pass through as they are,
  and so does a part's ``cache_control``);
- assistant ``tool_calls`` → ``tool_use`` blocks; ``tool`` messages → ``tool_result`` blocks
  in a user turn, ahead of any text there; consecutive turns of one role are merged;
- function ``tools`` → ``{name, description, input_schema}``; ``tool_choice`` auto, none,
  required, or a named function → auto, none, any, tool; ``stop`` → ``stop_sequences``;
- ``temperature`` is capped at 1.0 (Anthropic's maximum, where OpenAI's is 2.0) so that a
  request valid for one target of a group stays valid for this one; ``seed`` and
  ``response_format`` have no Anthropic equivalent and are left out. ``extra`` is merged
  into the body last, as it is, but for the completion limit: ``max_tokens`` is the one the
  broker reserved for, whatever ``extra`` says, and its OpenAI spellings
  (``max_completion_tokens``, ``max_output_tokens``), which Anthropic would refuse, are
  left out.

Answers are converted back: text blocks → content, ``tool_use`` blocks → OpenAI tool calls
(arguments as a JSON string), ``stop_reason`` → ``finish_reason`` (end_turn and stop_sequence
→ stop, max_tokens → length, tool_use → tool_calls, refusal → content_filter). Usage:
prompt tokens = input + cache-creation + cache-read input tokens; cached = cache-read; the
answer says which counts were reported (``usage_reported``: a message may leave its usage
out, a stream its ``message_start``'s or its ``message_delta``'s).
"""

from __future__ import annotations

import re
from typing import Any, Final

import httpx
import msgspec

from quotad.daemon.providers.base import (
    NOTHING_REPORTED,
    ChatDelta,
    ChatResult,
    EmbedResult,
    ErrorKind,
    ProviderError,
)
from quotad.daemon.providers.transport import ChatEventStream, HTTPProvider, ProviderHTTP
from quotad.daemon.rate_limit_info import RateLimitInfo
from quotad.protocol.messages import Chat, ChatMessage, TokenCount, Usage

ANTHROPIC_VERSION: Final = "2023-06-01"
MAX_TEMPERATURE: Final = 1.0
MODELS_PAGE: Final = 1000
MAX_MODEL_PAGES: Final = 20

ENCODER: Final = msgspec.json.Encoder()

FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

TOOL_CHOICES: Final[dict[str, dict[str, str]]] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}

_CLIENT_ERROR_TYPES: Final = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
    }
)
_DATA_URL: Final = re.compile(r"data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.S)
_EMPTY_SCHEMA: Final = {"type": "object", "properties": {}}


# --------------------------------------------------------------------------- OpenAI → Anthropic


class ConversionError(ValueError):
    """A request that cannot be expressed in the Anthropic format."""


def _image(part: dict[str, Any]) -> dict[str, Any]:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise ConversionError("an image_url part has no url")
    block: dict[str, Any]
    if match := _DATA_URL.fullmatch(url):
        source = {"type": "base64", "media_type": match["media_type"], "data": match["data"]}
        block = {"type": "image", "source": source}
    elif url.startswith(("https://", "http://")):
        block = {"type": "image", "source": {"type": "url", "url": url}}
    else:
        raise ConversionError("an image_url must be a base64 data: URL or an http(s) URL")
    return block


def _blocks(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Content blocks for a message's content; empty text is left out (Anthropic refuses it),
    text that is not a string refused (a system message's are joined)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            if not part.get("text"):
                continue
            if not isinstance(part["text"], str):
                raise ConversionError("a text part's text is not a string")
            block = {"type": "text", "text": part["text"]}
        elif kind == "image_url":
            block = _image(part)
        else:
            blocks.append(part)  # already Anthropic-shaped (document, image…): as it is
            continue
        if "cache_control" in part:
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConversionError("a tool call has no function name")
    named = f"tool call {function['name']!r}"
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise ConversionError(f"{named} has no id (Anthropic pairs a tool's result by it)")
    arguments = function.get("arguments") or "{}"
    try:
        tool_input = msgspec.json.decode(arguments) if isinstance(arguments, str) else arguments
    except (msgspec.DecodeError, RecursionError):
        raise ConversionError(f"the arguments of {named} ({call_id}) are not valid JSON") from None
    if not isinstance(tool_input, dict):
        raise ConversionError(f"the arguments of {named} ({call_id}) are not an object")
    return {"type": "tool_use", "id": call_id, "name": function["name"], "input": tool_input}


def _tool_result(message: ChatMessage) -> dict[str, Any]:
    if not message.tool_call_id:
        raise ConversionError("a tool message has no tool_call_id")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    if isinstance(message.content, list):
        result["content"] = _blocks(message.content)
    elif message.content:
        result["content"] = message.content
    return result


def _system(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """The ``system`` field: plain text, or text blocks when one asks for prompt caching."""
    texts = [block for block in blocks if block.get("type") == "text"]
    if any("cache_control" in block for block in texts):
        return texts
    return "\n\n".join(block["text"] for block in texts)


def _turns(messages: list[ChatMessage]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """(system, alternating turns) from OpenAI-shaped messages."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.role
        if role in ("system", "developer"):
            system += _blocks(message.content)
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role == "assistant":
            blocks = _blocks(message.content)
            blocks += [_tool_use(call) for call in message.tool_calls or ()]
        else:
            blocks = _blocks(message.content)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # tool results must open their user turn
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")
    return _system(system), turns


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool  # already Anthropic-shaped (or a server tool): as it is
    function = tool.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ConversionError("a function tool has no name")
    schema = function.get("parameters") or _EMPTY_SCHEMA
    converted = {"name": function["name"], "input_schema": schema}
    if function.get("description"):
        converted["description"] = function["description"]
    return converted


def _tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise ConversionError(f"unknown tool_choice {choice!r}")
        return TOOL_CHOICES[choice]
    function = choice.get("function")
    if choice.get("type") == "function" and isinstance(function, dict):
        return {"type": "tool", "name": function.get("name")}
    return choice  # already Anthropic-shaped


def messages_body(model: str, request: Chat, max_tokens: int, *, stream: bool) -> dict[str, Any]:
    """The Anthropic Messages request for an OpenAI-shaped chat request."""
    system, turns = _turns(request.messages)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, MAX_TEMPERATURE)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if stream:
        body["stream"] = True
    if request.extra:
        body.update(request.extra)
        body.pop("max_completion_tokens", None)  # OpenAI's names for the max_tokens above
        body.pop("max_output_tokens", None)
        body["max_tokens"] = max_tokens  # the limit reserved for, whatever extra said
    return body


# --------------------------------------------------------------------------- Anthropic → OpenAI


class _Usage(msgspec.Struct):
    input_tokens: TokenCount | None = None
    output_tokens: TokenCount | None = None
    cache_creation_input_tokens: TokenCount | None = None
    cache_read_input_tokens: TokenCount | None = None


class _Block(msgspec.Struct):
    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Message(msgspec.Struct):
    content: list[_Block]
    stop_reason: str | None = None
    usage: _Usage | None = None


class _ErrorDetail(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _EventDelta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _EventMessage(msgspec.Struct):
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    message: _EventMessage | None = None
    content_block: _Block | None = None
    delta: _EventDelta | None = None
    usage: _Usage | None = None
    error: _ErrorDetail | None = None


class _Model(msgspec.Struct):
    id: str


class _Models(msgspec.Struct):
    data: list[_Model]
    has_more: bool = False
    last_id: str | None = None


_MESSAGE: Final = msgspec.json.Decoder(_Message)
_EVENT: Final = msgspec.json.Decoder(_Event)
_MODELS: Final = msgspec.json.Decoder(_Models)


def finish_reason(stop_reason: str | None) -> str | None:
    """The OpenAI ``finish_reason`` for an Anthropic ``stop_reason`` (unknown ones as they are)."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, stop_reason)


class _TokenCounts:
    """Usage as Anthropic reports it, piece by piece in a stream, and which of its counts
    were reported: the prompt's once ``input_tokens`` came, the completion's once a final
    ``output_tokens`` did (a stream's ``message_start`` gives a first count, 1 or so, which
    its ``message_delta`` replaces)."""

    __slots__ = ("cache_creation", "cache_read", "input", "output", "reported")

    def __init__(self) -> None:
        self.input = self.cache_creation = self.cache_read = self.output = 0
        self.reported = NOTHING_REPORTED

    def update(self, usage: _Usage, *, final_output: bool) -> None:
        if usage.input_tokens is not None:
            self.input = usage.input_tokens
            self.reported = self.reported._replace(prompt=True)
        if usage.cache_creation_input_tokens is not None:
            self.cache_creation = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens is not None:
            self.cache_read = usage.cache_read_input_tokens
        if usage.output_tokens is not None:
            self.output = usage.output_tokens
            if final_output:
                self.reported = self.reported._replace(completion=True)

    def to_usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.input + self.cache_creation + self.cache_read,
            completion_tokens=self.output,
            cached_tokens=self.cache_read,
        )


def _tool_call(block: _Block) -> dict[str, Any]:
    arguments = ENCODER.encode(block.input if block.input is not None else {}).decode()
    return {
        "id": block.id,
        "type": "function",
        "function": {"name": block.name, "arguments": arguments},
    }


def chat_result(message: _Message, rate_limits: RateLimitInfo) -> ChatResult:
    """The OpenAI-shaped result of an Anthropic message."""
    texts = [block.text for block in message.content if block.type == "text" and block.text]
    tool_calls = [_tool_call(block) for block in message.content if block.type == "tool_use"]
    counts = _TokenCounts()
    if message.usage is not None:
        counts.update(message.usage, final_output=True)
    return ChatResult(
        content="".join(texts) if texts or not tool_calls else None,
        tool_calls=tool_calls or None,
        finish_reason=finish_reason(message.stop_reason),
        usage=counts.to_usage(),
        usage_reported=counts.reported,
        rate_limits=rate_limits,
    )


def _stream_error_kind(error_type: str | None) -> ErrorKind:
    if error_type in _CLIENT_ERROR_TYPES:
        return "client"
    if error_type == "rate_limit_error":
        return "rate_limited"
    return "stream_broken"


class AnthropicStream(ChatEventStream):
    """A streamed Anthropic message as OpenAI-shaped deltas (see :class:`ChatEventStream`).

    Text deltas become ``delta``; a ``tool_use`` block becomes a tool-call delta with its id
    and name, then argument deltas, indexed by tool call as OpenAI does. An ``error`` event
    raises: ``client`` or ``rate_limited`` by its type, else ``stream_broken``.
    """

    END_EVENT = "message_stop"

    def __init__(self, http: ProviderHTTP, response: httpx.Response, rate_limits: RateLimitInfo):
        super().__init__(http, response, rate_limits)
        self._counts = _TokenCounts()
        self._tool_index: dict[int, int] = {}  # content block index → tool call index

    def on_event(self, data: bytes) -> ChatDelta | None:
        event = self.decoded(_EVENT, data, "stream event")
        match event.type:
            case "content_block_delta" if event.delta is not None:
                delta = event.delta
                if delta.type == "text_delta" and delta.text:
                    return ChatDelta(delta=delta.text)
                if delta.type == "input_json_delta" and delta.partial_json:
                    index = self._tool_index.get(event.index)
                    if index is not None:
                        arguments = {"arguments": delta.partial_json}
                        return ChatDelta(tool_calls=[{"index": index, "function": arguments}])
            case "content_block_start" if event.content_block is not None:
                block = event.content_block
                if block.type == "text" and block.text:
                    return ChatDelta(delta=block.text)
                if block.type == "tool_use":
                    index = self._tool_index[event.index] = len(self._tool_index)
                    call = {
                        "index": index,
                        "id": block.id,
                        "type": "function",
                        "function": {"name": block.name, "arguments": ""},
                    }
                    return ChatDelta(tool_calls=[call])
            case "message_start" if event.message is not None and event.message.usage:
                self._count(event.message.usage, final_output=False)
            case "message_delta":
                if event.usage is not None:
                    self._count(event.usage, final_output=True)
                if event.delta is not None and event.delta.stop_reason is not None:
                    self.finish_reason = finish_reason(event.delta.stop_reason)
                    return ChatDelta(finish_reason=self.finish_reason)
            case "message_stop":
                self.ended = True
            case "error":
                detail = event.error or _ErrorDetail()
                raise ProviderError(
                    _stream_error_kind(detail.type),
                    self.http.redact(
                        f"the stream reported {detail.type or 'an error'}: {detail.message or ''}"
                    ).rstrip(": "),
                    rate_limits=self.rate_limits,
                    body=self.http.redacted_body(data),
                )
        return None  # ping, content_block_stop, thinking, and what later versions add

    def _count(self, usage: _Usage, *, final_output: bool) -> None:
        self._counts.update(usage, final_output=final_output)
        self.usage = self._counts.to_usage()
        self.usage_reported = self._counts.reported


class AnthropicProvider(HTTPProvider):
    """One account at Anthropic (or a server speaking its Messages API)."""

    kind = "anthropic"
    ENDPOINTS = ("/messages", "/models")

    @staticmethod
    def own_headers(api_key: str | None) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _body(self, model: str, request: Chat, max_tokens: int, *, stream: bool) -> bytes:
        try:
            return ENCODER.encode(messages_body(model, request, max_tokens, stream=stream))
        except ConversionError as error:
            raise ProviderError(
                "client", f"cannot express the request for Anthropic: {error}"
            ) from None

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        """One message, answered whole."""
        body = self._body(model, request, max_tokens, stream=False)
        reply = await self._http.request("POST", self._urls["/messages"], body)
        return chat_result(self._http.decode(_MESSAGE, reply), reply.rate_limits)

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> AnthropicStream:
        """Start a streamed message; returns once the server has accepted it."""
        body = self._body(model, request, max_tokens, stream=True)
        response, rate_limits = await self._http.open_stream(self._urls["/messages"], body)
        return AnthropicStream(self._http, response, rate_limits)

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        """Always fails: Anthropic offers no embeddings."""
        raise ProviderError(
            "client",
            f"{self.name} speaks the Anthropic API, which has no embeddings; "
            "route embedding models to an OpenAI-compatible provider",
        )

    async def list_models(self) -> list[str]:
        """The model names the account may use (every page of ``GET /models``)."""
        names: list[str] = []
        params: dict[str, str | int] = {"limit": MODELS_PAGE}
        for _ in range(MAX_MODEL_PAGES):
            reply = await self._http.request("GET", self._urls["/models"].copy_merge_params(params))
            page = self._http.decode(_MODELS, reply)
            names += [model.id for model in page.data]
            if not page.has_more or not page.last_id:
                break
            params["after_id"] = page.last_id
        return names

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()
