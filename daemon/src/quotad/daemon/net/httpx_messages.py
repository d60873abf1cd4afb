"""The ``httpx.Request`` and ``httpx.Response`` a provider account and its lean pool exchange,
made from prepared parts rather than by httpx's own constructors, which parse, merge and read
again for each request what is the same for every one of an account's (tens of µs, where the
whole exchange with a local server costs about a hundred): :class:`PreparedRequest` and
:class:`ReadResponse`. Any httpx transport takes the first; the second is what the lean pool
(:mod:`quotad.daemon.net.pool`) returns for a small answer that came whole with its head.

PRIVATE INTERNALS, ON PURPOSE. Both set attributes httpx keeps private, which its public
properties read (``Request._content``; ``Response._content``, ``_request``,
``_num_bytes_downloaded``): the only place in quotad that does. The public ways cost too much
for what they are used for, measured (issue 14, on the loaded 2-core machine):

- ``httpx.Request(method, url, headers=..., content=...)``: 36-41 µs against 2-4 µs;
- ``httpx.Response(status, headers=..., content=..., request=...)`` (read at once through the
  decoders and chunker; or ``stream=httpx.ByteStream(...)`` read later: the same work):
  13-20 µs against 2-4 µs; through the whole daemon (bench/overhead.py --baseline-src, both
  daemons interleaved in one run; three runs) a chat's p50 0.553, 0.609, 0.561 ms against
  0.502, 0.603, 0.513, and the daemon's CPU 358, 417, 400 µs per request against 325, 433,
  338: up to 9% of the p50 in two runs of three.

What pins them: tests/unit/test_httpx_messages.py builds each beside the public constructor
from the same parts and compares everything public (content, headers, json, the read/closed
state, the request, iteration, ``aread``), and tests/integration/test_provider_pool.py checks
a pooled answer reads as any read response. An httpx release that renames what these set
fails those tests, not a user's request; ``httpx>=0.27`` (daemon/pyproject.toml) is the
floor they pass on.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

_CRLF: Final = b"\r\n"


class PreparedRequest(httpx.Request):
    """An ``httpx.Request`` made from parts prepared once per account: the method, a URL built
    once per endpoint, the account's headers (``host`` included, ``content-length`` not) and
    the same as ``name: value\\r\\n`` lines, the body, the timeouts. ``httpx.Request``'s own
    constructor parses and merges all of these again for each request (tens of µs). Its
    ``headers`` (with the body's ``content-length``) are built only when a transport reads
    them (httpx's own does); this pool writes the prepared lines instead (:meth:`head`).

    :attr:`handed_over` says whether the request was written to a connection (its server may
    have it): the lean pool sets it, and httpx's own transport through httpcore's ``trace``
    extension when :meth:`trace` is given as one."""

    def __init__(
        self,
        method: str,
        url: httpx.URL,
        headers: httpx.Headers,
        header_lines: bytes,
        content: bytes,
        extensions: dict[str, Any],
    ) -> None:
        self.method = method
        self.url = url
        self.extensions = extensions
        self.stream = httpx.ByteStream(content)
        self._content = content
        self._prepared_headers = headers
        self._header_lines = header_lines
        self._headers: httpx.Headers | None = None
        self.handed_over = False

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's ``trace`` extension: the request is handed over once its body is sent."""
        del info
        if event.endswith("send_request_body.complete"):
            self.handed_over = True

    @property
    def headers(self) -> httpx.Headers:
        """The account's headers and the body's ``content-length`` (built on first use)."""
        if self._headers is None:
            headers = self._headers = self._prepared_headers.copy()
            if self._content or self.method == "POST":
                headers["content-length"] = str(len(self._content))
        return self._headers

    @headers.setter
    def headers(self, headers: httpx.Headers) -> None:
        self._headers = headers

    def head(self) -> bytes:
        """The request line and header lines, as this pool sends them."""
        if self._headers is not None:  # read, perhaps changed: as they are now
            return request_head(self)
        length = b"content-length: %d\r\n" % len(self._content)
        if not self._content and self.method != "POST":
            length = b""
        return b"%s %s HTTP/1.1\r\n%b%b\r\n" % (
            self.method.encode("ascii"),
            self.url.raw_path,
            self._header_lines,
            length,
        )


class ReadResponse(httpx.Response):
    """An answer the pool read whole with its head: an ``httpx.Response`` already read
    (``content`` is its body; closed, its connection back in the pool), built without
    ``httpx.Response``'s constructor and read machinery (content decoders, chunkers, a
    context per read), which would cost a small local answer more than the pool's whole
    exchange. Only for bodies sent without a content coding, which need no decoding.

    It sets what ``httpx.Response`` would: its public attributes, and the two private ones
    its properties read (``_content``: what ``content``, ``aread`` and the iterators give;
    ``_request``: what ``request`` gives). tests/integration/test_provider_pool.py checks it
    answers as any read response does."""

    def __init__(
        self,
        status_code: int,
        headers: list[tuple[bytes, bytes]],
        content: bytes,
        request: httpx.Request,
        extensions: dict[str, Any],
    ) -> None:
        self.status_code = status_code
        self.headers = httpx.Headers(headers)
        self._request = request
        self.next_request = None
        self.extensions = extensions
        self.history = []
        self.is_closed = True
        self.is_stream_consumed = True
        self.default_encoding = "utf-8"
        self.stream = _READ
        self._num_bytes_downloaded = len(content)
        self._content = content


_READ: Final = httpx.ByteStream(b"")
"""The stream of every :class:`ReadResponse`: consumed already, there is nothing to read."""


def request_head(request: httpx.Request) -> bytes:
    """The request line and header lines of ``request`` as HTTP/1.1 sends them."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    lines.extend(name + b": " + value + _CRLF for name, value in request.headers.raw)
    lines.append(_CRLF)
    return b"".join(lines)
