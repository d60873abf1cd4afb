"""A small, fast HTTP/1.1 server core on anyio, without an ASGI framework: :mod:`.server`
(connections, keep-alive, limits, timeouts, answers, graceful shutdown) and :mod:`.parser`
(request parsing, bytes in and events out). See :mod:`.server` for the API."""

from __future__ import annotations

from quotad.daemon.http11.server import (
    AbortConnection,
    Handler,
    Headers,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
    StreamingResponse,
)

__all__ = [
    "AbortConnection",
    "Handler",
    "Headers",
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "StreamingResponse",
]
