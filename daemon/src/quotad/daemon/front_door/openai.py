"""The OpenAI API shapes of the front door: ``/v1/chat/completions``, ``/v1/embeddings`` and
``/v1/models`` bodies decoded into protocol messages, and replies, stream chunks and errors
encoded back.

Chat requests map onto :class:`~quotad.protocol.messages.Chat` field by field (``stop`` as a
string becomes a list; ``max_completion_tokens`` is the reservation's max_tokens and is passed
on as it is). The other parameters OpenAI documents (:data:`PASSTHROUGH`) go to the provider
as they are, in ``Chat.extra``; fields this table does not know are ignored. ``n`` above 1 is
refused: the broker answers one choice per request. An embeddings body has no such table: its
fields other than the five OpenAI documents go to the provider in ``Embed.extra``
(:class:`EmbeddingsBody`), where OpenAI-compatible servers read fields of their own.

Streams are ``chat.completion.chunk`` events, one per broker chunk, flushed as they come:
the first carries ``role: assistant``, the last a ``finish_reason``; with
``stream_options.include_usage`` a chunk with empty ``choices`` and the usage follows; then
``data: [DONE]``. A failure after the stream started is sent as ``data: {"error": {...}}``,
which the SDK raises as an ``APIError``.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Annotated, Any, Final, Literal

import msgspec

from quotad.daemon.errors import RequestError
from quotad.daemon.front_door.wire import answered_model, bad_request, passthrough
from quotad.protocol.messages import (
    Chat,
    ChatChunk,
    ChatEnd,
    ChatMessage,
    ChatReply,
    Embed,
    EmbedReply,
    Name,
    PositiveInt,
    Usage,
)

ERROR_TYPES: Final = {
    "bad_request": "invalid_request_error",
    "bad_frame": "invalid_request_error",
    "blocked": "invalid_request_error",
    "unknown_model": "invalid_request_error",
    "unauthorized": "authentication_error",
    "budget_exceeded": "insufficient_quota",
    "rate_limited": "rate_limit_error",
}
"""OpenAI's error ``type`` per error code; the rest are ``server_error``."""


# --------------------------------------------------------------------------- requests


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatPassthrough(msgspec.Struct, kw_only=True):
    """The chat parameters OpenAI documents that go to the provider as they are
    (``Chat.extra``): typed here, named by :data:`PASSTHROUGH`."""

    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    verbosity: str | None = None
    prediction: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


PASSTHROUGH: Final = ChatPassthrough.__struct_fields__
"""Chat parameters passed to the provider as they are (``Chat.extra``)."""


class ChatCompletionRequest(ChatPassthrough, kw_only=True):
    """``POST /v1/chat/completions``."""

    model: Name
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    user: Name | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/embeddings``: the fields OpenAI documents."""

    model: Name
    input: str | list[Any]
    dimensions: PositiveInt | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: Name | None = None


EMBEDDINGS_FIELDS: Final = frozenset(EmbeddingsRequest.__struct_fields__)


class EmbeddingsBody(msgspec.Struct, frozen=True):
    """An embeddings body: its documented fields, and the others (``extra``), which go to
    the provider as they are (``Embed.extra``, part of the cache key): OpenAI-compatible
    servers take fields of their own there (``input_type``, ``truncate``), and a field that
    changes the vectors must change the key (ignored, ``input_type`` "query" and "passage"
    were answered with one cached vector). A provider that does not take one refuses it."""

    fields: EmbeddingsRequest
    extra: dict[str, Any]

    @property
    def encoding_format(self) -> Literal["float", "base64"]:
        """How the caller wants the vectors (quotad encodes them itself)."""
        return self.fields.encoding_format


class EmbeddingsDecoder:
    """Decodes an :class:`EmbeddingsBody` (msgspec's errors for a body that is not one)."""

    _fields: Final = msgspec.json.Decoder(EmbeddingsRequest)
    _names: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])

    def decode(self, buf: bytes, /) -> EmbeddingsBody:
        """The body's documented fields, and its others as their JSON values."""
        fields = self._fields.decode(buf)
        extra = {
            name: msgspec.json.decode(value)
            for name, value in self._names.decode(buf).items()
            if name not in EMBEDDINGS_FIELDS
        }
        return EmbeddingsBody(fields, extra)


CHAT_DECODER: Final = msgspec.json.Decoder(ChatCompletionRequest)
EMBEDDINGS_DECODER: Final = EmbeddingsDecoder()


def chat_request(body: ChatCompletionRequest) -> Chat:
    """The protocol request for a chat completion."""
    if body.n is not None and body.n != 1:
        raise bad_request("n", "quotad answers one choice per request; leave n out or set 1")
    extra = passthrough(body, PASSTHROUGH)
    max_tokens = body.max_tokens
    if body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
        extra["max_completion_tokens"] = max_tokens
    return Chat(
        model=body.model,
        messages=body.messages,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        seed=body.seed,
        tools=body.tools,
        tool_choice=body.tool_choice,
        response_format=body.response_format,
        stream=body.stream,
        user=body.user or "",
        extra=extra,
    )


def embed_request(body: EmbeddingsBody) -> Embed:
    """The protocol request for embeddings (text inputs only; the body's fields that OpenAI
    does not document in ``extra``)."""
    fields = body.fields
    inputs = fields.input
    if isinstance(inputs, list):
        if not inputs:
            raise bad_request("input", "expected a string or a non-empty list of strings")
        if not all(isinstance(item, str) for item in inputs):
            raise bad_request(
                "input", "quotad embeds text: send a string or a list of strings, not tokens"
            )
    return Embed(
        model=fields.model,
        input=inputs,
        dimensions=fields.dimensions,
        user=fields.user or "",
        extra=body.extra,
    )


# --------------------------------------------------------------------------- answers


class _PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class _Usage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptTokensDetails | None = None


class _Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct):
    index: int
    message: _Message
    finish_reason: str | None
    logprobs: None = None


class _ChatCompletion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[_Choice]
    usage: _Usage


class _Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _ChunkChoice(msgspec.Struct):
    index: int
    delta: _Delta
    finish_reason: str | None
    logprobs: None = None


class _ChatCompletionChunk(msgspec.Struct, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[_ChunkChoice]
    usage: _Usage | None = None


class _Embedding(msgspec.Struct):
    object: str
    index: int
    embedding: list[float] | str


class _EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class _EmbeddingList(msgspec.Struct):
    object: str
    data: list[_Embedding]
    model: str
    usage: _EmbeddingUsage


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: str
    param: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


class _Model(msgspec.Struct):
    id: str
    object: str
    created: int
    owned_by: str


class _ModelList(msgspec.Struct):
    object: str
    data: list[_Model]


_ENCODER: Final = msgspec.json.Encoder()
_DONE: Final = b"data: [DONE]\n\n"


def _usage(usage: Usage) -> _Usage:
    details = _PromptTokensDetails(usage.cached_tokens) if usage.cached_tokens else None
    return _Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, details)


def completion_id(request_id: str) -> str:
    """The ``id`` of a completion answering quotad request ``request_id``."""
    return "chatcmpl-" + request_id


def completion_body(reply: ChatReply, requested_model: str, created: int) -> bytes:
    """A ``chat.completion`` object."""
    message = _Message("assistant", reply.content, reply.tool_calls)
    return _ENCODER.encode(
        _ChatCompletion(
            id=completion_id(reply.request_id),
            object="chat.completion",
            created=created,
            model=answered_model(reply.target, requested_model),
            choices=[_Choice(0, message, reply.finish_reason)],
            usage=_usage(reply.usage),
        )
    )


class CompletionStream:
    """Encodes a broker stream as ``chat.completion.chunk`` server-sent events."""

    __slots__ = ("_created", "_finished", "_id", "_include_usage", "_model", "_started")

    def __init__(self, requested_model: str, created: int, include_usage: bool) -> None:
        self._id = ""
        self._model = requested_model
        self._created = created
        self._include_usage = include_usage
        self._started = False
        self._finished = False

    def _event(self, delta: _Delta, finish_reason: str | None) -> bytes:
        chunk = _ChatCompletionChunk(
            self._id,
            "chat.completion.chunk",
            self._created,
            self._model,
            [_ChunkChoice(0, delta, finish_reason)],
        )
        return b"data: " + _ENCODER.encode(chunk) + b"\n\n"

    def _start(self, request_id: str, target: str) -> None:
        self._started = True
        self._id = completion_id(request_id)
        self._model = answered_model(target, self._model)

    def chunk(self, chunk: ChatChunk) -> bytes:
        """The event for one piece of the answer."""
        role = None
        if not self._started:
            self._start(chunk.request_id, chunk.target)
            role = "assistant"
        if chunk.finish_reason is not None:
            self._finished = True
        delta = _Delta(role, chunk.delta if chunk.delta or role else None, chunk.tool_calls)
        return self._event(delta, chunk.finish_reason)

    def end(self, end: ChatEnd) -> bytes:
        """The last events: a finish_reason if none came yet, the usage if asked, [DONE]."""
        events = []
        if not self._started:
            self._start(end.request_id, end.target)
            events.append(self._event(_Delta("assistant", end.content or ""), None))
        if not self._finished:
            events.append(self._event(_Delta(), end.finish_reason or "stop"))
        if self._include_usage:
            chunk = _ChatCompletionChunk(
                self._id, "chat.completion.chunk", self._created, self._model, [], _usage(end.usage)
            )
            events.append(b"data: " + _ENCODER.encode(chunk) + b"\n\n")
        events.append(_DONE)
        return b"".join(events)

    @staticmethod
    def error(error: RequestError) -> bytes:
        """A failure after the stream started: an ``error`` event (then the stream ends)."""
        return b"data: " + error_body(error) + b"\n\n"


def _float32_base64(vector: list[float]) -> str:
    """A vector as ``encoding_format="base64"`` sends it: little-endian float32s."""
    packed = array.array("f", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def embeddings_body(reply: EmbedReply, requested_model: str, encoding: str) -> bytes:
    """A ``list`` of ``embedding`` objects."""
    as_base64 = encoding == "base64"
    data = [
        _Embedding("embedding", index, _float32_base64(vector) if as_base64 else vector)
        for index, vector in enumerate(reply.embeddings)
    ]
    tokens = reply.usage.prompt_tokens
    return _ENCODER.encode(
        _EmbeddingList(
            "list",
            data,
            answered_model(reply.target, requested_model),
            _EmbeddingUsage(tokens, tokens),
        )
    )


def models_body(models: list[tuple[str, str]]) -> bytes:
    """A ``list`` of ``model`` objects from (name, owner) pairs."""
    data = [_Model(name, "model", 0, owner) for name, owner in models]
    return _ENCODER.encode(_ModelList("list", data))


def model_body(name: str, owner: str) -> bytes:
    """One ``model`` object."""
    return _ENCODER.encode(_Model(name, "model", 0, owner))


def error_body(error: RequestError) -> bytes:
    """``{"error": {"message", "type", "code", "param"}}``; ``code`` is quotad's error code,
    ``param`` the field a ``bad_request`` names (``details["field"]``, on every door)."""
    param = error.details.get("field")
    detail = _ErrorDetail(
        message=error.message,
        type=ERROR_TYPES.get(error.code, "server_error"),
        code=error.code,
        param=param if isinstance(param, str) else None,
    )
    return _ENCODER.encode(_ErrorBody(detail))
