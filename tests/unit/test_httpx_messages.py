"""Prepared requests (quotad.daemon.net.httpx_messages.PreparedRequest): what the lean pool
writes is what their headers say, as httpx's transport reads them."""

from __future__ import annotations

import httpx

from quotad.daemon.net.httpx_messages import PreparedRequest, request_head


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
