"""A small, fast HTTP/1.1 server core on asyncio (with or without uvloop; anyio task groups
and cancel scopes), without an ASGI framework.

It owns the connection side of HTTP: accepting, parsing, keep-alive, limits, timeouts,
writing responses and graceful shutdown. What to answer is the handler's business; the
simulated provider (``quotad sim``) and the daemon's HTTP front door both run on it.

API::

    async def handler(request: HttpRequest) -> HttpResponse | StreamingResponse: ...

    server = HttpServer(handler, host="127.0.0.1", port=0, limits=HttpLimits())
    await server.listen()                        # optional: bind now (OSError: port busy)
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.serve)      # bound port (port 0 picks a free one)
        ...
        await server.shutdown(deadline_s=10.0)   # serve() returns once it is done

- :class:`HttpRequest` holds the method, target (path + query), path, headers as
  ``(lower-cased name, value)`` byte pairs (``header(name)`` finds one), the whole body and
  the peer address. Bodies are read completely before the handler runs.
- :class:`HttpResponse` is answered in one write with a ``content-length`` the server adds.
  :class:`StreamingResponse` sends its headers at once, then each chunk of ``chunks`` as it
  comes (chunked transfer-encoding), and ``aclose()``\\ s the iterator however it ends; its
  ``trailer_names`` are announced in the head and sent after the last chunk as the iterator
  filled them in (``trailers``), a stream's cost among them (:mod:`.wire` writes heads and
  trailers).
- A handler (or a streaming iterator) that raises :class:`AbortConnection` gets the connection
  closed without an answer (``reset=True``: with a TCP RST). Any other exception answers 500
  (or, once a stream has started, cuts it) and the server carries on. A response header
  holding a line break is a handler error too (500), never written.
- Error answers of the server itself (400, 408, 413, 431, 501, 505, 500) have a JSON body that
  both SDK families read: ``{"type": "error", "error": {"type", "message", "code"}}``, its code
  one of the wire protocol's (``bad_request``; ``internal`` for a 500).

Requests are parsed by :mod:`.parser` (one parser per connection, holding what was read
beyond the current request); responses are written directly. Both cost a fraction of h11's
general state machine and per-event validation.
HTTP/1.0 clients get their answer and a close (a streamed body is then close-delimited).

Connections: keep-alive; pipelined requests are read one at a time and answered in order,
the other connections getting a turn of the event loop between two of them.
A request line + headers over ``max_header_bytes`` (each header counting 32 bytes more, as
HTTP/2 counts them) is answered 431, a body over
``max_body_bytes`` 413, a malformed request 400, a body part past the ``request_memory`` the
server may be given (a bound on the body bytes of all its connections, and whatever else
shares it) 503; each of these closes the connection. A
request that has started arriving must be complete within ``read_timeout_s`` (else 408 and
close: slowloris); a keep-alive connection waits ``idle_timeout_s`` for its next request.
Each connection is an asyncio protocol reading all along (a task per connection runs its
requests), so a client that goes away (EOF or reset) while its request is being handled
cancels the handler and stops its stream at once; a half-close from
the client counts as going away. Until one of its requests is let in naming who sends it
(``authorized``), a connection is unidentified: it has ``head_timeout_s`` to send each head,
and unidentified connections hold only a share of ``max_connections`` (a new one past it
closes the oldest waiting for a head, else the oldest leaving its answers unread; see
:class:`HttpLimits`), so that a peer without a key cannot keep out one with a key. Closes
after an answer are lingering (FIN, then read until the client closes, at most ``LINGER_S``)
so that the client reads the answer before the socket goes.
Timeouts are checked by one sweep task per server (no timer per request), so they fire up to
an eighth of the timeout (at most 1 s) late.

Shutdown: stop accepting, close idle keep-alive connections, let requests in flight finish
(answered with ``connection: close``) until the deadline, then cancel what is left.

Modules: :mod:`.messages` (what a handler sees and answers, and the limits on a request),
:mod:`.server` (:class:`HttpServer`: the listener, accepting, the timeout sweep, shutdown),
:mod:`.connection` (one client connection: reading, limits, timeouts, answering, closing),
:mod:`.parser` (request parsing, bytes in and events out).
"""

from __future__ import annotations

from quotad.daemon.net.http11.messages import (
    AbortConnection,
    Authorize,
    BodyMemory,
    ErrorAnswer,
    Handler,
    Headers,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    StreamingResponse,
    default_error_answer,
    error_body,
)
from quotad.daemon.net.http11.server import HttpServer

__all__ = [
    "AbortConnection",
    "Authorize",
    "BodyMemory",
    "ErrorAnswer",
    "Handler",
    "Headers",
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "StreamingResponse",
    "default_error_answer",
    "error_body",
]
