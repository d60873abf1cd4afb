"""The front door itself: the HTTP server of ``[http]``, its endpoints, who the caller is, the
``x-quotad-*`` headers, and every failure answered in the API's own shape (DESIGN §7).

Endpoints (each also without its ``/v1``, for base URLs given without it)::

    POST /v1/chat/completions   OpenAI chat, plain or SSE            errors: OpenAI shape
    POST /v1/embeddings         OpenAI embeddings                    errors: OpenAI shape
    GET  /v1/models[/NAME]      groups, then targets and bare models errors: OpenAI shape
                                (Anthropic's list shape when the request has anthropic-version)
    POST /v1/messages           Anthropic Messages, plain or SSE     errors: Anthropic shape
    GET  /metrics               Prometheus text (no key needed)
    GET  /healthz               200 {"status": "ok"}; 503 while draining (no key needed)

Who calls: with ``auth = "keys"`` the key (``Authorization: Bearer KEY`` or ``x-api-key: KEY``)
names the app through ``app_for_key``, and ``x-quotad-app`` is ignored (a key cannot speak for
another app); with ``auth = "none"`` the app is ``x-quotad-app``, else :data:`DEFAULT_APP`.

Every request goes through the same :class:`~quotad.daemon.broker.Broker` as the Unix socket's,
so gates, cache, budgets, ledger and failover apply alike. A stream's response starts only once
the broker yields its first chunk, so that failures before it (unknown model, rate limit,
every target down) are answered with their HTTP status; failures after it end the stream with
an error event. A client that goes away cancels its broker call (the HTTP core cancels the
handler, or closes the stream it was reading).
"""

from __future__ import annotations

import logging
import math
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol, cast, get_args

import anyio
import anyio.abc

from quotad.daemon.broker import DAEMON_VERSION, Broker
from quotad.daemon.config import Config, HttpConfig
from quotad.daemon.errors import RequestError
from quotad.daemon.front_door import anthropic, openai
from quotad.daemon.front_door.wire import (
    JSON_CONTENT,
    SSE_HEADERS,
    CacheState,
    cost_header,
    decode_body,
    error_headers,
    http_status,
    quotad_headers,
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
)
from quotad.daemon.request import Caller
from quotad.daemon.routing import Route
from quotad.protocol.messages import (
    PRIORITIES,
    CacheMode,
    Chat,
    ChatChunk,
    ChatEnd,
    ChatReply,
    Embed,
    EmbedReply,
    Priority,
    StatusReply,
)

log = logging.getLogger("quotad.http")

AppForKey = Callable[[str], str | None]
"""The app an HTTP key belongs to, or None for a key that is unknown or revoked."""
Response = HttpResponse | StreamingResponse
Api = Literal["openai", "anthropic"]

DEFAULT_APP: Final = "anonymous"
"""The app of a request under ``auth = "none"`` that sends no ``x-quotad-app``."""
MAX_APP_LENGTH: Final = 256
CACHE_MODES: Final[tuple[CacheMode, ...]] = get_args(CacheMode)
_CACHE_MODES: Final[frozenset[CacheMode]] = frozenset(CACHE_MODES)
_PRIORITIES: Final[frozenset[Priority]] = frozenset(PRIORITIES)
_MISSING_KEY: Final = (
    "missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY' "
    "(create one with: quotad keys create --app NAME)"
)


class HttpListenError(Exception):
    """The front door cannot listen on ``[http] listen``."""


class _Encoder(Protocol):
    """Turns a broker stream into server-sent events of one API's shape."""

    def chunk(self, chunk: ChatChunk) -> bytes: ...

    def end(self, end: ChatEnd) -> bytes: ...

    def error(self, error: RequestError) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _Endpoint:
    name: str  # the metrics label
    method: str
    api: Api
    handler: Callable[[HttpRequest], Awaitable[Response]]


class _RequestHeaders:
    """What a request's headers say to quotad, read in one pass."""

    __slots__ = ("app", "cache", "key", "max_wait_s", "priority")

    def __init__(self) -> None:
        self.key = ""
        self.app = ""
        self.priority: Priority | None = None
        self.cache: CacheMode | None = None
        self.max_wait_s: float | None = None


def _limits(config: HttpConfig) -> HttpLimits:
    return HttpLimits(
        max_header_bytes=int(config.max_header_kb * 1024),
        max_body_bytes=int(config.max_body_mb * 1024 * 1024),
        read_timeout_s=config.read_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
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
    ) -> None:
        self.broker = broker
        self.metrics = broker.metrics
        self._app_for_key = app_for_key
        self._status = status or broker.status
        self._keys = config.auth == "keys"
        self._host, port = parse_listen(config.listen)
        self.server = HttpServer(self.handle, host=self._host, port=port, limits=_limits(config))
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
        self._endpoints["/metrics"] = _Endpoint("metrics", "GET", "openai", self._metrics)
        self._endpoints["/healthz"] = _Endpoint("healthz", "GET", "openai", self._healthz)
        self._model = _Endpoint("models", "GET", "openai", self._model_by_name)
        self._unknown = _Endpoint("other", "", "openai", self._not_found)

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

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: HttpRequest) -> Response:
        """Answer one request (the HTTP core's handler)."""
        endpoint = self._endpoints.get(request.path)
        if endpoint is None:
            is_model = request.path.startswith(("/v1/models/", "/models/"))
            endpoint = self._model if is_model else self._unknown
        method = request.method
        if endpoint.method not in ("", method) and (method, endpoint.method) != ("HEAD", "GET"):
            response: Response = self._method_not_allowed(request, endpoint)
        else:
            try:
                if self.server.closing and endpoint.name != "healthz":
                    raise RequestError(
                        "overloaded", "quotad is shutting down; retry shortly", retry_after_s=1.0
                    )
                response = await endpoint.handler(request)
            except RequestError as error:
                response = self._error(endpoint.api, error)
            except Exception:
                log.exception("internal error answering %s %s", method, request.path)
                response = self._error(endpoint.api, RequestError("internal", "internal error"))
        self.metrics.observe_http(endpoint.name, response.status)
        return response

    def _error(self, api: Api, error: RequestError) -> HttpResponse:
        body = anthropic.error_body(error) if api == "anthropic" else openai.error_body(error)
        return HttpResponse(http_status(error), error_headers(error), body)

    def _method_not_allowed(self, request: HttpRequest, endpoint: _Endpoint) -> HttpResponse:
        error = RequestError(
            "bad_request", f"{request.path} takes {endpoint.method}, not {request.method}"
        )
        response = self._error(endpoint.api, error)
        response.status = 405
        response.headers.append(("allow", endpoint.method))
        return response

    async def _not_found(self, request: HttpRequest) -> Response:
        error = RequestError(
            "bad_request",
            f"no endpoint {request.method} {request.path}; quotad serves /v1/chat/completions, "
            "/v1/embeddings, /v1/models, /v1/messages, /metrics and /healthz",
        )
        response = self._error("openai", error)
        response.status = 404
        return response

    # ------------------------------------------------------------------ who calls, and how

    def _read_headers(self, request: HttpRequest) -> _RequestHeaders:
        """The key and the ``x-quotad-*`` options, in one pass over the headers."""
        found = _RequestHeaders()
        for name, value in request.headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    found.key = token.strip().decode("latin-1")
            elif name == b"x-api-key":
                if not found.key:
                    found.key = value.strip().decode("latin-1")
            elif name.startswith(b"x-quotad-"):
                _read_quotad_header(found, name.decode("latin-1"), value.decode("latin-1"))
        return found

    def _caller(self, headers: _RequestHeaders) -> Caller:
        """Who calls: the key's app (``auth = "keys"``) or ``x-quotad-app``."""
        if self._keys:
            if not headers.key:
                raise RequestError("unauthorized", _MISSING_KEY)
            app = self._app_for_key(headers.key)
            if app is None:
                raise RequestError("unauthorized", "invalid or revoked API key")
        else:
            app = headers.app or DEFAULT_APP
        return Caller(app=app, via="http")

    def _cache_state(self, cached: bool, mode: str) -> CacheState:
        if cached:
            return "hit"
        return "bypass" if not self.broker.cache.enabled or mode == "bypass" else "miss"

    def _answer_headers(
        self, answer: ChatReply | EmbedReply | ChatChunk | ChatEnd, mode: str
    ) -> Headers:
        """The ``x-quotad-*`` headers an answer tells when it starts."""
        cache = self._cache_state(answer.cached, mode)
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
        headers = self._read_headers(request)
        caller = self._caller(headers)
        body = decode_body(openai.CHAT_DECODER, request.body)
        chat = openai.chat_request(body)
        _apply_options(chat, headers)
        created = int(self.broker.clock.time())
        if chat.stream:
            encoder = openai.CompletionStream(chat.model, created, body.include_usage)
            return await self._stream(chat, caller, encoder)
        reply = await self.broker.chat(chat, caller)
        body_bytes = openai.completion_body(reply, chat.model, created)
        return self._whole_answer(reply, chat.cache, body_bytes)

    async def _embeddings(self, request: HttpRequest) -> Response:
        headers = self._read_headers(request)
        caller = self._caller(headers)
        body = decode_body(openai.EMBEDDINGS_DECODER, request.body)
        embed = openai.embed_request(body)
        _apply_options(embed, headers)
        reply = await self.broker.embed(embed, caller)
        body_bytes = openai.embeddings_body(reply, embed.model, body.encoding_format)
        return self._whole_answer(reply, embed.cache, body_bytes)

    def _owner(self, name: str, route: Route) -> str:
        """Who a model name is: groups are quotad's, targets and bare models their
        provider's."""
        if name in self.broker.router.groups or not route.targets:
            return "quotad"
        return route.targets[0].provider_name

    def _model_list(self) -> list[tuple[str, str]]:
        """(name, owner) of every name a request may use."""
        router = self.broker.router
        routes = router.routes()
        return [(name, self._owner(name, routes[name])) for name in router.known_names()]

    async def _models(self, request: HttpRequest) -> Response:
        self._caller(self._read_headers(request))
        models = self._model_list()
        if request.header("anthropic-version") is not None:
            body = anthropic.models_body([name for name, _ in models])
        else:
            body = openai.models_body(models)
        return HttpResponse(200, [JSON_CONTENT], body)

    async def _model_by_name(self, request: HttpRequest) -> Response:
        self._caller(self._read_headers(request))
        prefix = "/v1/models/" if request.path.startswith("/v1/") else "/models/"
        name = urllib.parse.unquote(request.path.removeprefix(prefix))
        route = self.broker.router.resolve(name)  # else unknown_model, naming what exists
        return HttpResponse(200, [JSON_CONTENT], openai.model_body(name, self._owner(name, route)))

    # ------------------------------------------------------------------ Anthropic endpoint

    async def _messages(self, request: HttpRequest) -> Response:
        headers = self._read_headers(request)
        caller = self._caller(headers)
        body = decode_body(anthropic.MESSAGES_DECODER, request.body)
        chat = anthropic.chat_request(body)
        _apply_options(chat, headers)
        if chat.stream:
            return await self._stream(chat, caller, anthropic.MessageStream(chat.model))
        reply = await self.broker.chat(chat, caller)
        return self._whole_answer(reply, chat.cache, anthropic.message_body(reply, chat.model))

    # ------------------------------------------------------------------ streams

    async def _stream(self, chat: Chat, caller: Caller, encoder: _Encoder) -> StreamingResponse:
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
        if isinstance(first, ChatEnd):
            headers.append(cost_header(first.cost_usd))
        return StreamingResponse(200, headers, _events(stream, first, encoder))

    # ------------------------------------------------------------------ operations

    async def _metrics(self, request: HttpRequest) -> Response:
        body = self.metrics.exposition(self._status())
        return HttpResponse(200, [("content-type", METRICS_CONTENT_TYPE)], body)

    async def _healthz(self, request: HttpRequest) -> Response:
        if self.server.closing:
            return HttpResponse(503, [JSON_CONTENT], b'{"status":"draining"}')
        body = b'{"status":"ok","version":"%s"}' % DAEMON_VERSION.encode()
        return HttpResponse(200, [JSON_CONTENT], body)


async def _events(
    stream: AsyncGenerator[ChatChunk | ChatEnd, None],
    first: ChatChunk | ChatEnd,
    encoder: _Encoder,
) -> AsyncIterator[bytes]:
    """The response body of a stream: one event (or a few) per broker chunk."""
    try:
        if isinstance(first, ChatEnd):
            yield encoder.end(first)
            return
        yield encoder.chunk(first)
        async for item in stream:
            yield encoder.end(item) if isinstance(item, ChatEnd) else encoder.chunk(item)
    except RequestError as error:
        yield encoder.error(error)
    except Exception:
        log.exception("internal error in a stream")
        yield encoder.error(RequestError("internal", "internal error"))
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


def _read_quotad_header(found: _RequestHeaders, name: str, value: str) -> None:
    """One ``x-quotad-*`` request header into ``found``; a bad value is a ``bad_request``
    naming the header. Unknown ``x-quotad-*`` headers are ignored."""
    value = value.strip()
    if name == "x-quotad-app":
        if len(value) > MAX_APP_LENGTH:
            raise _bad_header(name, f"longer than {MAX_APP_LENGTH} characters")
        found.app = value
    elif name == "x-quotad-priority":
        if value not in _PRIORITIES:
            raise _bad_header(name, f"expected one of {', '.join(PRIORITIES)}, got {value!r}")
        found.priority = value
    elif name == "x-quotad-cache":
        if value not in _CACHE_MODES:
            raise _bad_header(name, f"expected one of {', '.join(CACHE_MODES)}, got {value!r}")
        found.cache = value
    elif name == "x-quotad-max-wait":
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise _bad_header(name, f"expected seconds (a number >= 0), got {value!r}")
        found.max_wait_s = seconds


def _bad_header(name: str, message: str) -> RequestError:
    return RequestError("bad_request", f"header {name}: {message}", details={"param": name})


def _apply_options(request: Chat | Embed, headers: _RequestHeaders) -> None:
    """The ``x-quotad-*`` options onto a protocol request."""
    if headers.priority is not None:
        request.priority = headers.priority
    if headers.cache is not None:
        request.cache = headers.cache
    if headers.max_wait_s is not None:
        request.max_wait_s = headers.max_wait_s
