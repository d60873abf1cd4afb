"""``quotad sim``: a simulated LLM provider for tests, benchmarks and the demo.

It speaks the OpenAI wire format (``POST /v1/chat/completions`` plain and SSE, ``POST
/v1/embeddings``, ``GET /v1/models``) and the Anthropic one (``POST /v1/messages`` plain and
SSE; ``GET /v1/models`` in Anthropic's shape when the request has ``anthropic-version``), each
also without the ``/v1`` prefix. Any model name is accepted. Answers are deterministic:
``sim reply to: <first words of the last user message>`` padded to 16 words, cut to
``max_tokens`` words (then finish_reason ``length`` / stop_reason ``max_tokens``); one word is
one completion token; prompt tokens are :mod:`quotad.daemon.tokens` estimates. A request with
``tools`` whose last user message has the word "tool" is answered with one call to the first
tool. Embeddings are unit vectors drawn from a hash of the input (8 dimensions unless
``dimensions``). Errors come in each API's own body shape. With ``api_key`` set, a request
needs it as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``; otherwise a 401 quotes the key
it got, as some servers do (so tests see that quotad keeps keys out of what it reports).

Its own limits are an exact sliding-window log: ``rpm`` requests and ``tpm`` tokens per
``window_s`` (0: unlimited), tokens counted at arrival as estimated prompt + ``max_tokens``
(16 when absent), as OpenAI counts. Over a limit: 429 with ``retry-after`` (+ ``-ms``),
nothing admitted. Answers carry OpenAI's ``x-ratelimit-*`` headers or Anthropic's
``anthropic-ratelimit-*`` ones (the single token limit is reported under the ``tokens``,
``input-tokens`` and ``output-tokens`` names), for the limits that are set; a reset is the time
until the oldest admission leaves the window. Failed requests count, as they do at OpenAI.

Each answer waits ``latency_ms`` ± ``jitter_ms``; streams wait ``chunk_delay_ms`` between
chunks. Faults, drawn per request from a seeded RNG: ``fail_rate`` → 500, ``hang_rate`` → no
answer until the client leaves, ``reset_rate`` → TCP reset, ``break_stream_rate`` → a stream
cut after two chunks. Faults and latency apply to ``/models`` too (health checks see them).

Control: ``POST /sim/control`` with any of :data:`CONTROL_FIELDS` changes them live and
answers the settings; ``GET /sim/stats`` answers the counts and the most requests and tokens
admitted in any ``window_s`` window so far. ``--log FILE`` appends one JSON line per request
(``t``, ``mono`` at arrival, ``path``, ``model``, ``status`` (0: no answer), ``tokens``,
``app`` from ``x-quotad-app``, and ``fault`` when one was injected).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import math
import os
import random
import re
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
import anyio.abc
import msgspec

from quotad.daemon.http11 import (
    AbortConnection,
    HttpRequest,
    HttpResponse,
    HttpServer,
    StreamingResponse,
)
from quotad.daemon.tokens import estimate_prompt_tokens, estimate_text_tokens
from quotad.protocol.messages import ChatMessage

REPLY_WORDS = 16
DEFAULT_MAX_TOKENS = 16
DEFAULT_EMBEDDING_DIMENSIONS = 8
BREAK_AFTER_CHUNKS = 2
SHUTDOWN_DEADLINE_S = 1.0
SIM_MODELS = ("sim-small", "sim-large", "sim-embed")
FILLER_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
CONTROL_FIELDS = (
    "latency_ms",
    "jitter_ms",
    "fail_rate",
    "hang_rate",
    "reset_rate",
    "break_stream_rate",
    "chunk_delay_ms",
    "rpm",
    "tpm",
    "window_s",
)


@dataclass(slots=True)
class SimSettings:
    """Everything ``quotad sim`` is told on its command line; :data:`CONTROL_FIELDS` of it
    can change while it runs."""

    host: str = "127.0.0.1"
    port: int = 0
    rpm: int = 0
    tpm: int = 0
    window_s: float = 60.0
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    fail_rate: float = 0.0
    hang_rate: float = 0.0
    reset_rate: float = 0.0
    break_stream_rate: float = 0.0
    chunk_delay_ms: float = 0.0
    api_key: str = ""
    log_path: str = ""
    seed: int | None = None


# --------------------------------------------------------------------------- wire shapes

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Messages = Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]


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


class AnthropicRequest(msgspec.Struct, kw_only=True):
    model: str
    max_tokens: PositiveInt
    messages: Messages
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    model: str
    input: str | list[Any]
    dimensions: Annotated[int, msgspec.Meta(ge=1, le=8192)] | None = None
    encoding_format: Literal["float", "base64"] = "float"


class SimControl(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /sim/control``: the settings to change."""

    latency_ms: NonNegative | None = None
    jitter_ms: NonNegative | None = None
    fail_rate: Fraction | None = None
    hang_rate: Fraction | None = None
    reset_rate: Fraction | None = None
    break_stream_rate: Fraction | None = None
    chunk_delay_ms: NonNegative | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    window_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class LogLine(msgspec.Struct, omit_defaults=True):
    t: float
    mono: float
    path: str
    model: str
    status: int
    tokens: int
    app: str | None
    fault: str = ""


_json = msgspec.json.Encoder()
_chat_decoder = msgspec.json.Decoder(OpenAIChatRequest)
_messages_decoder = msgspec.json.Decoder(AnthropicRequest)
_embeddings_decoder = msgspec.json.Decoder(EmbeddingsRequest)
_control_decoder = msgspec.json.Decoder(SimControl)

_JSON = ("content-type", "application/json")
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_TOOL_WORD = re.compile(r"\btool\b", re.IGNORECASE)
_SAMPLE_BY_TYPE: dict[str, Any] = {
    "string": "sim",
    "integer": 1,
    "number": 1.0,
    "boolean": True,
    "array": [],
    "object": {},
}
_OPENAI_MODELS = _json.encode(
    {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "quotad-sim"} for m in SIM_MODELS
        ],
    }
)
_ANTHROPIC_MODELS = _json.encode(
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
# path → (method, endpoint)
_ROUTES: dict[str, tuple[str, str]] = {}
for _prefix in ("/v1", ""):
    _ROUTES[f"{_prefix}/chat/completions"] = ("POST", "chat")
    _ROUTES[f"{_prefix}/embeddings"] = ("POST", "embeddings")
    _ROUTES[f"{_prefix}/models"] = ("GET", "models")
    _ROUTES[f"{_prefix}/messages"] = ("POST", "messages")


# --------------------------------------------------------------------------- limits


class SlidingWindowLog:
    """Exact sliding-window log of admissions (arrival time, tokens): an admission at ``t``
    counts in every window ``(now - window_s, now]`` that holds ``t``. Also keeps the most
    requests and tokens ever seen together in one window."""

    __slots__ = ("_times", "_tokens", "most_requests", "most_tokens", "tokens", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._tokens: deque[int] = deque()
        self.tokens = 0
        self.most_requests = 0
        self.most_tokens = 0

    @property
    def requests(self) -> int:
        """Admissions in the window (as of the last :meth:`evict`)."""
        return len(self._times)

    def evict(self, now: float) -> None:
        """Forget admissions that have left the window ending at ``now``."""
        times, horizon = self._times, now - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
            self.tokens -= self._tokens.popleft()

    def try_admit(
        self, now: float, tokens: int, max_requests: int, max_tokens: int
    ) -> tuple[str, float]:
        """Admit ``tokens`` at ``now`` unless that would pass a limit (0: no limit). Returns
        ``("", 0.0)`` when admitted, else the limit in the way (``requests``, ``tokens``, or
        ``too_large`` when ``tokens`` alone pass ``max_tokens``) and the seconds until the
        request would fit."""
        self.evict(now)
        if max_requests and len(self._times) >= max_requests:
            return "requests", self.room_in(now, max_requests)
        if max_tokens and self.tokens + tokens > max_tokens:
            if tokens > max_tokens:
                return "too_large", self.window_s
            return "tokens", self.fits_in(now, tokens, max_tokens)
        self.admit(now, tokens)
        return "", 0.0

    def admit(self, now: float, tokens: int) -> None:
        """Record an admission (call :meth:`evict` first)."""
        self._times.append(now)
        self._tokens.append(tokens)
        self.tokens += tokens
        self.most_requests = max(self.most_requests, len(self._times))
        self.most_tokens = max(self.most_tokens, self.tokens)

    def oldest_leaves_in(self, now: float) -> float:
        """Seconds until the oldest admission leaves the window (0 when it is empty)."""
        return self._times[0] + self.window_s - now if self._times else 0.0

    def room_in(self, now: float, max_requests: int) -> float:
        """Seconds until one more request fits under ``max_requests``: until enough of the
        oldest admissions have left (more than one when the limit was lowered live)."""
        must_leave = len(self._times) - max_requests  # index of the last one that must go
        if must_leave < 0:
            return 0.0
        return self._times[must_leave] + self.window_s - now

    def fits_in(self, now: float, tokens: int, limit: int) -> float:
        """Seconds until ``tokens`` more fit under ``limit`` (``tokens <= limit``)."""
        excess = self.tokens + tokens - limit
        for admitted_at, admitted_tokens in zip(self._times, self._tokens, strict=True):
            excess -= admitted_tokens
            if excess <= 0:
                return admitted_at + self.window_s - now
        return 0.0


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    millis = max(0, math.ceil(seconds * 1000))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis // 1000}.{millis % 1000:03d}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rfc3339(epoch_s: float) -> str:
    """A UTC timestamp as Anthropic writes it (millisecond precision)."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# --------------------------------------------------------------------------- content


def message_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a message's content (its text parts joined)."""
    if content is None or isinstance(content, str):
        return content or ""
    return " ".join(part["text"] for part in content if isinstance(part.get("text"), str))


def last_user_text(messages: list[ChatMessage]) -> str:
    """The text of the last user message ("" when there is none)."""
    for message in reversed(messages):
        if message.role == "user":
            return message_text(message.content)
    return ""


def reply_words(prompt: str, max_tokens: int) -> tuple[list[str], bool]:
    """The deterministic reply, one word per token, and whether max_tokens cut it."""
    words = ["sim", "reply", "to:", *prompt.split()[:REPLY_WORDS]][:REPLY_WORDS]
    words.extend(itertools.islice(itertools.cycle(FILLER_WORDS), REPLY_WORDS - len(words)))
    if max_tokens < REPLY_WORDS:
        return words[:max_tokens], True
    return words, False


def sample_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool call: one sample value per property of its JSON schema."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    return {
        name: _SAMPLE_BY_TYPE.get(str(spec.get("type")) if isinstance(spec, dict) else "", "sim")
        for name, spec in properties.items()
    }


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector drawn from a hash of ``text``: the same input, the same vector."""
    digest = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = struct.unpack(f"<{dimensions}h", digest)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


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


def sse(data: Any) -> bytes:
    """One OpenAI server-sent event."""
    return b"data: " + _json.encode(data) + b"\n\n"


def anthropic_sse(data: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event (named after its ``type``)."""
    event: str = data["type"]
    return b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"


# --------------------------------------------------------------------------- replies


class Reply(msgspec.Struct, kw_only=True):
    """What the sim answers a chat, before a wire format shapes it: words of text (one token
    each, ``cut`` when max_tokens stopped them) or one call of ``tool_name``."""

    number: int
    model: str
    prompt_tokens: int
    words: list[str] = []
    cut: bool = False
    tool_name: str = ""
    tool_arguments: dict[str, Any] = {}

    @property
    def arguments_json(self) -> str:
        """The tool call's arguments as JSON text."""
        return _json.encode(self.tool_arguments).decode()

    @property
    def completion_tokens(self) -> int:
        """Tokens of the answer: its words, or the call's estimate."""
        if self.tool_name:
            return estimate_text_tokens(self.tool_name + self.arguments_json)
        return len(self.words)


def compose_reply(
    number: int,
    model: str,
    messages: list[ChatMessage],
    tool: tuple[str, Any] | None,
    max_tokens: int,
    prompt_tokens: int,
) -> Reply:
    """The deterministic answer to ``messages``: a call of ``tool`` (name, JSON schema) when
    the last user message asks for a "tool", else the reply words."""
    prompt = last_user_text(messages)
    if tool is not None and _TOOL_WORD.search(prompt):
        name, schema = tool
        return Reply(
            number=number,
            model=model,
            prompt_tokens=prompt_tokens,
            tool_name=name,
            tool_arguments=sample_arguments(schema),
        )
    words, cut = reply_words(prompt, max_tokens)
    return Reply(number=number, model=model, prompt_tokens=prompt_tokens, words=words, cut=cut)


def openai_usage(reply: Reply) -> dict[str, int]:
    completion = reply.completion_tokens
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + completion,
    }


def openai_chat_body(reply: Reply, created: int) -> bytes:
    """A ``chat.completion`` object."""
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
    return _json.encode(
        {
            "id": f"chatcmpl-sim{reply.number}",
            "object": "chat.completion",
            "created": created,
            "model": reply.model,
            "choices": [choice],
            "usage": openai_usage(reply),
        }
    )


def openai_chat_events(reply: Reply, created: int, include_usage: bool) -> list[bytes]:
    """The SSE events of a streamed chat completion, ``data: [DONE]`` last."""
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
        events.append(sse({**base, "choices": [], "usage": openai_usage(reply)}))
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic_message(reply: Reply) -> dict[str, Any]:
    """A Messages API ``message`` object."""
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
    return {
        "id": f"msg_sim{reply.number}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
    }


def anthropic_events(reply: Reply) -> list[bytes]:
    """The SSE events of a streamed message: message_start, content_block_start, deltas,
    content_block_stop, message_delta, message_stop."""
    message = anthropic_message(reply)
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
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 1},
    }
    return [
        anthropic_sse({"type": "message_start", "message": start}),
        anthropic_sse({"type": "content_block_start", "index": 0, "content_block": start_block}),
        *(
            anthropic_sse({"type": "content_block_delta", "index": 0, "delta": delta})
            for delta in deltas
        ),
        anthropic_sse({"type": "content_block_stop", "index": 0}),
        anthropic_sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": reply.completion_tokens},
            }
        ),
        anthropic_sse({"type": "message_stop"}),
    ]


def first_openai_tool(tools: Iterable[dict[str, Any]] | None) -> tuple[str, Any] | None:
    """Name and parameter schema of the first tool of an OpenAI request, if it is a function."""
    for tool in tools or ():
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"], function.get("parameters")
        return None
    return None


def first_anthropic_tool(tools: Iterable[dict[str, Any]] | None) -> tuple[str, Any] | None:
    """Name and input schema of the first tool of an Anthropic request."""
    for tool in tools or ():
        if isinstance(tool.get("name"), str):
            return tool["name"], tool.get("input_schema")
        return None
    return None


# --------------------------------------------------------------------------- the provider


class Arrival(msgspec.Struct):
    """What is known of a request when it arrives."""

    t: float
    mono: float
    path: str
    app: str | None
    model: str = ""
    tokens: int = 0


class SimProvider:
    """The simulated provider: an :class:`HttpServer` handler with limits, faults and stats."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.server = HttpServer(self.handle, host=settings.host, port=settings.port)
        self.window = SlidingWindowLog(settings.window_s)
        self._rng = random.Random(settings.seed)
        self._ids = itertools.count(1)
        self._counts = {"requests": 0, "ok": 0, "rate_limited": 0, "failed": 0, "client_errors": 0}
        self._by_path: dict[str, int] = {}
        self._log_fd = -1
        self._closing: anyio.Event | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown` or cancellation; reports the bound port."""
        self._closing = anyio.Event()
        if self.settings.log_path:
            self._log_fd = os.open(
                self.settings.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
            )
        try:
            await self.server.serve(task_status=task_status)
        finally:
            if self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1

    async def shutdown(self, deadline_s: float = SHUTDOWN_DEADLINE_S) -> None:
        """Answer what is in flight (hanging requests are dropped), then stop."""
        if self._closing is not None:
            self._closing.set()
        await self.server.shutdown(deadline_s)

    def stats(self) -> dict[str, Any]:
        """The body of ``GET /sim/stats``."""
        return {
            **self._counts,
            "by_path": dict(self._by_path),
            "max_in_window_requests": self.window.most_requests,
            "max_in_window_tokens": self.window.most_tokens,
        }

    def control(self, changes: SimControl) -> dict[str, Any]:
        """Apply ``changes``; the settings after them (without the API key)."""
        for name in CONTROL_FIELDS:
            value = getattr(changes, name)
            if value is not None:
                setattr(self.settings, name, value)
        self.window.window_s = self.settings.window_s
        return {k: v for k, v in dataclasses.asdict(self.settings).items() if k != "api_key"}

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: HttpRequest) -> HttpResponse | StreamingResponse:
        """Answer one HTTP request."""
        path = request.path
        if path.startswith("/sim/"):
            return self._handle_sim(request)
        arrival = Arrival(time.time(), time.monotonic(), path, request.header("x-quotad-app"))
        self._counts["requests"] += 1
        self._by_path[path] = self._by_path.get(path, 0) + 1
        route = _ROUTES.get(path)
        anthropic = path.endswith("/messages") or (
            route is not None
            and route[1] == "models"
            and request.header("anthropic-version") is not None
        )
        if route is None:
            return self._error(arrival, anthropic, 404, f"no such endpoint: {path}", "not_found")
        method, endpoint = route
        if request.method != method:
            return self._error(
                arrival,
                anthropic,
                405,
                f"{path} takes {method}, not {request.method}",
                "method_not_allowed",
            )
        if self.settings.api_key and not self._authorized(request):
            presented = request.header("x-api-key") or request.header("authorization") or ""
            presented = presented.removeprefix("Bearer ")
            message = f"invalid API key: {presented!r}"  # quoted back, as some servers do
            return self._error(arrival, anthropic, 401, message, "invalid_api_key")
        try:
            if endpoint == "chat":
                return await self._chat(arrival, _chat_decoder.decode(request.body))
            if endpoint == "messages":
                return await self._messages(arrival, _messages_decoder.decode(request.body))
            if endpoint == "embeddings":
                return await self._embeddings(arrival, _embeddings_decoder.decode(request.body))
        except msgspec.ValidationError as error:
            return self._error(arrival, anthropic, 400, str(error), "invalid_request")
        except msgspec.DecodeError as error:
            return self._error(arrival, anthropic, 400, f"invalid JSON: {error}", "invalid_json")
        return await self._models(arrival, anthropic)

    def _authorized(self, request: HttpRequest) -> bool:
        """The key as ``Authorization: Bearer KEY`` or as ``x-api-key: KEY`` (the Anthropic
        SDK sends either, depending on its version), on any endpoint."""
        key = self.settings.api_key
        return (
            request.header("authorization") == f"Bearer {key}" or request.header("x-api-key") == key
        )

    def _handle_sim(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/sim/stats" and request.method == "GET":
            return HttpResponse(200, [_JSON], _json.encode(self.stats()))
        if request.path == "/sim/control" and request.method == "POST":
            try:
                changes = _control_decoder.decode(request.body)
            except msgspec.DecodeError as error:  # ValidationError is a DecodeError
                return HttpResponse(400, [_JSON], _json.encode({"error": str(error)}))
            return HttpResponse(200, [_JSON], _json.encode(self.control(changes)))
        return HttpResponse(404, [_JSON], _json.encode({"error": f"no {request.path}"}))

    # ------------------------------------------------------------------ the pipeline

    def _admit(self, arrival: Arrival, anthropic: bool) -> HttpResponse | list[tuple[str, str]]:
        """Admit the request on the limits (its rate-limit headers), or the 429 answer."""
        settings, now = self.settings, arrival.mono
        limit, wait_s = self.window.try_admit(now, arrival.tokens, settings.rpm, settings.tpm)
        headers = self._limit_headers(anthropic, now)
        if not limit:
            return headers
        if limit == "requests":
            message = f"rate limit reached: {settings.rpm} requests per {settings.window_s:g} s"
        elif limit == "tokens":
            message = f"rate limit reached: {settings.tpm} tokens per {settings.window_s:g} s"
        else:
            message = f"request too large: {arrival.tokens} tokens > {settings.tpm} per window"
        headers.append(("retry-after", str(max(1, math.ceil(wait_s)))))
        headers.append(("retry-after-ms", str(max(1, math.ceil(wait_s * 1000)))))
        return self._error(
            arrival,
            anthropic,
            429,
            message,
            "rate_limit_exceeded",
            headers,
            openai_type="requests" if limit == "requests" else "tokens",
        )

    def _limit_headers(self, anthropic: bool, now: float) -> list[tuple[str, str]]:
        settings, window = self.settings, self.window
        headers: list[tuple[str, str]] = []
        reset_s = window.oldest_leaves_in(now)
        if anthropic:
            reset = rfc3339(time.time() + reset_s)
            if settings.rpm:
                remaining = max(0, settings.rpm - window.requests)
                headers += [
                    ("anthropic-ratelimit-requests-limit", str(settings.rpm)),
                    ("anthropic-ratelimit-requests-remaining", str(remaining)),
                    ("anthropic-ratelimit-requests-reset", reset),
                ]
            if settings.tpm:
                remaining = max(0, settings.tpm - window.tokens)
                for kind in ("tokens", "input-tokens", "output-tokens"):
                    headers += [
                        (f"anthropic-ratelimit-{kind}-limit", str(settings.tpm)),
                        (f"anthropic-ratelimit-{kind}-remaining", str(remaining)),
                        (f"anthropic-ratelimit-{kind}-reset", reset),
                    ]
            return headers
        reset = go_duration(reset_s)
        if settings.rpm:
            headers += [
                ("x-ratelimit-limit-requests", str(settings.rpm)),
                ("x-ratelimit-remaining-requests", str(max(0, settings.rpm - window.requests))),
                ("x-ratelimit-reset-requests", reset),
            ]
        if settings.tpm:
            headers += [
                ("x-ratelimit-limit-tokens", str(settings.tpm)),
                ("x-ratelimit-remaining-tokens", str(max(0, settings.tpm - window.tokens))),
                ("x-ratelimit-reset-tokens", reset),
            ]
        return headers

    async def _delay_and_faults(
        self, arrival: Arrival, anthropic: bool, headers: list[tuple[str, str]], streaming: bool
    ) -> HttpResponse | bool:
        """Wait the latency, then inject a fault: the 500 answer, or whether to break the
        stream (hangs and resets raise :class:`AbortConnection`)."""
        settings, rng = self.settings, self._rng
        fault = ""
        if settings.fail_rate and rng.random() < settings.fail_rate:
            fault = "fail"
        elif settings.hang_rate and rng.random() < settings.hang_rate:
            fault = "hang"
        elif settings.reset_rate and rng.random() < settings.reset_rate:
            fault = "reset"
        elif streaming and settings.break_stream_rate and rng.random() < settings.break_stream_rate:
            fault = "break"
        delay_ms = settings.latency_ms
        if settings.jitter_ms:
            delay_ms = max(
                0.0, rng.uniform(delay_ms - settings.jitter_ms, delay_ms + settings.jitter_ms)
            )
        if fault == "hang":
            self._record(arrival, 0, fault)
            if self._closing is not None:
                await self._closing.wait()
            raise AbortConnection
        if delay_ms > 0:
            await anyio.sleep(delay_ms / 1000)
        if fault == "reset":
            self._record(arrival, 0, fault)
            raise AbortConnection(reset=True)
        if fault == "fail":
            return self._error(
                arrival,
                anthropic,
                500,
                "simulated server failure",
                "sim_failure",
                headers,
                fault=fault,
            )
        return fault == "break"

    def _error(
        self,
        arrival: Arrival,
        anthropic: bool,
        status: int,
        message: str,
        code: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        fault: str = "",
        openai_type: str = "",
    ) -> HttpResponse:
        """An error answer in the API's own shape (recorded). OpenAI's ``type`` is
        ``openai_type`` when given (429s name the limit: ``requests`` or ``tokens``)."""
        self._record(arrival, status, fault)
        if anthropic:
            kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
            body = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            kind = openai_type or _OPENAI_ERROR_TYPES.get(status, "invalid_request_error")
            body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        return HttpResponse(
            status,
            [_JSON, self._request_id_header(anthropic), *(headers or ())],
            _json.encode(body),
        )

    def _request_id_header(self, anthropic: bool) -> tuple[str, str]:
        if anthropic:
            return ("request-id", f"req_sim{next(self._ids)}")
        return ("x-request-id", f"req_sim{next(self._ids)}")

    def _record(self, arrival: Arrival, status: int, fault: str = "") -> None:
        counts = self._counts
        if fault:
            counts["failed"] += 1
        elif status == 200:
            counts["ok"] += 1
        elif status == 429:
            counts["rate_limited"] += 1
        else:
            counts["client_errors"] += 1
        if self._log_fd >= 0:
            line = LogLine(
                t=arrival.t,
                mono=arrival.mono,
                path=arrival.path,
                model=arrival.model,
                status=status,
                tokens=arrival.tokens,
                app=arrival.app,
                fault=fault,
            )
            os.write(self._log_fd, _json.encode(line) + b"\n")

    def _plain(
        self, arrival: Arrival, anthropic: bool, headers: list[tuple[str, str]], body: bytes
    ) -> HttpResponse:
        self._record(arrival, 200)
        headers += [self._request_id_header(anthropic), _JSON]
        return HttpResponse(200, headers, body)

    def _streamed(
        self,
        arrival: Arrival,
        anthropic: bool,
        headers: list[tuple[str, str]],
        events: list[bytes],
        break_stream: bool,
    ) -> StreamingResponse:
        self._record(arrival, 200, "break" if break_stream else "")
        headers += [self._request_id_header(anthropic), *_SSE]
        return StreamingResponse(200, headers, self._stream(events, break_stream))

    async def _stream(self, events: list[bytes], break_stream: bool) -> AsyncIterator[bytes]:
        delay_s = self.settings.chunk_delay_ms / 1000
        if delay_s <= 0 and not break_stream:
            yield b"".join(events)
            return
        for index, event in enumerate(events):
            if break_stream and index == BREAK_AFTER_CHUNKS:
                raise AbortConnection
            if index and delay_s > 0:
                await anyio.sleep(delay_s)
            yield event

    # ------------------------------------------------------------------ endpoints

    async def _chat(
        self, arrival: Arrival, request: OpenAIChatRequest
    ) -> HttpResponse | StreamingResponse:
        max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        prompt_tokens = estimate_prompt_tokens(request.messages, request.tools)
        arrival.model = request.model
        arrival.tokens = prompt_tokens + max_tokens
        admitted = self._admit(arrival, False)
        if isinstance(admitted, HttpResponse):
            return admitted
        fault = await self._delay_and_faults(arrival, False, admitted, request.stream)
        if isinstance(fault, HttpResponse):
            return fault
        tool = first_openai_tool(request.tools)
        reply = compose_reply(
            next(self._ids), request.model, request.messages, tool, max_tokens, prompt_tokens
        )
        created = int(time.time())
        if not request.stream:
            return self._plain(arrival, False, admitted, openai_chat_body(reply, created))
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        events = openai_chat_events(reply, created, include_usage)
        return self._streamed(arrival, False, admitted, events, fault)

    async def _messages(
        self, arrival: Arrival, request: AnthropicRequest
    ) -> HttpResponse | StreamingResponse:
        prompt_tokens = estimate_prompt_tokens(request.messages, request.tools)
        if request.system:
            prompt_tokens += estimate_text_tokens(message_text(request.system))
        arrival.model = request.model
        arrival.tokens = prompt_tokens + request.max_tokens
        admitted = self._admit(arrival, True)
        if isinstance(admitted, HttpResponse):
            return admitted
        fault = await self._delay_and_faults(arrival, True, admitted, request.stream)
        if isinstance(fault, HttpResponse):
            return fault
        tool = first_anthropic_tool(request.tools)
        reply = compose_reply(
            next(self._ids),
            request.model,
            request.messages,
            tool,
            request.max_tokens,
            prompt_tokens,
        )
        if not request.stream:
            return self._plain(arrival, True, admitted, _json.encode(anthropic_message(reply)))
        return self._streamed(arrival, True, admitted, anthropic_events(reply), fault)

    async def _embeddings(self, arrival: Arrival, request: EmbeddingsRequest) -> HttpResponse:
        arrival.model = request.model
        inputs = embedding_inputs(request.input)
        if inputs is None:
            message = "input: expected a string, strings or token arrays"
            return self._error(arrival, False, 400, message, "invalid_request")
        texts, arrival.tokens = inputs
        admitted = self._admit(arrival, False)
        if isinstance(admitted, HttpResponse):
            return admitted
        fault = await self._delay_and_faults(arrival, False, admitted, False)
        if isinstance(fault, HttpResponse):
            return fault
        dimensions = request.dimensions or DEFAULT_EMBEDDING_DIMENSIONS
        data = []
        for index, text in enumerate(texts):
            vector: list[float] | str = embedding(text, dimensions)
            if request.encoding_format == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        usage = {"prompt_tokens": arrival.tokens, "total_tokens": arrival.tokens}
        body = {"object": "list", "data": data, "model": request.model, "usage": usage}
        return self._plain(arrival, False, admitted, _json.encode(body))

    async def _models(self, arrival: Arrival, anthropic: bool) -> HttpResponse:
        headers = self._limit_headers(anthropic, arrival.mono)
        fault = await self._delay_and_faults(arrival, anthropic, headers, False)
        if isinstance(fault, HttpResponse):
            return fault
        return self._plain(
            arrival, anthropic, headers, _ANTHROPIC_MODELS if anthropic else _OPENAI_MODELS
        )


_OPENAI_ERROR_TYPES = {500: "server_error"}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
}


# --------------------------------------------------------------------------- entry points


async def serve_sim(
    settings: SimSettings, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Run a simulated provider in this process until cancelled; reports the bound port."""
    await SimProvider(settings).serve(task_status=task_status)


async def _serve_until_signalled(settings: SimSettings) -> None:
    sim = SimProvider(settings)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            port = await tg.start(sim.serve)
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            print(f"quotad sim listening on http://{host}:{port}", flush=True)
            async for _ in signals:
                break
            await sim.shutdown()


def run_sim(settings: SimSettings) -> int:
    """``quotad sim``: serve on asyncio + uvloop until SIGTERM or SIGINT; the exit code."""
    exit_code = 0
    try:
        anyio.run(
            _serve_until_signalled,
            settings,
            backend="asyncio",
            backend_options={"use_uvloop": True},
        )
    except* OSError as group:
        print(f"quotad sim: {group.exceptions[0]}", file=sys.stderr)
        exit_code = 1
    return exit_code
