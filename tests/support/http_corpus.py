"""One corpus of malformed and ambiguous HTTP/1.1 requests (request smuggling classics, bad
bytes, bad framing, oversized and odd heads) and the verdicts of two reference parsers on each:
h11 and httptools (llhttp) used directly. The differential tests feed the same corpus to
quotad's parser and server and compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import h11
import httptools

Outcome = Literal["accepted", "refused", "incomplete"]
Parsed = tuple[str, str, bytes]
"""A request as parsed: method, target, body."""

HEAD_LIMIT = 8192
"""The head limit every parser under comparison is given."""


@dataclass
class Verdict:
    """What a parser made of some bytes: the requests it completed, in order, and whether it
    then refused the rest (``refused``), waits for more (``incomplete``) or took it all."""

    outcome: Outcome
    requests: list[Parsed] = field(default_factory=list)


def _post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST /p HTTP/1.1\r\nhost: a\r\n" + headers + b"\r\n" + body


CHUNKED = b"transfer-encoding: chunked\r\n"
GET = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"

CORPUS: dict[str, bytes] = {
    # ----------------------------------------------------------- valid, for contrast
    "valid get": GET,
    "valid post": _post(b"content-length: 5\r\n", b"hello"),
    "valid chunked": _post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n"),
    "valid chunked, extensions and trailers": _post(
        CHUNKED, b'5;a=b;c="d e"\r\nhello\r\n0;z\r\nx-trailer: 1\r\n\r\n'
    ),
    "valid pipelined": GET + _post(b"content-length: 2\r\n", b"hi") + GET,
    "valid http/1.0 without host": b"GET /old HTTP/1.0\r\n\r\n",
    "valid obs-text in a value": b"GET / HTTP/1.1\r\nhost: a\r\nx: caf\xe9\r\n\r\n",
    "valid absolute-form target": b"GET http://a/p?q=1 HTTP/1.1\r\nhost: a\r\n\r\n",
    "valid asterisk-form target": b"OPTIONS * HTTP/1.1\r\nhost: a\r\n\r\n",
    "valid expect 100-continue": _post(b"expect: 100-continue\r\ncontent-length: 2\r\n", b"ok"),
    "valid leading zeros in a chunk size": _post(CHUNKED, b"0005\r\nhello\r\n0\r\n\r\n"),
    "valid CONNECT": b"CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
    "valid upgrade": b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n",
    # ----------------------------------------------------------- content-length and transfer-enc.
    "CL.TE": _post(b"content-length: 6\r\n" + CHUNKED, b"0\r\n\r\nX"),
    "TE.CL": _post(CHUNKED + b"content-length: 3\r\n", b"1\r\nA\r\n0\r\n\r\n"),
    "CL.TE with a smuggled GET": _post(
        b"content-length: 35\r\n" + CHUNKED, b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"
    ),
    "duplicate content-length, same": _post(b"content-length: 2\r\ncontent-length: 2\r\n", b"hi"),
    "duplicate content-length, differing": _post(
        b"content-length: 2\r\ncontent-length: 3\r\n", b"hi!"
    ),
    "content-length list": _post(b"content-length: 2, 2\r\n", b"hi"),
    "content-length with a sign": _post(b"content-length: +2\r\n", b"hi"),
    "content-length negative": _post(b"content-length: -1\r\n"),
    "content-length hex": _post(b"content-length: 0x2\r\n", b"hi"),
    "content-length with inner space": _post(b"content-length: 1 0\r\n", b"0123456789"),
    "content-length overflow": _post(b"content-length: 99999999999999999999999999\r\n"),
    "content-length empty": _post(b"content-length:\r\n"),
    "content-length shorter than the body": _post(b"content-length: 2\r\n", b"hiGARBAGE"),
    "content-length longer than the body": _post(b"content-length: 10\r\n", b"hi"),
    "transfer-encoding gzip, chunked": _post(b"transfer-encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
    "transfer-encoding chunked, gzip": _post(b"transfer-encoding: chunked, gzip\r\n"),
    "transfer-encoding gzip": _post(b"transfer-encoding: gzip\r\n"),
    "transfer-encoding twice": _post(CHUNKED + CHUNKED, b"0\r\n\r\n"),
    "transfer-encoding Chunked": _post(b"transfer-encoding: Chunked\r\n", b"0\r\n\r\n"),
    "transfer-encoding xchunked": _post(b"transfer-encoding: xchunked\r\n", b"0\r\n\r\n"),
    "transfer-encoding with a space before the colon": _post(
        b"transfer-encoding : chunked\r\n", b"0\r\n\r\n"
    ),
    "transfer-encoding folded": _post(b"transfer-encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    "transfer_encoding (an underscore)": _post(b"transfer_encoding: chunked\r\n", b"0\r\n\r\n"),
    "transfer-encoding in http/1.0": (
        b"POST /p HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding with a vertical tab": _post(
        b"transfer-encoding: \x0bchunked\r\n", b"0\r\n\r\n"
    ),
    # ----------------------------------------------------------- chunk framing
    "chunk size with a trailing blank": _post(CHUNKED, b"1 \r\nA\r\n0\r\n\r\n"),
    "chunk size with a leading blank": _post(CHUNKED, b" 1\r\nA\r\n0\r\n\r\n"),
    "chunk size with a tab": _post(CHUNKED, b"1\t\r\nA\r\n0\r\n\r\n"),
    "chunk size with a blank before its extension": _post(CHUNKED, b"1 ;x\r\nA\r\n0\r\n\r\n"),
    "chunk size 0x": _post(CHUNKED, b"0x1\r\nA\r\n0\r\n\r\n"),
    "chunk size empty": _post(CHUNKED, b"\r\nA\r\n0\r\n\r\n"),
    "chunk size negative": _post(CHUNKED, b"-1\r\nA\r\n0\r\n\r\n"),
    "chunk size overflow (2^72)": _post(CHUNKED, b"ffffffffffffffffff\r\nA\r\n0\r\n\r\n"),
    "chunk size 2^64-1": _post(CHUNKED, b"ffffffffffffffff\r\nA\r\n0\r\n\r\n"),
    "chunk size 2^63": _post(CHUNKED, b"8000000000000000\r\nA\r\n0\r\n\r\n"),
    "chunk size line with a bare LF": _post(CHUNKED, b"1\nA\r\n0\r\n\r\n"),
    "chunk data ended by a bare LF": _post(CHUNKED, b"1\r\nA\n0\r\n\r\n"),
    "last chunk line with a bare LF": _post(CHUNKED, b"1\r\nA\r\n0\n\r\n"),
    "chunked body ended by a bare LF": _post(CHUNKED, b"1\r\nA\r\n0\r\n\n"),
    "chunk data longer than its size": _post(CHUNKED, b"1\r\nAB\r\n0\r\n\r\n"),
    "chunk data shorter than its size": _post(CHUNKED, b"3\r\nA\r\n0\r\n\r\n"),
    "chunk data without its CRLF": _post(CHUNKED, b"1\r\nA0\r\n\r\n"),
    "chunk extension with a bare CR": _post(CHUNKED, b"1;a\rb\r\nA\r\n0\r\n\r\n"),
    "chunk extension with a NUL": _post(CHUNKED, b"1;a\x00\r\nA\r\n0\r\n\r\n"),
    "request line in the trailers": _post(CHUNKED, b"0\r\nGET /x HTTP/1.1\r\n\r\n"),
    "folded trailer": _post(CHUNKED, b"0\r\nx-t: a\r\n b\r\n\r\n"),
    "trailer with a control byte": _post(CHUNKED, b"0\r\nx-t: a\x01\r\n\r\n"),
    "trailer without a colon": _post(CHUNKED, b"0\r\nnocolon\r\n\r\n"),
    # ----------------------------------------------------------- line ends and folding
    "bare LF everywhere": b"GET / HTTP/1.1\nhost: a\n\n",
    "bare LF after the request line": b"GET / HTTP/1.1\nhost: a\r\n\r\n",
    "bare LF after a header": b"GET / HTTP/1.1\r\nhost: a\nx: y\r\n\r\n",
    "bare LF ending the head": b"GET / HTTP/1.1\r\nhost: a\r\n\n",
    "bare CR in a header value": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\rb\r\n\r\n",
    "bare CR ending a header": b"GET / HTTP/1.1\r\nhost: a\rx: y\r\n\r\n",
    "obs-fold in a header": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\r\n b\r\n\r\n",
    "obs-fold with a tab": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\r\n\tb\r\n\r\n",
    "obs-fold of content-length": _post(b"content-length:\r\n 2\r\n", b"hi"),
    "a line starting with a blank after the request line": (b"GET / HTTP/1.1\r\n host: a\r\n\r\n"),
    # ----------------------------------------------------------- control bytes
    "NUL in a header name": b"GET / HTTP/1.1\r\nhost: a\r\nx\x00y: 1\r\n\r\n",
    "NUL in a header value": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x00b\r\n\r\n",
    "NUL in the target": b"GET /a\x00b HTTP/1.1\r\nhost: a\r\n\r\n",
    "NUL before the request": b"\x00GET / HTTP/1.1\r\nhost: a\r\n\r\n",
    "NUL in the method": b"G\x00T / HTTP/1.1\r\nhost: a\r\n\r\n",
    "control byte in a value": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x01b\r\n\r\n",
    "DEL in a value": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x7fb\r\n\r\n",
    "escape in a value": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x1b[31mb\r\n\r\n",
    "control byte in the target": b"GET /a\x01b HTTP/1.1\r\nhost: a\r\n\r\n",
    "DEL in the target": b"GET /a\x7fb HTTP/1.1\r\nhost: a\r\n\r\n",
    "obs-text in the target": b"GET /caf\xe9 HTTP/1.1\r\nhost: a\r\n\r\n",
    "tab in the target": b"GET /a\tb HTTP/1.1\r\nhost: a\r\n\r\n",
    "obs-text in a header name": b"GET / HTTP/1.1\r\nhost: a\r\nx\xe9: 1\r\n\r\n",
    "space in a header name": b"GET / HTTP/1.1\r\nhost: a\r\nx y: 1\r\n\r\n",
    "space before a colon": b"GET / HTTP/1.1\r\nhost: a\r\nx : 1\r\n\r\n",
    "empty header name": b"GET / HTTP/1.1\r\nhost: a\r\n: 1\r\n\r\n",
    "header without a colon": b"GET / HTTP/1.1\r\nhost: a\r\nnocolon\r\n\r\n",
    "separator in a header name": b"GET / HTTP/1.1\r\nhost: a\r\nx(y): 1\r\n\r\n",
    # ----------------------------------------------------------- request lines
    "unknown method": b"FOO / HTTP/1.1\r\nhost: a\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nhost: a\r\n\r\n",
    "method with a separator": b"G(T / HTTP/1.1\r\nhost: a\r\n\r\n",
    "empty method": b" / HTTP/1.1\r\nhost: a\r\n\r\n",
    "two spaces after the method": b"GET  / HTTP/1.1\r\nhost: a\r\n\r\n",
    "two spaces before the version": b"GET /  HTTP/1.1\r\nhost: a\r\n\r\n",
    "tab between method and target": b"GET\t/ HTTP/1.1\r\nhost: a\r\n\r\n",
    "trailing space after the version": b"GET / HTTP/1.1 \r\nhost: a\r\n\r\n",
    "leading space": b" GET / HTTP/1.1\r\nhost: a\r\n\r\n",
    "leading CRLF": b"\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
    "leading LF": b"\nGET / HTTP/1.1\r\nhost: a\r\n\r\n",
    "CRLF after a request": GET + b"\r\n",
    "no version (HTTP/0.9)": b"GET /\r\n\r\n",
    "version HTTP/1.2": b"GET / HTTP/1.2\r\nhost: a\r\n\r\n",
    "version HTTP/2.0": b"GET / HTTP/2.0\r\nhost: a\r\n\r\n",
    "version HTTP/0.9": b"GET / HTTP/0.9\r\nhost: a\r\n\r\n",
    "version HTTP/10.0": b"GET / HTTP/10.0\r\nhost: a\r\n\r\n",
    "version in lower case": b"GET / http/1.1\r\nhost: a\r\n\r\n",
    "version with a suffix": b"GET / HTTP/1.1x\r\nhost: a\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "TLS client hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32,
    # ----------------------------------------------------------- host
    "http/1.1 without host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    "two hosts in http/1.0": b"GET / HTTP/1.0\r\nhost: a\r\nhost: b\r\n\r\n",
    # ----------------------------------------------------------- sizes
    "head over the limit": b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * HEAD_LIMIT + b"\r\n\r\n",
    "head of many headers over the limit": (
        b"GET / HTTP/1.1\r\nhost: a\r\n" + b"x: y\r\n" * (HEAD_LIMIT // 6 + 1) + b"\r\n"
    ),
    "target over the limit": b"GET /" + b"a" * HEAD_LIMIT + b" HTTP/1.1\r\nhost: a\r\n\r\n",
    "head just under the limit": (
        b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"a" * (HEAD_LIMIT - 100) + b"\r\n\r\n"
    ),
    # ----------------------------------------------------------- pipelining
    "valid, then a bad request line": GET + b"GET  / HTTP/1.1\r\nhost: a\r\n\r\n",
    "valid, then CL.TE": GET + _post(b"content-length: 6\r\n" + CHUNKED, b"0\r\n\r\nX"),
    "chunked, then a request in the same bytes": (
        _post(CHUNKED, b"2\r\nhi\r\n0\r\n\r\n") + b"GET /next HTTP/1.1\r\nhost: a\r\n\r\n"
    ),
    "chunked with CRLFCRLF in its data, then a request": (
        _post(CHUNKED, b"4\r\n\r\n\r\n\r\n0\r\n\r\n") + GET
    ),
    "content-length body holding a request": (
        _post(b"content-length: 32\r\n", b"GET /in-body HTTP/1.1\r\nhost: a\r\n") + GET
    ),
}


def h11_verdict(data: bytes) -> Verdict:
    """h11's verdict (as a server) on ``data``, answering each request to move on."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    connection.receive_data(data)
    verdict = Verdict("incomplete")
    request: h11.Request | None = None
    body = b""
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError:
            verdict.outcome = "refused"
            return verdict
        if event is h11.NEED_DATA or event is h11.PAUSED:
            break
        if isinstance(event, h11.Request):
            request, body = event, b""
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            verdict.requests.append(
                (request.method.decode("latin-1"), request.target.decode("latin-1"), body)
            )
            if connection.their_state is h11.MUST_CLOSE or request.method == b"CONNECT":
                break
            if any(name == b"upgrade" for name, _ in request.headers):
                break
            connection.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            connection.send(h11.EndOfMessage())
            if connection.our_state is h11.MUST_CLOSE:
                break
            connection.start_next_cycle()
    if verdict.requests and not _rest_unparsed(connection):
        verdict.outcome = "accepted"
    return verdict


def _rest_unparsed(connection: h11.Connection) -> bool:
    """Bytes h11 holds that it has not made a request of (a next request begun)."""
    return bool(connection.trailing_data[0]) and connection.their_state is h11.IDLE


class _HttptoolsRequests:
    """httptools' callbacks, collecting the requests it completes."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.requests: list[Parsed] = []
        self.url = b""
        self.body = b""
        self.method = ""
        self.begun = False

    def on_message_begin(self) -> None:
        self.url, self.body, self.begun = b"", b"", True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method().decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.requests.append((self.method, self.url.decode("latin-1"), self.body))
        self.begun = False


def httptools_verdict(data: bytes) -> Verdict:
    """httptools' (llhttp's, strict) verdict on ``data``."""
    collector = _HttptoolsRequests()
    try:
        collector.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return Verdict("accepted", collector.requests)
    except httptools.HttpParserError:
        return Verdict("refused", collector.requests)
    complete = collector.requests and not collector.begun
    return Verdict("accepted" if complete else "incomplete", collector.requests)
