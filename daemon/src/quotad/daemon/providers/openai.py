"""The OpenAI wire format, spoken by OpenAI and by most other servers (Groq, Ollama, vLLM…).

Requests: ``POST {base_url}/chat/completions`` (plain, or streamed as server-sent events with
``stream_options.include_usage`` so that the usage arrives in a last chunk before
``[DONE]``), ``POST {base_url}/embeddings`` and ``GET {base_url}/models``. A server may
leave the usage out (one that ignores ``stream_options.include_usage``), or a count of it:
the answer says which it reported (``usage_reported``).

The protocol's messages are already OpenAI-shaped and go out as they are. Sampling parameters
are sent only when the request sets them; the request's ``extra`` is merged into the body last
(provider passthrough), but for the completion limit: ``max_tokens`` is the effective limit
the broker reserved for, and it is what is sent, whatever ``extra`` says. When ``extra`` spells
it ``max_completion_tokens`` (which OpenAI's reasoning models require) or
``max_output_tokens``, those are sent with that value; ``max_tokens`` is then left out beside
``max_completion_tokens``, since a server refuses both at once.
"""

from __future__ import annotations

import array
import base64
import sys
from typing import Any, Final

import msgspec

from quotad.daemon.providers.base import (
    NOTHING_REPORTED,
    ChatDelta,
    ChatResult,
    EmbedResult,
    ProviderError,
    UsageReported,
)
from quotad.daemon.providers.transport import ChatEventStream, HTTPProvider
from quotad.protocol.messages import Chat, TokenCount, Usage

ENCODER: Final = msgspec.json.Encoder()
OPTIONAL_FIELDS: Final = (
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
)
"""Fields of a :class:`~quotad.protocol.messages.Chat` sent under the same name, in this
order, only when the request sets them."""
TOKEN_LIMIT_NAMES: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""Spellings of the completion limit that ``extra`` may use; each is sent with the limit."""


# --------------------------------------------------------------------------- answers, typed


class _PromptTokensDetails(msgspec.Struct):
    cached_tokens: TokenCount | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: TokenCount | None = None
    completion_tokens: TokenCount | None = None
    prompt_tokens_details: _PromptTokensDetails | None = None

    def to_usage(self) -> Usage:
        details = self.prompt_tokens_details
        return Usage(
            prompt_tokens=self.prompt_tokens or 0,
            completion_tokens=self.completion_tokens or 0,
            cached_tokens=(details.cached_tokens or 0) if details else 0,
        )

    def reported(self) -> UsageReported:
        """Which counts it gives (an embedding's has no completion)."""
        return UsageReported(
            prompt=self.prompt_tokens is not None, completion=self.completion_tokens is not None
        )


def usage_of(usage: _Usage | None) -> tuple[Usage, UsageReported]:
    """An answer's usage, and which of its counts the server reported (it may leave ``usage``
    out, or a count of it: the counts it left out are 0)."""
    if usage is None:
        return Usage(), NOTHING_REPORTED
    return usage.to_usage(), usage.reported()


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Function(msgspec.Struct):
    """A tool call's ``function``: an object (its name and arguments are read where used)."""


class _ToolCallShape(msgspec.Struct):
    """What a tool call (or a streamed piece of one) must be to be passed on as it is: its
    ``index`` an integer (pieces are merged by it) and its ``function`` an object, where they
    are given. A string index or function was a TypeError or AttributeError where the pieces
    were merged or the answer translated: an internal error, not the provider's."""

    index: int | None = None
    function: _Function | None = None


def _tool_calls_problem(calls: list[dict[str, Any]] | None) -> str | None:
    """What is wrong with an answer's ``tool_calls`` (see :class:`_ToolCallShape`), if
    anything."""
    if not calls:
        return None
    try:
        msgspec.convert(calls, list[_ToolCallShape])
    except msgspec.ValidationError as error:
        return f"tool_calls: {error}"
    return None


class _Completion(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    index: int = 0
    finish_reason: str | None = None


class _StreamError(msgspec.Struct):
    message: str | None = None
    type: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: _StreamError | None = None


class _Embedding(msgspec.Struct):
    embedding: list[float] | str
    index: int = 0


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]
    usage: _Usage | None = None


class _Model(msgspec.Struct):
    id: str


class _Models(msgspec.Struct):
    data: list[_Model]


_COMPLETION: Final = msgspec.json.Decoder(_Completion)
_CHUNK: Final = msgspec.json.Decoder(_Chunk)
_EMBEDDINGS: Final = msgspec.json.Decoder(_Embeddings)
_MODELS: Final = msgspec.json.Decoder(_Models)
_DONE: Final = b"[DONE]"


def _float32_vector(encoded: str) -> list[float]:
    """An embedding sent with ``encoding_format="base64"``: little-endian float32s."""
    vector = array.array("f", base64.b64decode(encoded))
    if sys.byteorder == "big":
        vector.byteswap()
    return vector.tolist()


def chat_body(model: str, request: Chat, max_tokens: int, *, stream: bool) -> bytes:
    """The JSON body of a chat completion request."""
    body: dict[str, Any] = {"model": model, "messages": request.messages, "max_tokens": max_tokens}
    for name in OPTIONAL_FIELDS:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    extra = request.extra
    if extra:
        body.update(extra)
        # the limit is the one reserved for, whatever extra said, in each spelling it used
        # (but max_tokens beside max_completion_tokens, which a server refuses)
        for name in TOKEN_LIMIT_NAMES:
            if name in extra:
                body[name] = max_tokens
        if "max_completion_tokens" in extra:
            del body["max_tokens"]
        else:
            body["max_tokens"] = max_tokens
    return ENCODER.encode(body)


class OpenAIStream(ChatEventStream):
    """A streamed OpenAI chat completion (see :class:`ChatEventStream`); tool-call deltas are
    passed on as the server sends them (OpenAI shape, with ``index``)."""

    END_EVENT = "[DONE]"

    def on_event(self, data: bytes) -> ChatDelta | None:
        if data == _DONE:
            self.ended = True
            return None
        chunk = self.decoded(_CHUNK, data, "stream chunk")
        if chunk.error is not None:
            raise ProviderError(
                "stream_broken",
                self.http.redact(
                    f"the stream reported an error: {chunk.error.message or chunk.error.type}"
                ),
                rate_limits=self.rate_limits,
                body=self.http.redacted_body(data),
            )
        if chunk.usage is not None:  # the last chunk's (a server may send it with each)
            self.usage, self.usage_reported = usage_of(chunk.usage)
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if (problem := _tool_calls_problem(delta.tool_calls)) is not None:
                raise self.http.protocol_failure(f"stream chunk: {problem}", self.rate_limits, data)
            if delta.content or delta.tool_calls or choice.finish_reason is not None:
                return ChatDelta(
                    delta=delta.content or "",
                    tool_calls=delta.tool_calls,
                    finish_reason=choice.finish_reason,
                )
        return None


class OpenAIProvider(HTTPProvider):
    """One account at an OpenAI-compatible server."""

    kind = "openai"
    ENDPOINTS = ("/chat/completions", "/embeddings", "/models")

    @staticmethod
    def own_headers(api_key: str | None) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return headers

    async def chat(self, model: str, request: Chat, max_tokens: int) -> ChatResult:
        """One chat completion, answered whole."""
        body = chat_body(model, request, max_tokens, stream=False)
        reply = await self._http.request("POST", self._urls["/chat/completions"], body)
        completion = self._http.decode(_COMPLETION, reply)
        if not completion.choices:
            raise self._http.protocol_failure("no choices", reply.rate_limits, reply.content)
        choice = completion.choices[0]
        if (problem := _tool_calls_problem(choice.message.tool_calls)) is not None:
            raise self._http.protocol_failure(problem, reply.rate_limits, reply.content)
        usage, reported = usage_of(completion.usage)
        return ChatResult(
            content=choice.message.content,
            tool_calls=choice.message.tool_calls,
            finish_reason=choice.finish_reason,
            usage=usage,
            usage_reported=reported,
            rate_limits=reply.rate_limits,
        )

    async def open_stream(self, model: str, request: Chat, max_tokens: int) -> OpenAIStream:
        """Start a streamed chat completion; returns once the server has accepted it."""
        body = chat_body(model, request, max_tokens, stream=True)
        response, rate_limits = await self._http.open_stream(self._urls["/chat/completions"], body)
        return OpenAIStream(self._http, response, rate_limits)

    async def embed(
        self, model: str, inputs: list[str], dimensions: int | None, extra: dict[str, Any]
    ) -> EmbedResult:
        """Embeddings of ``inputs``, in input order."""
        request: dict[str, Any] = {"model": model, "input": inputs}
        if dimensions is not None:
            request["dimensions"] = dimensions
        request.update(extra)
        reply = await self._http.request("POST", self._urls["/embeddings"], ENCODER.encode(request))
        answer = self._http.decode(_EMBEDDINGS, reply)
        try:
            embeddings = [
                _float32_vector(item.embedding)
                if isinstance(item.embedding, str)
                else item.embedding
                for item in sorted(answer.data, key=lambda item: item.index)
            ]
        except ValueError as error:  # a bad base64 vector (binascii.Error)
            raise self._http.protocol_failure(str(error), reply.rate_limits) from None
        if len(embeddings) != len(inputs):
            raise self._http.protocol_failure(
                f"{len(embeddings)} embeddings for {len(inputs)} inputs", reply.rate_limits
            )
        usage, reported = usage_of(answer.usage)
        return EmbedResult(
            embeddings=embeddings,
            usage=usage,
            usage_reported=reported,
            rate_limits=reply.rate_limits,
        )

    async def list_models(self) -> list[str]:
        """The model names the server lists."""
        reply = await self._http.request("GET", self._urls["/models"])
        return [model.id for model in self._http.decode(_MODELS, reply).data]

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()
