"""Pipelined requests for the HTTP front door fuzz (:mod:`tests.support.http_fuzz`): several
requests written at once on one connection, in one write or cut in pieces anywhere (inside a
head, a chunk size, a body), before any answer is read, as HTTP/1.1 allows. The members are the
fuzzer's well-formed cases (bodies mutated, shaped to hurt: some past ``max_body_mb``, which
closes the connection), sent with a ``content-length``, a chunked body or ``expect:
100-continue``, between GETs and HEADs of ``/healthz``, ``/v1/models``, ``/metrics`` and a path
that is none, now and then one that asks to close (``connection: close``, HTTP/1.0), and last,
now and then, one of the fuzzer's requests mutated in its bytes (answered or not).

The answers are read back as a client reads them (:func:`send_pipeline`) and checked: each a
well-framed HTTP/1.1 answer (a HEAD's with no body, a chunked one's chunks and trailers whole,
interim ``100 Continue`` answers skipped), one per request in order, up to the first that
closes the connection (its request asked to, or the answer says ``connection: close``), and
nothing after that; no request left unanswered while the connection stays open.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tests.support.http_fuzz import Case, Results

PIPELINED_SHARE: Final = 0.04
"""The share of cases that are pipelines (drawn from a random generator of their own)."""
PIECE_PAUSE_S: Final = 0.002
"""The pause between the pieces of a pipeline written in pieces (far below the fuzz daemon's
``read_timeout_s``)."""
MAX_HEAD: Final = 256 * 1024
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")
_PLAIN_GETS: Final = (
    ("GET", "/healthz"),
    ("GET", "/v1/models"),
    ("HEAD", "/healthz"),
    ("HEAD", "/v1/models"),
    ("GET", "/metrics"),
    ("GET", "/nowhere"),
    ("HEAD", "/nowhere"),
)


@dataclass
class Member:
    """One request of a pipeline: its bytes, whether it asks that the connection close after
    its answer, whether it is a HEAD (an answer without a body), and whether it may go
    unanswered (a request mutated in its bytes, last)."""

    data: bytes
    closes: bool = False
    head: bool = False
    optional: bool = False
    label: str = ""


@dataclass
class Pipeline:
    """The requests of one connection, and where their bytes are cut into writes."""

    members: list[Member]
    cuts: list[int]

    def describe(self) -> str:
        return " | ".join(member.label for member in self.members)


def pipeline(rnd: random.Random, cases: Callable[[], Case]) -> Pipeline:
    """A pipeline of 2 to 8 requests from ``rnd``; ``cases`` gives the fuzzer's cases."""
    members: list[Member] = []
    count = rnd.randint(2, 8)
    for _ in range(count):
        if rnd.random() < 0.3:
            method, path = rnd.choice(_PLAIN_GETS)
            head = f"{method} {path} HTTP/1.1\r\nhost: fuzz\r\n"
            closes = rnd.random() < 0.04
            if closes:
                head += "connection: close\r\n"
            members.append(
                Member((head + "\r\n").encode(), closes, method == "HEAD", label=f"{method} {path}")
            )
            continue
        case = cases()
        members.append(_framed(rnd, case.path, case.headers, case.body))
    if rnd.random() < 0.05:  # HTTP/1.0: answered, then closed
        members.insert(rnd.randrange(len(members) + 1), Member(
            b"GET /healthz HTTP/1.0\r\n\r\n", closes=True, label="GET /healthz HTTP/1.0"
        ))  # fmt: skip
    if rnd.random() < 0.2:
        case = cases()
        if case.raw is not None:
            members.append(Member(case.raw, optional=True, label=f"raw {case.raw[:40]!r}"))
    size = sum(len(member.data) for member in members)
    cuts = sorted({rnd.randrange(1, size) for _ in range(rnd.choice((0, 0, 1, 2, 4)))})
    return Pipeline(members, cuts)


def _framed(rnd: random.Random, path: str, headers: dict[str, str], body: bytes) -> Member:
    """A well-formed request of ``body`` on ``path``: with a content-length, in chunks, or
    asking ``expect: 100-continue``."""
    head = f"POST {path} HTTP/1.1\r\nhost: fuzz\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    framing = rnd.random()
    if framing < 0.2 and body:
        chunks = []
        at = 0
        while at < len(body):
            size = rnd.choice((1, 5, 100, 4096, len(body)))
            chunks.append(b"%x\r\n%b\r\n" % (len(body[at : at + size]), body[at : at + size]))
            at += size
        data = head.encode("latin-1") + b"transfer-encoding: chunked\r\n\r\n"
        return Member(data + b"".join(chunks) + b"0\r\n\r\n", label=f"chunked {path}")
    if framing < 0.3:
        head += "expect: 100-continue\r\n"
    head += f"content-length: {len(body)}\r\n\r\n"
    return Member(head.encode("latin-1") + body, label=f"{path} {body[:60]!r}")


class _Reader:
    """Bytes from a socket, read as they are needed; None at the end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.ended = False

    def _more(self) -> bool:
        if self.ended:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.ended = True
            return False
        self.buffer += data
        return True

    def until(self, marker: bytes, limit: int) -> bytes | None:
        """The bytes up to and with ``marker``; None at the end before it, or past ``limit``."""
        while (found := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit or not self._more():
                return None
        end = found + len(marker)
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data

    def exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._more():
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def rest(self) -> bytes:
        """Everything until the end."""
        while self._more():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


class BadAnswer(Exception):
    """An answer that is not well-framed HTTP/1.1."""


def read_answer(reader: _Reader, head_request: bool) -> Answer | None:
    """The next final answer (interim ones skipped); None at the end before one begins."""
    while True:
        head = reader.until(b"\r\n\r\n", MAX_HEAD)
        if head is None:
            if reader.buffer:
                raise BadAnswer(f"an answer cut short: {bytes(reader.buffer[:200])!r}")
            return None
        line, *lines = head[:-4].split(b"\r\n")
        matched = _STATUS_LINE.fullmatch(line)
        if matched is None:
            raise BadAnswer(f"not a status line: {line[:200]!r}")
        status = int(matched[1])
        headers: dict[str, str] = {}
        for header in lines:
            name, colon, value = header.partition(b":")
            if not colon or not name or name != name.strip():
                raise BadAnswer(f"not a header: {header[:200]!r}")
            headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
        if status == 100:
            continue
        if 100 < status < 200:
            raise BadAnswer(f"an interim answer {status}")
        return Answer(status, headers, _body(reader, status, headers, head_request))


def _body(reader: _Reader, status: int, headers: dict[str, str], head_request: bool) -> bytes:
    if head_request or status in (204, 304):
        return b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size_line = reader.until(b"\r\n", 1024)
            if size_line is None:
                raise BadAnswer("a chunked answer cut short")
            size = int(size_line.partition(b";")[0].strip(), 16)
            if size == 0:
                break
            data = reader.exactly(size + 2)
            if data is None or not data.endswith(b"\r\n"):
                raise BadAnswer("a chunk cut short or longer than its size")
            parts.append(data[:-2])
        while (trailer := reader.until(b"\r\n", MAX_HEAD)) not in (b"\r\n", None):
            pass
        if trailer is None:
            raise BadAnswer("a chunked answer's trailers cut short")
        return b"".join(parts)
    if "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit():
            raise BadAnswer(f"content-length {length!r}")
        body = reader.exactly(int(length))
        if body is None:
            raise BadAnswer(f"a body shorter than its content-length {length}")
        return body
    return reader.rest()  # to the close


def send_pipeline(host: str, port: int, case: Case, results: Results) -> None:
    """Write ``case``'s pipeline on a new connection (from a thread of its own, so that the
    answers are read meanwhile) and read and check its answers (see the module docstring)."""
    assert case.pipeline is not None
    members = case.pipeline.members
    data = b"".join(member.data for member in members)
    bounds = [0, *case.pipeline.cuts, len(data)]
    with socket.create_connection((host, port), timeout=30) as sock:

        def write() -> None:
            try:
                for start, end in itertools.pairwise(bounds):
                    if start:
                        time.sleep(PIECE_PAUSE_S)
                    sock.sendall(data[start:end])
            except OSError:
                pass  # closed after a refusal: what is not answered is checked below

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            problem = _check_answers(_Reader(sock), members, case, results)
        except (BadAnswer, ValueError) as error:
            problem = f"a bad answer: {error}"
        except TimeoutError:
            problem = "an answer never came (30 s)"
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            writer.join()
    if problem is not None:
        results.internal.append(f"pipeline: {problem}: {case.pipeline.describe()}"[:900])


def _check_answers(
    reader: _Reader, members: list[Member], case: Case, results: Results
) -> str | None:
    for index, member in enumerate(members):
        answer = read_answer(reader, member.head)
        if answer is None:
            if member.optional:
                return None
            return f"request {index + 1} of {len(members)} never answered, the connection closed"
        asked = replace(case, path=f"(pipeline) {member.label}", body=member.data)
        results.note(asked, answer.status, answer.body, answer.headers.get("x-quotad-request-id"))
        if answer.closes or member.closes:
            after = reader.rest()
            if after:
                return f"bytes after an answer that closes ({index + 1}): {after[:200]!r}"
            return None
    return None
