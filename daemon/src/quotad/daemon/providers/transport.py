"""The HTTP side of one provider account: pooled connections, deadlines, bounded answers,
streams of server-sent events, and the classification of every failure into a
:class:`ProviderError`.

:class:`ProviderHTTP` owns one connection pool (an httpx transport sized by
``max_concurrency``, keep-alive), the account's default headers (built once) and its timeouts.
Every request goes one way: a :class:`~quotad.daemon.net.pool.PreparedRequest` (an
``httpx.Request`` made from parts prepared once per account) handed straight to the
transport's ``handle_async_request``; the
wire formats need none of what :class:`httpx.AsyncClient` adds per request (URL merging,
cookies, auth flows, redirects, event hooks, an INFO log line per request). A plain ``http://``
account (a local server, where that cost is most of a request) gets the lean pool of
:mod:`quotad.daemon.net.pool` as its transport, others httpx's own (httpcore's pool); proxies
named by the environment (``HTTPS_PROXY``, ``NO_PROXY``…) are honoured for non-loopback hosts.

Timeouts: ``timeout_s`` bounds a whole plain request (send, wait, read) and each read, write
or wait for a pooled connection; ``connect_timeout_s`` bounds connecting. A stream's deadline
covers its opening (up to the response headers); after that each read waits ``timeout_s``.

Bounds: an answer is read up to ``max_response_mb`` (a plain body whole, a stream's events in
total; one event at most :data:`~quotad.daemon.net.sse.MAX_EVENT_BYTES`); past it, the
connection is dropped and the call fails (``protocol`` for a plain answer, ``stream_broken``
for a stream), naming the bound. An error answer's body is read up to :data:`MAX_ERROR_READ`.

Failures, by when they happen::

    before a response   httpx.ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout,
                        the whole-request deadline                          → timeout
                        ConnectError, ReadError, WriteError, RemoteProtocolError,
                        ProxyError (refused, reset, closed before an answer) → connect
    with a status       429 → rate_limited; 408, 409 → conflict; 5xx → server;
                        other 4xx → client; anything else not 2xx → protocol
    with a 2xx          an undecodable body, a body past max_response_mb,
                        one not in the content-coding it names (gzip...)    → protocol
    in a stream         a read error, a stall, an oversized event or stream,
                        a body not in its content-coding,
                        an end before the end event                         → stream_broken

A failure after the whole request was sent and before an error status said otherwise (a read
timeout or the whole-request deadline, a read error or a connection closed before the answer,
anything with a 2xx or in a stream) *may bill* (:attr:`ProviderError.may_bill`): the provider
has the request and may run it to its end. One before (connecting, a pooled connection,
sending) or with an error status never does.

The account's API key never appears in a message or body, in any form: an error answer is
decoded first, then every string in it is redacted (:mod:`.redaction`: the key as it is, cut,
masked, escaped or encoded); a successful answer that holds the key (as it is or JSON-escaped)
has it redacted too.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, aclosing
from typing import Any, ClassVar, Final, TypeVar

import anyio
import httpx
import msgspec

from quotad.daemon.config import ProviderConfig
from quotad.daemon.net.addresses import environment_proxy
from quotad.daemon.net.content_coding import decoded_body
from quotad.daemon.net.deadlines import Deadlines
from quotad.daemon.net.httpx_messages import PreparedRequest
from quotad.daemon.net.pool import LeanHTTPTransport
from quotad.daemon.net.sse import EventStreamTooLong, ServerSentEvents
from quotad.daemon.providers.base import (
    NOTHING_REPORTED,
    UNDECODABLE,
    ChatDelta,
    ErrorKind,
    ProviderError,
)
from quotad.daemon.providers.ratelimits import parse_rate_limits
from quotad.daemon.providers.redaction import KeyRedactor
from quotad.daemon.rate_limit_info import NO_RATE_LIMITS, RateLimitInfo
from quotad.protocol.messages import Usage

KEEPALIVE_EXPIRY_S: Final = 30.0
USER_AGENT: Final = "quotad"
MAX_ERROR_BODY: Final = 4096
"""Characters of a body that is not JSON kept in :attr:`ProviderError.body`."""
MAX_ERROR_MESSAGE: Final = 500
"""Characters of a provider's error message kept in :attr:`ProviderError.message`."""
MAX_ERROR_READ: Final = 64 * 1024
"""Bytes of an error answer's body read (the rest is dropped with its connection)."""
MIB: Final = 1024 * 1024

_JSON: Final = msgspec.json.Decoder()

T = TypeVar("T")

READ_FAILURES: Final = (httpx.TransportError, httpx.DecodingError)
"""What reading an answer may raise: the connection's failures, and httpx's
``DecodingError`` (no ``TransportError``) for a body that is not in the content-coding its
``content-encoding`` names (``gzip`` that is not gzip)."""
SENT_FAILURES: Final = (
    httpx.ReadTimeout,
    httpx.ReadError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
)
"""Failures after the whole request was sent, while its answer was awaited or read: the
provider may run the call and bill it (:attr:`ProviderError.may_bill`). Connecting, waiting
for a pooled connection and sending fail before it has the request."""


class Reply(msgspec.Struct):
    """A successful plain reply: its body and what its headers say of rate limits."""

    content: bytes
    rate_limits: RateLimitInfo


def pooled_transport(config: ProviderConfig) -> httpx.AsyncBaseTransport:
    """One connection pool for a provider account: at most ``max_concurrency`` connections,
    all kept alive between requests. A plain-``http://`` account without a proxy (a local
    server) gets the lean pool of :mod:`.pool`; others httpx's own."""
    url = httpx.URL(config.base_url)
    proxy = environment_proxy(url)
    if url.scheme == "http" and proxy is None:
        return LeanHTTPTransport(
            max_connections=config.max_concurrency, keepalive_expiry_s=KEEPALIVE_EXPIRY_S
        )
    limits = httpx.Limits(
        max_connections=config.max_concurrency,
        max_keepalive_connections=config.max_concurrency,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncHTTPTransport(limits=limits, proxy=proxy)


async def read_body(response: httpx.Response, limit: int) -> bytes | None:
    """The body of ``response`` (decoded from its content-coding a bounded piece at a time:
    :mod:`~quotad.daemon.net.content_coding`), or None when it is larger than ``limit`` bytes
    (it is then read and inflated no further: closing the response drops its connection). A
    body the transport has read already (the lean pool's small answers) is taken as it is;
    one that says its length is refused before any of it is read."""
    try:
        content = response.content
    except httpx.ResponseNotRead:
        pass
    else:
        return content if len(content) <= limit else None
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    chunks = []
    size = 0
    async with aclosing(decoded_body(response)) as pieces:
        async for chunk in pieces:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


async def _error_body(response: httpx.Response) -> bytes | None:
    """An error answer's body, up to :data:`MAX_ERROR_READ`; empty when it is not in the
    content-coding it names (its status says enough)."""
    try:
        return await read_body(response, MAX_ERROR_READ)
    except httpx.DecodingError:
        return b""


def error_message(body: Any) -> str | None:
    """The human message in an error body: ``{"error": {"message"}}`` (OpenAI, Anthropic),
    ``{"error": "…"}``, ``{"message"}`` or ``{"detail"}`` (other OpenAI-compatible servers)."""
    if isinstance(body, str):
        return body.strip() or None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    for candidate in (error, body.get("message"), body.get("detail")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate.strip()
    return None


def _not_in_its_coding(response: httpx.Response | None, detail: str) -> str:
    """What a body that its ``content-encoding`` does not decode is said to be."""
    coding = response.headers.get("content-encoding", "") if response is not None else ""
    return f"a body that is not the {coding[:40] or 'coding'} its content-encoding says ({detail})"


def _refused(response: httpx.Response | None) -> bool:
    """Whether ``response`` is an error answer (its status says the call was not made)."""
    return response is not None and not 200 <= response.status_code < 300


def _status_kind(status: int) -> ErrorKind:
    if status == 429:
        return "rate_limited"
    if status in (408, 409):
        return "conflict"
    if status >= 500:
        return "server"
    if 400 <= status < 500:
        return "client"
    return "protocol"


class HTTPProvider:
    """What the wire formats over HTTP share: the account's name, its :class:`ProviderHTTP`
    sending the headers :meth:`own_headers` makes (the API key's among them), and the URLs
    of the format's :attr:`ENDPOINTS` under the base URL."""

    kind: str
    ENDPOINTS: ClassVar[tuple[str, ...]]
    """The paths the format calls (``/chat/completions``...), keys of ``self._urls``."""

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        api_key: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        headers = self.own_headers(api_key)
        self._http = ProviderHTTP(config, headers, api_key, transport, name=name)
        self._urls = {path: self._http.url(path) for path in self.ENDPOINTS}

    @staticmethod
    def own_headers(api_key: str | None) -> dict[str, str]:
        """The headers of every request in this format (the API key's, when there is one)."""
        raise NotImplementedError


class ProviderHTTP:
    """HTTP to one provider account; every failure comes out as a :class:`ProviderError`."""

    def __init__(
        self,
        config: ProviderConfig,
        headers: dict[str, str],
        api_key: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        name: str = "",
    ) -> None:
        self._base_url = config.base_url.rstrip("/")
        base_url = httpx.URL(self._base_url)
        self._host = base_url.netloc.decode("ascii", "replace")
        self._redactor = KeyRedactor(api_key)
        self._transport = transport if transport is not None else pooled_transport(config)
        self._traced = isinstance(self._transport, httpx.AsyncHTTPTransport)
        """httpx's own transport says when a request is handed over through httpcore's
        ``trace`` (given per request); the lean pool says it itself; of another transport (a
        test's mock), a request is taken as handed over when it is given to it."""
        self._says_handed_over = self._traced or isinstance(self._transport, LeanHTTPTransport)
        self._headers = httpx.Headers(
            {"host": self._host, "user-agent": USER_AGENT, "accept": "application/json"}
        )
        self._headers.update(headers)
        self._headers.update(config.headers)  # names are case-insensitive: these win
        self._header_lines = b"".join(
            name + b": " + value + b"\r\n" for name, value in self._headers.raw
        )
        self._timeout_s = config.timeout_s
        self._connect_timeout_s = config.connect_timeout_s
        timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._extensions: dict[str, Any] = {"timeout": timeout.as_dict()}
        self._deadlines = Deadlines()
        self.max_response_bytes = int(config.max_response_mb * MIB)
        self._bound = (
            f"{config.max_response_mb:g} MiB (providers.{name}.max_response_mb)"
            if name
            else f"{config.max_response_mb:g} MiB"
        )

    def url(self, path: str) -> httpx.URL:
        """The URL of an endpoint under the base URL (``/chat/completions``)."""
        return httpx.URL(self._base_url + path)

    def _request(self, method: str, url: httpx.URL, body: bytes) -> PreparedRequest:
        request = PreparedRequest(
            method, url, self._headers, self._header_lines, body, self._extensions
        )
        if self._traced:
            request.extensions = {**self._extensions, "trace": request.trace}
        return request

    def _deadline(self) -> AbstractContextManager[Any]:
        """The whole-request bound: on asyncio (the daemon) watched by this account's one
        sweep (:mod:`quotad.daemon.net.deadlines`) rather than a timer and a scope per
        request; elsewhere an anyio scope."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return anyio.fail_after(self._timeout_s)
        return self._deadlines.within(self._timeout_s)

    async def request(self, method: str, url: httpx.URL, body: bytes | None = None) -> Reply:
        """One plain request, answered whole within ``timeout_s``; a non-2xx answer raises,
        and so does one larger than ``max_response_mb``."""
        request = self._request(method, url, body or b"")
        response: httpx.Response | None = None
        try:
            with self._deadline():
                response = await self._transport.handle_async_request(request)
                try:
                    if 200 <= response.status_code < 300:
                        content = await read_body(response, self.max_response_bytes)
                    else:
                        content = await _error_body(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise self._deadline_failure("gave no complete answer", request, response) from None
        except READ_FAILURES as error:
            raise self.transport_failure(error, response) from None
        rate_limits = parse_rate_limits(response.headers)
        if not 200 <= response.status_code < 300:
            raise self.status_failure(response.status_code, content or b"", rate_limits)
        if content is None:
            raise ProviderError(
                "protocol",
                f"{self._host} sent an answer larger than {self._bound}; it was dropped",
                status=response.status_code,
                rate_limits=rate_limits,
                may_bill=True,
            )
        return Reply(self._redactor.answer(content), rate_limits)

    async def open_stream(
        self, url: httpx.URL, body: bytes
    ) -> tuple[httpx.Response, RateLimitInfo]:
        """POST a streamed request and return once its 2xx response headers are in; the body
        is left to read. A non-2xx answer is read (up to :data:`MAX_ERROR_READ`) and raised."""
        request = self._request("POST", url, body)
        try:
            with self._deadline():
                response = await self._transport.handle_async_request(request)
        except TimeoutError:
            raise self._deadline_failure("did not start its answer", request, None) from None
        except httpx.TransportError as error:
            raise self.transport_failure(error, None) from None
        rate_limits = parse_rate_limits(response.headers)
        if 200 <= response.status_code < 300:
            return response, rate_limits
        content: bytes | None = None
        try:
            with anyio.fail_after(self._timeout_s):
                content = await read_body(response, MAX_ERROR_READ)
        except (TimeoutError, *READ_FAILURES):
            pass  # the status says enough
        finally:
            await response.aclose()
        raise self.status_failure(response.status_code, content or b"", rate_limits)

    def decode(self, decoder: msgspec.json.Decoder[T], reply: Reply) -> T:
        """A reply's body decoded into the wire format's typed answer; ``protocol`` when it
        does not fit."""
        try:
            return decoder.decode(reply.content)
        except UNDECODABLE as error:
            raise self.protocol_failure(str(error), reply.rate_limits, reply.content) from None

    # ------------------------------------------------------------------ failures

    def redact(self, text: str) -> str:
        """``text`` without the account's API key in it, in any form."""
        return self._redactor.text(text)

    def redacted_body(self, content: bytes) -> Any:
        """An error answer's (or error event's) body without the key: its JSON with every
        string redacted, or its text redacted and cut to :data:`MAX_ERROR_BODY`."""
        return self._redactor.body(content, MAX_ERROR_BODY)

    def redacted_answer(self, content: bytes) -> bytes:
        """A successful answer (or event) as it is, unless it holds the key: see
        :meth:`KeyRedactor.answer`."""
        return self._redactor.answer(content)

    def _deadline_failure(
        self, what: str, request: PreparedRequest, response: httpx.Response | None
    ) -> ProviderError:
        """The whole-request deadline passed: the call may be billed if the request was
        handed over (not while it waited for a free connection or for one to connect) and
        no error answer said it was refused."""
        rate_limits = parse_rate_limits(response.headers) if response else NO_RATE_LIMITS
        handed_over = response is not None or request.handed_over or not self._says_handed_over
        return ProviderError(
            "timeout",
            f"{self._host} {what} within {self._timeout_s:g} s",
            status=response.status_code if response else None,
            rate_limits=rate_limits,
            may_bill=handed_over and not _refused(response),
        )

    def transport_failure(
        self, error: httpx.TransportError | httpx.DecodingError, response: httpx.Response | None
    ) -> ProviderError:
        """Classify a failure to exchange a request and its answer (see the module docstring)."""
        detail = self.redact(str(error)) or type(error).__name__
        kind: ErrorKind
        if isinstance(error, httpx.ConnectTimeout):
            kind = "timeout"
            message = f"connecting to {self._host} timed out after {self._connect_timeout_s:g} s"
        elif isinstance(error, httpx.PoolTimeout):
            kind = "timeout"
            message = f"no free connection to {self._host} within {self._timeout_s:g} s"
        elif isinstance(error, httpx.TimeoutException):
            kind = "timeout"
            message = f"{self._host} did not answer within {self._timeout_s:g} s ({detail})"
        elif isinstance(error, httpx.ConnectError | httpx.ProxyError):
            kind = "connect"
            message = f"cannot connect to {self._host}: {detail}"
        elif isinstance(error, httpx.NetworkError | httpx.RemoteProtocolError):
            kind = "connect"
            message = f"connection to {self._host} failed before the answer: {detail}"
        elif isinstance(error, httpx.DecodingError):
            kind = "protocol"
            message = self.redact(f"{self._host} sent {_not_in_its_coding(response, detail)}")
        else:  # LocalProtocolError, UnsupportedProtocol, DecodingError…
            kind = "protocol"
            message = f"cannot exchange with {self._host}: {detail}"
        rate_limits = parse_rate_limits(response.headers) if response else NO_RATE_LIMITS
        return ProviderError(
            kind,
            message,
            status=response.status_code if response else None,
            retry_after_s=rate_limits.retry_after_s,
            rate_limits=rate_limits,
            may_bill=isinstance(error, SENT_FAILURES) and not _refused(response),
        )

    def status_failure(
        self, status: int, content: bytes, rate_limits: RateLimitInfo
    ) -> ProviderError:
        """The error a non-2xx answer (``status``) means, with the provider's own message and
        body, decoded first and then redacted."""
        body = self.redacted_body(content)
        message = error_message(body) or f"HTTP {status} {httpx.codes.get_reason_phrase(status)}"
        return ProviderError(
            _status_kind(status),
            message[:MAX_ERROR_MESSAGE],
            status=status,
            retry_after_s=rate_limits.retry_after_s,
            rate_limits=rate_limits,
            body=body,
        )

    def protocol_failure(
        self, what: str, rate_limits: RateLimitInfo, content: bytes = b""
    ) -> ProviderError:
        """A 2xx answer that could not be understood."""
        return ProviderError(
            "protocol",
            f"{self._host} sent an answer that cannot be understood: {self.redact(what)}",
            rate_limits=rate_limits,
            body=self._redactor.start(content, MAX_ERROR_BODY) or None,
            may_bill=True,
        )

    def stream_failure(
        self, error: Exception, rate_limits: RateLimitInfo, response: httpx.Response | None = None
    ) -> ProviderError:
        """A stream that broke after it had started (``response``: its answer)."""
        if isinstance(error, httpx.TimeoutException):
            what = f"no data for {self._timeout_s:g} s"
        elif isinstance(error, httpx.DecodingError):
            what = self.redact(_not_in_its_coding(response, str(error)))
        elif isinstance(error, EventStreamTooLong):
            what = f"it passed {self._bound}; it was dropped"
        else:
            what = self.redact(str(error)) or type(error).__name__
        return ProviderError(
            "stream_broken",
            f"the stream from {self._host} broke: {what}",
            rate_limits=rate_limits,
            may_bill=True,
        )

    def stream_end_failure(self, what: str, rate_limits: RateLimitInfo) -> ProviderError:
        """A stream whose body ended before its end event."""
        return ProviderError(
            "stream_broken",
            f"the stream from {self._host} {what}",
            rate_limits=rate_limits,
            may_bill=True,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._transport.aclose()


class ChatEventStream(ABC):
    """A chat answer streamed as server-sent events (the ``ChatStream`` of base.py); a wire
    format subclasses it to turn each event's data into a :class:`ChatDelta`.

    :meth:`deltas` iterates the stream. Its end is the wire format's end event (after which
    the rest of the body is drained, so that the connection is kept), or a clean end of the
    body after a finish reason (some servers leave the end event out). A read error, a stall,
    or an end of the body before either raises ``stream_broken``. Once the iteration has ended
    or raised, it stays ended.
    """

    END_EVENT: ClassVar[str]
    """The end event's name, for errors."""

    def __init__(self, http: ProviderHTTP, response: httpx.Response, rate_limits: RateLimitInfo):
        self.rate_limits = rate_limits
        self.usage = Usage()
        self.usage_reported = NOTHING_REPORTED  # until its usage comes
        self.finish_reason: str | None = None
        self.http = http
        self.ended = False  # set by on_event when the end event comes
        self._events = ServerSentEvents(response, http.max_response_bytes)
        self._response = response
        self._finished = False

    @abstractmethod
    def on_event(self, data: bytes) -> ChatDelta | None:
        """The delta an event's data carries, if any; raises :class:`ProviderError` for an
        error event or undecodable data."""

    def decoded(self, decoder: msgspec.json.Decoder[T], data: bytes, what: str) -> T:
        """An event's ``data`` decoded, or the ``protocol`` failure that says ``what`` could
        not be."""
        try:
            return decoder.decode(data)
        except UNDECODABLE as error:
            raise self.http.protocol_failure(f"{what}: {error}", self.rate_limits, data) from None

    def deltas(self) -> ChatEventStream:
        """The pieces of the answer, as they arrive."""
        return self

    def __aiter__(self) -> ChatEventStream:
        return self

    async def __anext__(self) -> ChatDelta:
        while not self._finished:
            try:
                data = await self._events.next_data()
            except READ_FAILURES as error:
                self._finished = True
                raise self.http.stream_failure(error, self.rate_limits, self._response) from None
            if data is None:
                self._finished = True
                if self.finish_reason is None:
                    raise self.http.stream_end_failure(
                        f"ended before {self.END_EVENT}", self.rate_limits
                    )
                break
            try:
                delta = self.on_event(self.http.redacted_answer(data))
            except ProviderError:
                self._finished = True
                raise
            if delta is not None:
                return delta
            if self.ended:
                self._finished = True
                await self._events.drain()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Release the connection."""
        self._finished = True
        await self._events.aclose()
