"""Prepared requests and read responses (quotad.daemon.net.httpx_messages): what the lean pool
writes is what a request's headers say, as httpx's transport reads them; and both read, over
httpx's public surface, as what httpx's own constructors build from the same parts (they set
httpx internals to be cheap: these tests pin them)."""

from __future__ import annotations

import httpx
import pytest

from quotad.daemon.net.httpx_messages import PreparedRequest, ReadResponse, request_head


def test_a_prepared_request_writes_what_its_headers_say() -> None:
    headers = httpx.Headers({"host": "h:1", "x-a": "b"})
    lines = b"host: h:1\r\nx-a: b\r\n"
    url = httpx.URL("http://h:1/v1/x?q=1")
    post = PreparedRequest("POST", url, headers, lines, b"{}", {"timeout": {}})
    written = post.head()
    assert written == b"POST /v1/x?q=1 HTTP/1.1\r\nhost: h:1\r\nx-a: b\r\ncontent-length: 2\r\n\r\n"
    assert request_head(post) == written  # what httpx's transport is given: the same
    assert post.content == b"{}"
    assert post.headers["content-length"] == "2"
    post.headers["x-b"] = "c"  # changed once read: written as it is now
    assert post.head().endswith(b"x-b: c\r\n\r\n")
    assert "x-b" not in headers  # the account's headers are not touched
    get = PreparedRequest("GET", url, headers, lines, b"", {})
    assert b"content-length" not in get.head()
    assert "content-length" not in get.headers


def test_a_prepared_request_is_what_httpx_would_build() -> None:
    """Pins the httpx internals PreparedRequest sets (see its module): everything public reads
    as on an ``httpx.Request`` built by httpx's own constructor from the same parts."""
    headers = httpx.Headers({"host": "h:1", "authorization": "Bearer k"})
    lines = b"host: h:1\r\nauthorization: Bearer k\r\n"
    url = httpx.URL("http://h:1/v1/chat/completions")
    body = b'{"model": "m"}'
    prepared = PreparedRequest("POST", url, headers, lines, body, {"timeout": {}})
    public = httpx.Request("POST", url, headers=headers, content=body, extensions={"timeout": {}})
    assert prepared.content == public.content == body
    assert prepared.read() == public.read()
    assert list(prepared.headers.multi_items()) == list(public.headers.multi_items())
    assert (prepared.method, prepared.url, prepared.extensions) == (
        public.method,
        public.url,
        public.extensions,
    )
    assert b"".join(prepared.stream) == b"".join(public.stream)  # type: ignore[arg-type]
    assert prepared.head().lower() == request_head(public).lower()  # httpx: Content-Length


@pytest.mark.anyio
async def test_a_read_response_is_what_httpx_would_build() -> None:
    """Pins the httpx internals ReadResponse sets (see its module): everything public reads
    as on an ``httpx.Response`` built by httpx's own constructor from the same parts."""
    request = httpx.Request("GET", "http://h:1/v1/models")
    head = [(b"content-type", b"application/json"), (b"content-length", b"16")]
    body = b'{"object":"lis"}'
    extensions = {"http_version": b"HTTP/1.1", "reason_phrase": b"OK"}
    ours = ReadResponse(200, head, body, request, dict(extensions))
    public = httpx.Response(200, headers=head, content=body, request=request, extensions=extensions)
    for response in (ours, public):
        assert response.is_closed
        assert response.is_stream_consumed
    assert ours.content == public.content == body
    assert ours.text == public.text
    assert ours.request is public.request is request
    assert list(ours.headers.multi_items()) == list(public.headers.multi_items())
    assert (ours.status_code, ours.reason_phrase, ours.http_version) == (
        public.status_code,
        public.reason_phrase,
        public.http_version,
    )
    assert ours.encoding == public.encoding
    assert ours.num_bytes_downloaded == len(body)
    assert await ours.aread() == await public.aread() == body
    assert ours.read() == public.read()
    assert b"".join(ours.iter_bytes()) == b"".join(public.iter_bytes()) == body
    assert b"".join([p async for p in ours.aiter_bytes()]) == body
    assert ours.is_success
    assert not ours.has_redirect_location
    ours.raise_for_status()
    await ours.aclose()
