"""The simulated provider itself: :class:`SimProvider`, an :class:`HttpServer` handler that
routes each request, checks its API key, admits it on the sim's limits (:mod:`.limits`),
waits its latency, injects faults, answers it through the wire-format modules
(:mod:`.openai`, :mod:`.anthropic`), counts and logs it (:mod:`.record`), and serves
``/sim/control`` and ``/sim/stats``; :meth:`SimProvider.serve` runs it in this process,
:func:`run_sim` as ``quotad sim``."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import msgspec

from quotad.daemon.net.http11 import (
    AbortConnection,
    HttpRequest,
    HttpResponse,
    HttpServer,
    StreamingResponse,
)
from quotad.daemon.sim.anthropic import (
    ANTHROPIC_MODELS,
    AnthropicRequest,
    anthropic_error_body,
    anthropic_events,
    anthropic_message_body,
    first_anthropic_tool,
    messages_request_decoder,
)
from quotad.daemon.sim.limits import SlidingWindowLog, limit_headers
from quotad.daemon.sim.openai import (
    OPENAI_MODELS,
    EmbeddingsRequest,
    OpenAIChatRequest,
    chat_request_decoder,
    embedding_inputs,
    embeddings_request_decoder,
    first_openai_tool,
    openai_chat_body,
    openai_chat_events,
    openai_embeddings_body,
    openai_error_body,
)
from quotad.daemon.sim.record import Arrival, RequestRecord
from quotad.daemon.sim.replies import (
    DEFAULT_MAX_TOKENS,
    Reply,
    compose_reply,
    message_text,
    utf8_bytes_of_strings,
    worst_case_prompt_tokens,
)
from quotad.daemon.sim.settings import CONTROL_FIELDS, SimControl, SimSettings
from quotad.daemon.tokens import estimate_prompt_tokens, estimate_text_tokens
from quotad.protocol.messages import ChatMessage

BREAK_AFTER_CHUNKS = 2
SHUTDOWN_DEADLINE_S = 1.0


_json = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(SimControl)

_JSON = ("content-type", "application/json")
_SSE = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
# path → (method, endpoint)
_ROUTES: dict[str, tuple[str, str]] = {}
for _prefix in ("/v1", ""):
    _ROUTES[f"{_prefix}/chat/completions"] = ("POST", "chat")
    _ROUTES[f"{_prefix}/embeddings"] = ("POST", "embeddings")
    _ROUTES[f"{_prefix}/models"] = ("GET", "models")
    _ROUTES[f"{_prefix}/messages"] = ("POST", "messages")


class SimProvider:
    """The simulated provider: an :class:`HttpServer` handler with limits, faults and stats."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.server = HttpServer(self.handle, host=settings.host, port=settings.port)
        self.window = SlidingWindowLog(settings.window_s)
        self._rng = random.Random(settings.seed)
        self._ids = itertools.count(1)
        self._requests = RequestRecord()
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
            self._requests.open_log(self.settings.log_path)
        try:
            await self.server.serve(task_status=task_status)
        finally:
            self._requests.close_log()

    async def shutdown(self, deadline_s: float = SHUTDOWN_DEADLINE_S) -> None:
        """Answer what is in flight (hanging requests are dropped), then stop."""
        if self._closing is not None:
            self._closing.set()
        await self.server.shutdown(deadline_s)

    def stats(self) -> dict[str, Any]:
        """The body of ``GET /sim/stats``."""
        return {
            **self._requests.stats(),
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
        if self.settings.log_bodies:
            arrival.body = request.body.decode(errors="replace")
        self._requests.arrived(path)
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
                return await self._chat(arrival, chat_request_decoder.decode(request.body))
            if endpoint == "messages":
                return await self._messages(arrival, messages_request_decoder.decode(request.body))
            if endpoint == "embeddings":
                return await self._embeddings(
                    arrival, embeddings_request_decoder.decode(request.body)
                )
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
        settings = self.settings
        return limit_headers(self.window, settings.rpm, settings.tpm, anthropic, now)

    async def _admit_and_wait(
        self, arrival: Arrival, anthropic: bool, streaming: bool
    ) -> HttpResponse | tuple[list[tuple[str, str]], bool]:
        """:meth:`_admit`, then :meth:`_delay_and_faults`: the 429 or the injected failure to
        answer, or the rate-limit headers and whether to break the stream."""
        admitted = self._admit(arrival, anthropic)
        if isinstance(admitted, HttpResponse):
            return admitted
        fault = await self._delay_and_faults(arrival, anthropic, admitted, streaming)
        if isinstance(fault, HttpResponse):
            return fault
        return admitted, fault

    async def _composed(
        self,
        arrival: Arrival,
        anthropic: bool,
        streaming: bool,
        messages: list[ChatMessage],
        tool: tuple[str, Any] | None,
        tokens: tuple[int, int],
    ) -> HttpResponse | tuple[list[tuple[str, str]], bool, Reply]:
        """A chat (for ``arrival.model``; ``tokens``: its prompt's and its max tokens) after
        :meth:`_admit_and_wait`: the rate-limit headers, whether to break the stream, and the
        reply; or the answer that stops it."""
        prompt_tokens, max_tokens = tokens
        arrival.tokens = prompt_tokens + max_tokens
        served = await self._admit_and_wait(arrival, anthropic, streaming)
        if isinstance(served, HttpResponse):
            return served
        number = next(self._ids)
        reply = compose_reply(number, arrival.model, messages, tool, max_tokens, prompt_tokens)
        return (*served, reply)

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
            self._requests.answered(arrival, 0, fault)
            if self._closing is not None:
                await self._closing.wait()
            raise AbortConnection
        if delay_ms > 0:
            await anyio.sleep(delay_ms / 1000)
        if fault == "reset":
            self._requests.answered(arrival, 0, fault)
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
        self._requests.answered(arrival, status, fault)
        if anthropic:
            body = anthropic_error_body(status, message)
        else:
            body = openai_error_body(status, message, code, openai_type)
        return HttpResponse(
            status, [_JSON, self._request_id_header(anthropic), *(headers or ())], body
        )

    def _request_id_header(self, anthropic: bool) -> tuple[str, str]:
        if anthropic:
            return ("request-id", f"req_sim{next(self._ids)}")
        return ("x-request-id", f"req_sim{next(self._ids)}")

    def _plain(
        self, arrival: Arrival, anthropic: bool, headers: list[tuple[str, str]], body: bytes
    ) -> HttpResponse:
        self._requests.answered(arrival, 200)
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
        self._requests.answered(arrival, 200, "break" if break_stream else "")
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
        arrival.model = request.model
        max_tokens = request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS
        if self.settings.count_tokens == "bytes":
            prompt_tokens = worst_case_prompt_tokens(request.messages, request.tools)
        else:
            prompt_tokens = estimate_prompt_tokens(request.messages, request.tools)
        tool = first_openai_tool(request.tools)
        composed = await self._composed(
            arrival, False, request.stream, request.messages, tool, (prompt_tokens, max_tokens)
        )
        if isinstance(composed, HttpResponse):
            return composed
        admitted, fault, reply = composed
        created, report = int(time.time()), self.settings.report_usage
        if not request.stream:
            return self._plain(arrival, False, admitted, openai_chat_body(reply, created, report))
        include_usage = request.stream_options is not None and request.stream_options.include_usage
        events = openai_chat_events(reply, created, include_usage, report)
        return self._streamed(arrival, False, admitted, events, fault)

    async def _messages(
        self, arrival: Arrival, request: AnthropicRequest
    ) -> HttpResponse | StreamingResponse:
        arrival.model = request.model
        if self.settings.count_tokens == "bytes":
            prompt_tokens = worst_case_prompt_tokens(
                request.messages, request.tools, request.system
            )
        else:
            prompt_tokens = estimate_prompt_tokens(request.messages, request.tools)
            if request.system:
                prompt_tokens += estimate_text_tokens(message_text(request.system))
        tool = first_anthropic_tool(request.tools)
        tokens = (prompt_tokens, request.max_tokens)
        composed = await self._composed(
            arrival, True, request.stream, request.messages, tool, tokens
        )
        if isinstance(composed, HttpResponse):
            return composed
        admitted, fault, reply = composed
        report = self.settings.report_usage
        if not request.stream:
            return self._plain(arrival, True, admitted, anthropic_message_body(reply, report))
        return self._streamed(arrival, True, admitted, anthropic_events(reply, report), fault)

    async def _embeddings(self, arrival: Arrival, request: EmbeddingsRequest) -> HttpResponse:
        arrival.model = request.model
        inputs = embedding_inputs(request.input)
        if inputs is None:
            message = "input: expected a string, strings or token arrays"
            return self._error(arrival, False, 400, message, "invalid_request")
        texts, arrival.tokens = inputs
        if self.settings.count_tokens == "bytes":
            arrival.tokens = max(arrival.tokens, utf8_bytes_of_strings(texts))
        served = await self._admit_and_wait(arrival, False, False)
        if isinstance(served, HttpResponse):
            return served
        admitted, _ = served
        body = openai_embeddings_body(request, texts, arrival.tokens, self.settings.report_usage)
        return self._plain(arrival, False, admitted, body)

    async def _models(self, arrival: Arrival, anthropic: bool) -> HttpResponse:
        headers = self._limit_headers(anthropic, arrival.mono)
        fault = await self._delay_and_faults(arrival, anthropic, headers, False)
        if isinstance(fault, HttpResponse):
            return fault
        return self._plain(
            arrival, anthropic, headers, ANTHROPIC_MODELS if anthropic else OPENAI_MODELS
        )


# --------------------------------------------------------------------------- entry points


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
