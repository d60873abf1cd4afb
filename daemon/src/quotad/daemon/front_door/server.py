"""The front door itself: the HTTP server of ``[http]``, its endpoints, who the caller is, the
``x-quotad-*`` headers, and every failure answered in the API's own shape (DESIGN §7).

Endpoints (each also without its ``/v1``, for base URLs given without it)::

    POST /v1/chat/completions   OpenAI chat, plain or SSE            errors: OpenAI shape
    POST /v1/embeddings         OpenAI embeddings                    errors: OpenAI shape
    GET  /v1/models[/NAME]      groups, then targets and bare models errors: OpenAI shape
                                (Anthropic's list shape when the request has anthropic-version)
    POST /v1/messages           Anthropic Messages, plain or SSE     errors: Anthropic shape
    GET  /metrics               Prometheus text, streamed (no key needed)
    GET  /healthz               200 {"status": "ok"}; 503 while draining, or while a listener
                                (this one, or the Unix socket's) cannot accept (no key needed)

Who calls: with ``auth = "keys"`` the key (``Authorization: Bearer KEY`` or ``x-api-key: KEY``)
names the app through ``app_for_key``, and ``x-quotad-app`` is ignored (a key cannot speak for
another app); with ``auth = "none"`` the app is ``x-quotad-app``, else :data:`DEFAULT_APP`.

Access before work: the HTTP core hands each request's head to :meth:`FrontDoor.authorize`
before any of its body is read, and a wrong path or method, a missing or unknown key, a bad
``x-quotad-*`` header or a daemon that is draining is answered then, the body never read.
Every answer that is an error carries ``x-quotad-request-id``: the pipeline's id (its ledger
row's) once the request reached it, else a new id from the same sequence, logged with what
was wrong; the core's own refusals (400, 408, 413, 431, ...) get one the same way.

Every request goes through the same :class:`~quotad.daemon.broker.Broker` as the Unix socket's,
so gates, cache, budgets, ledger and failover apply alike. A stream's response starts only once
the broker yields its first chunk, so that failures before it (unknown model, rate limit,
every target down) are answered with their HTTP status; failures after it end the stream with
an error event. A client that goes away cancels its broker call (the HTTP core cancels the
handler, or closes the stream it was reading).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, cast

import anyio
import anyio.abc
import msgspec

from quotad.daemon.broker import Broker
from quotad.daemon.caller import Caller
from quotad.daemon.config import Config, HttpConfig
from quotad.daemon.errors import RequestError
from quotad.daemon.front_door import anthropic, openai
from quotad.daemon.front_door.headers import RequestHeaders, apply_options, read_headers
from quotad.daemon.front_door.scrapes import SCRAPE_WRITE_STALL_S, Scrapes
from quotad.daemon.front_door.streams import StreamEncoder, stream_events
from quotad.daemon.front_door.wire import (
    COST_HEADER,
    JSON_CONTENT,
    SSE_HEADERS,
    CacheState,
    cost_header,
    decode_body,
    error_headers,
    http_status,
    plain_body,
    quotad_headers,
    request_id_header,
)
from quotad.daemon.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from quotad.daemon.net.addresses import is_loopback
from quotad.daemon.net.http11 import (
    Headers,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
    StreamingResponse,
    error_body,
)
from quotad.daemon.net.log_rate import LOGGED_EVERY, RepeatCounts
from quotad.daemon.request_limits import check_bounded_name
from quotad.daemon.request_memory import RequestMemory
from quotad.daemon.status import DAEMON_VERSION
from quotad.protocol.messages import (
    Chat,
    ChatChunk,
    ChatEnd,
    ChatReply,
    EmbedReply,
    StatusReply,
)

log = logging.getLogger("quotad.http")
_JSON = msgspec.json.Encoder()

AppForKey = Callable[[str], str | None]
"""The app an HTTP key belongs to, or None for a key that is unknown or revoked."""
OtherProblems = Callable[[], list[str]]
"""What else keeps the daemon from serving now (the Unix socket's accept failing, ledger rows
that cannot be written); empty when nothing does."""
Response = HttpResponse | StreamingResponse
Api = Literal["openai", "anthropic"]

DEFAULT_APP: Final = "anonymous"
"""The app of a request under ``auth = "none"`` that sends no ``x-quotad-app``."""
_MISSING_KEY: Final = (
    "missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY' "
    "(create one with: quotad keys create --app NAME)"
)


class HttpListenError(Exception):
    """The front door cannot listen on ``[http] listen``."""


@dataclass(frozen=True, slots=True)
class _Endpoint:
    name: str  # the metrics label
    method: str
    api: Api
    handler: Callable[[HttpRequest], Awaitable[Response]]
    needs_key: bool = True


def _limits(config: HttpConfig) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=int(config.max_header_kb * 1024),
        max_body_bytes=int(config.max_body_mb * 1024 * 1024),
        read_timeout_s=config.read_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
        max_connections=config.max_connections,
    )


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8787`` for IPv6) as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class FrontDoor:
    """The OpenAI- and Anthropic-compatible HTTP server in front of a broker."""

    def __init__(
        self,
        broker: Broker,
        config: HttpConfig,
        *,
        app_for_key: AppForKey,
        status: Callable[[], StatusReply] | None = None,
        other_problems: OtherProblems | None = None,
        request_memory: RequestMemory | None = None,
    ) -> None:
        """``request_memory``: the daemon-wide bound on request bytes held, shared with the
        Unix socket (a bound of its own when none is given)."""
        self.broker = broker
        self.metrics = broker.metrics
        self._app_for_key = app_for_key
        self._status = status or broker.reports.status
        self._scrapes = Scrapes()
        """``/metrics`` answers being written (at most :data:`~.scrapes.MAX_SCRAPES`)."""
        self._other_problems = other_problems or list
        self._keys = config.auth == "keys"
        self._host, port = parse_listen(config.listen)
        self.request_memory = request_memory or RequestMemory()
        """The bound on the bodies its connections buffer (:mod:`quotad.daemon.request_memory`)."""
        self.server = HttpServer(
            self.handle,
            host=self._host,
            port=port,
            limits=_limits(config),
            authorize=self.authorize,
            error_answer=self._refusal,
            request_memory=self.request_memory,
        )
        self._listen = config.listen
        api_endpoints = {
            "/chat/completions": _Endpoint(
                "chat_completions", "POST", "openai", self._chat_completions
            ),
            "/embeddings": _Endpoint("embeddings", "POST", "openai", self._embeddings),
            "/models": _Endpoint("models", "GET", "openai", self._models),
            "/messages": _Endpoint("messages", "POST", "anthropic", self._messages),
        }
        self._endpoints: dict[str, _Endpoint] = {}
        for path, endpoint in api_endpoints.items():
            self._endpoints["/v1" + path] = self._endpoints[path] = endpoint
        self._endpoints["/metrics"] = _Endpoint("metrics", "GET", "openai", self._metrics, False)
        self._endpoints["/healthz"] = _Endpoint("healthz", "GET", "openai", self._healthz, False)
        self._model = _Endpoint("models", "GET", "openai", self._model_by_name)
        self._unknown = _Endpoint("other", "", "openai", self._not_found, False)
        self._answers_logged: RepeatCounts[tuple[int, str]] = RepeatCounts()
        """Errors answered outside the pipeline so far, by status and code (see
        :meth:`_log_answer`)."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """``host:port`` it listens on (the bound port once :meth:`bind` has run)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.server.port}"

    async def bind(self) -> None:
        """Listen now, so that a busy or bad address stops the daemon at start."""
        try:
            await self.server.listen()
        except OSError as error:
            raise HttpListenError(
                f"cannot listen on {self._listen} ([http] listen): {error.strerror or error}"
            ) from None
        if not self._keys and not is_loopback(self._host):
            log.warning(
                "HTTP front door on %s with auth = none: anyone who reaches it can spend "
                "through it; use auth = keys",
                self.address,
            )

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until :meth:`shutdown`; reports the bound port."""
        await self.server.serve(task_status=task_status)

    async def shutdown(self, deadline_s: float) -> None:
        """Stop accepting; requests in flight get ``deadline_s`` to finish."""
        await self.server.shutdown(deadline_s)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config (SIGHUP): auth, limits (for new connections) and the cache
        mode at once; a new ``listen`` only when quotad restarts (warned)."""
        if config.http.listen != self._listen:
            log.warning(
                "reload: http.listen changed to %r; it takes effect when quotad restarts",
                config.http.listen,
            )
        self._keys = config.http.auth == "keys"
        self.server.limits = _limits(config.http)

    @property
    def problems(self) -> list[str]:
        """What keeps the daemon from serving new clients now: this listener's accept failing,
        and what ``other_problems`` tells of."""
        problems = [] if self.server.accept_problem is None else [self.server.accept_problem]
        return [f"http: {problem}" for problem in problems] + self._other_problems()

    # ------------------------------------------------------------------ dispatch

    def _endpoint(self, path: str) -> _Endpoint:
        endpoint = self._endpoints.get(path)
        if endpoint is None:
            is_model = path.startswith(("/v1/models/", "/models/"))
            endpoint = self._model if is_model else self._unknown
        return endpoint

    def authorize(self, request: HttpRequest) -> HttpResponse | None:
        """A request's head, before its body is read (the HTTP core's authorize hook): the
        answer when it is not to be served (wrong method or path, missing or unknown key, a
        bad ``x-quotad-*`` header, draining), else None; who calls is left in
        ``request.authorized`` for the handler."""
        endpoint = self._endpoint(request.path)
        refusal: HttpResponse | None = None
        if not _method_allowed(request, endpoint):
            refusal = self._method_not_allowed(request, endpoint)
        elif endpoint is self._unknown:
            refusal = self._not_found_answer(request)
        elif endpoint.needs_key:
            try:
                if self.server.closing:
                    raise _draining()
                headers = read_headers(request)
                headers.caller = self._caller(headers)
                request.authorized = headers
            except RequestError as error:
                refusal = self._error(endpoint.api, error)
        if refusal is not None:
            self.metrics.observe_http(endpoint.name, refusal.status)
        return refusal

    async def handle(self, request: HttpRequest) -> Response:
        """Answer one request (the HTTP core's handler)."""
        endpoint = self._endpoint(request.path)
        if not _method_allowed(request, endpoint):
            response: Response = self._method_not_allowed(request, endpoint)
        else:
            try:
                if self.server.closing and endpoint.name != "healthz":
                    raise _draining()
                response = await endpoint.handler(request)
            except RequestError as error:
                response = self._error(endpoint.api, error)
            except Exception:
                request_id = self.broker.request_ids.next()
                log.exception(
                    "internal error answering %s %s [%s]", request.method, request.path, request_id
                )
                internal = RequestError("internal", "internal error")
                internal.request_id = request_id
                response = self._error(endpoint.api, internal)
        self.metrics.observe_http(endpoint.name, response.status)
        return response

    def _error(self, api: Api, error: RequestError, status: int | None = None) -> HttpResponse:
        """The answer to a failed request in ``api``'s shape (``status``, else the error
        code's), with its request id (the pipeline's, else a new one, logged with what was
        wrong: see :meth:`_log_answer`)."""
        body = anthropic.error_body(error) if api == "anthropic" else openai.error_body(error)
        headers = error_headers(error)
        status = http_status(error) if status is None else status
        request_id = error.request_id
        if request_id is None:
            request_id = self.broker.request_ids.next()
            self._log_answer(status, error.code, request_id, error.message)
        headers.append(request_id_header(request_id))
        return HttpResponse(status, headers, body)

    def _log_answer(self, status: int, code: str, request_id: str, message: str) -> None:
        """Log an error answered outside the pipeline (no ledger row tells of it): the first
        of each status and code, then every :data:`~quotad.daemon.net.log_rate.LOG_EVERY`-th, with
        the count. Any local process may send them (a 404, a 401 need no key), thousands a
        second: 20,000 pipelined 404s wrote 20,000 lines."""
        if count := self._answers_logged.count((status, code)):
            log.info(
                "answered %d %s [%s]: %s (%d such so far; %s)",
                status,
                code,
                request_id,
                message,
                count,
                LOGGED_EVERY,
            )

    def _refusal(self, status: int, message: str) -> HttpResponse:
        """The HTTP core's own error answers (its error_answer hook): its JSON body, which
        both SDK families read, with a request id, logged with what was wrong as
        :meth:`_log_answer` does (the 503s to connections beyond ``max_connections``, or
        past the bound on request memory, in their own count instead)."""
        request_id = self.broker.request_ids.next()
        if status != 503:
            self._log_answer(status, "http", request_id, message)
        self.metrics.observe_http("other", status)
        headers: Headers = [JSON_CONTENT, request_id_header(request_id)]
        if status == 503:
            headers += [("retry-after", "1"), ("retry-after-ms", "1000")]
        return HttpResponse(status, headers, error_body(status, message))

    def _method_not_allowed(self, request: HttpRequest, endpoint: _Endpoint) -> HttpResponse:
        error = RequestError(
            "bad_request", f"{request.path} takes {endpoint.method}, not {request.method}"
        )
        response = self._error(endpoint.api, error, 405)
        response.headers.append(("allow", endpoint.method))
        return response

    def _not_found_answer(self, request: HttpRequest) -> HttpResponse:
        error = RequestError(
            "bad_request",
            f"no endpoint {request.method} {request.path}; quotad serves /v1/chat/completions, "
            "/v1/embeddings, /v1/models, /v1/messages, /metrics and /healthz",
        )
        return self._error("openai", error, 404)

    async def _not_found(self, request: HttpRequest) -> Response:
        return self._not_found_answer(request)

    # ------------------------------------------------------------------ who calls, and how

    def _who_calls(self, request: HttpRequest) -> tuple[RequestHeaders, Caller]:
        """The request's headers and who calls, as :meth:`authorize` found them (or now, for
        a request it did not see)."""
        headers = request.authorized
        if isinstance(headers, RequestHeaders) and headers.caller is not None:
            return headers, headers.caller
        headers = read_headers(request)
        return headers, self._caller(headers)

    def _caller(self, headers: RequestHeaders) -> Caller:
        """Who calls: the key's app (``auth = "keys"``) or ``x-quotad-app``; the key is
        checked before the ``x-quotad-*`` options are read."""
        if self._keys:
            if not headers.key:
                raise RequestError("unauthorized", _MISSING_KEY)
            app = self._app_for_key(headers.key)
            if app is None:
                raise RequestError("unauthorized", "invalid or revoked API key")
            headers.read_options(app=False)
        else:
            headers.read_options(app=True)
            app = headers.app or DEFAULT_APP
        return Caller(app=app, via="http")

    def _cache_state(self, answer: ChatReply | EmbedReply | ChatChunk, mode: str) -> CacheState:
        """``x-quotad-cache``: hit (exact), semantic (DESIGN §11), miss or bypass."""
        if answer.cached:
            semantic = not isinstance(answer, EmbedReply) and answer.cache == "semantic"
            return "semantic" if semantic else "hit"
        return "bypass" if not self.broker.reports.cache_enabled or mode == "bypass" else "miss"

    def _answer_headers(
        self, answer: ChatReply | EmbedReply | ChatChunk | ChatEnd, mode: str
    ) -> Headers:
        """The ``x-quotad-*`` headers an answer tells when it starts."""
        cache = self._cache_state(answer, mode)
        return quotad_headers(
            answer.request_id, answer.target, cache, answer.wait_s, answer.attempts
        )

    def _whole_answer(self, reply: ChatReply | EmbedReply, mode: str, body: bytes) -> HttpResponse:
        """A 200 with a whole JSON body: the ``x-quotad-*`` headers, its cost included."""
        headers = self._answer_headers(reply, mode)
        headers += (JSON_CONTENT, cost_header(reply.cost_usd))
        return HttpResponse(200, headers, body)

    # ------------------------------------------------------------------ OpenAI endpoints

    async def _chat_completions(self, request: HttpRequest) -> Response:
        headers, caller = self._who_calls(request)
        body = await decode_body(openai.CHAT_DECODER, plain_body(request))
        chat = openai.chat_request(body)
        apply_options(chat, headers)
        created = int(self.broker.clock.time())
        if chat.stream:
            encoder = openai.CompletionStream(chat.model, created, body.include_usage)
            return await self._stream(chat, caller, encoder)
        reply = await self.broker.chat(chat, caller)
        body_bytes = openai.completion_body(reply, chat.model, created)
        return self._whole_answer(reply, chat.cache, body_bytes)

    async def _embeddings(self, request: HttpRequest) -> Response:
        headers, caller = self._who_calls(request)
        body = await decode_body(openai.EMBEDDINGS_DECODER, plain_body(request))
        embed = openai.embed_request(body)
        apply_options(embed, headers)
        reply = await self.broker.embed(embed, caller)
        body_bytes = openai.embeddings_body(reply, embed.model, body.encoding_format)
        return self._whole_answer(reply, embed.cache, body_bytes)

    async def _models(self, request: HttpRequest) -> Response:
        self._who_calls(request)
        models = self.broker.reports.model_owners()
        if request.header("anthropic-version") is not None:
            body = anthropic.models_body([name for name, _ in models])
        else:
            body = openai.models_body(models)
        return HttpResponse(200, [JSON_CONTENT], body)

    async def _model_by_name(self, request: HttpRequest) -> Response:
        self._who_calls(request)
        prefix = "/v1/models/" if request.path.startswith("/v1/") else "/models/"
        name = urllib.parse.unquote(request.path.removeprefix(prefix))
        check_bounded_name("model", name)  # as a request's model: a target may be made of it
        owner = self.broker.reports.model_owner(name)  # else unknown_model, naming what exists
        return HttpResponse(200, [JSON_CONTENT], openai.model_body(name, owner))

    # ------------------------------------------------------------------ Anthropic endpoint

    async def _messages(self, request: HttpRequest) -> Response:
        headers, caller = self._who_calls(request)
        body = await decode_body(anthropic.MESSAGES_DECODER, plain_body(request))
        chat = anthropic.chat_request(body)
        apply_options(chat, headers)
        if chat.stream:
            return await self._stream(chat, caller, anthropic.MessageStream(chat.model))
        reply = await self.broker.chat(chat, caller)
        return self._whole_answer(reply, chat.cache, anthropic.message_body(reply, chat.model))

    # ------------------------------------------------------------------ streams

    async def _stream(
        self, chat: Chat, caller: Caller, encoder: StreamEncoder
    ) -> StreamingResponse:
        """Start the broker's stream; answer once its first chunk is in (see the module
        docstring), with the headers that chunk tells."""
        stream = cast(
            AsyncGenerator[ChatChunk | ChatEnd, None], self.broker.chat_stream(chat, caller)
        )
        try:
            first = await anext(stream)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        headers: Headers = [*SSE_HEADERS]
        headers += self._answer_headers(first, chat.cache)
        if isinstance(first, ChatEnd):  # a cache hit's replay: its cost is known now
            headers.append(cost_header(first.cost_usd))
            return StreamingResponse(200, headers, stream_events(stream, first, encoder, []))
        trailers: Headers = []  # the cost, once the stream has ended
        events = stream_events(stream, first, encoder, trailers)
        return StreamingResponse(200, headers, events, (COST_HEADER,), trailers)

    # ------------------------------------------------------------------ operations

    async def _metrics(self, request: HttpRequest) -> Response:
        """Streamed (chunked), a chunk at a time between turns of the event loop: the text at
        the metrics' bounds is megabytes (see :mod:`quotad.daemon.metrics`). At most
        :data:`~.scrapes.MAX_SCRAPES` at once: no key is needed, and each takes its share of
        the loop."""
        chunks = self._scrapes.start(self.metrics.chunks(self._status()))  # else overloaded
        headers = [("content-type", METRICS_CONTENT_TYPE)]
        return StreamingResponse(200, headers, chunks, write_stall_s=SCRAPE_WRITE_STALL_S)

    async def _healthz(self, request: HttpRequest) -> Response:
        if self.server.closing:
            return self._unhealthy({"status": "draining"})
        problems = self.problems
        if problems:
            return self._unhealthy({"status": "unhealthy", "problems": problems})
        body = b'{"status":"ok","version":"%s"}' % DAEMON_VERSION.encode()
        return HttpResponse(200, [JSON_CONTENT], body)

    def _unhealthy(self, state: dict[str, object]) -> HttpResponse:
        request_id = self.broker.request_ids.next()
        headers: Headers = [JSON_CONTENT, request_id_header(request_id)]
        return HttpResponse(503, headers, _JSON.encode(state))


def _method_allowed(request: HttpRequest, endpoint: _Endpoint) -> bool:
    method = request.method
    return endpoint.method in ("", method) or (method, endpoint.method) == ("HEAD", "GET")


def _draining() -> RequestError:
    return RequestError("overloaded", "quotad is shutting down; retry shortly", retry_after_s=1.0)
