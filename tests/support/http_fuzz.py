"""Seeded random and mutated requests for the HTTP front door, and a runner that sends them to
a real daemon and sorts its answers: used by tests/integration/test_http_fuzz.py (a few thousand)
and bench/http_fuzz.py (many more).

Most cases are well-formed HTTP carrying a mutated body (valid OpenAI, Anthropic and embeddings
requests, then values replaced by random JSON, keys dropped or doubled, nesting thousands deep,
huge numbers, bytes flipped, inserted or cut, invalid UTF-8, lone surrogates) with random
``x-quotad-*`` headers; the rest are whole requests whose bytes are mutated, head included,
sent on a raw socket. A share of the well-formed ones (:data:`SHAPED_SHARE`) are shaped to
hurt instead (:mod:`tests.support.http_fuzz_shapes`), drawn from a random generator of their own
so that the other cases of a seed stay as they were."""

from __future__ import annotations

import random
import socket
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from tests.support.http_fuzz_pipelines import PIPELINED_SHARE, Pipeline, pipeline, send_pipeline
from tests.support.http_fuzz_shapes import shaped

_DEEP = "\x01deep-"
SHAPED_SHARE = 0.15
"""The share of well-formed cases shaped to hurt (see :mod:`tests.support.http_fuzz_shapes`)."""
MODELS = ("sim/gpt-4o-mini", "claude/claude-3-5-haiku-latest", "fast", "nope", "", "a/b/c")
PATHS = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings")
FIELDS = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
    "stream", "stream_options", "tools", "tool_choice", "response_format", "n", "user", "seed",
    "metadata", "logit_bias", "system", "top_k", "input", "dimensions", "encoding_format",
    "content", "role", "type", "text", "image_url", "source", "tool_calls", "tool_call_id",
)  # fmt: skip
STRINGS = ("", "x", "user", "assistant", "tool", "system", "text", "image", "é漢字🙂", "\x00",
           "a" * 3000, "{}", "[", "\\", '"', "null")  # fmt: skip


def seeds(model: str) -> dict[str, list[dict[str, Any]]]:
    """Valid requests per path, for ``model``."""
    user = {"role": "user", "content": "hello, I am ana@example.com"}  # masked, restored
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    return {
        "/v1/chat/completions": [
            {"model": model, "messages": [user], "max_tokens": 5},
            {"model": model, "messages": [{"role": "system", "content": "be brief"}, user],
             "max_tokens": 3, "temperature": 0.5, "stream": True,
             "stream_options": {"include_usage": True}},
            {"model": model, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "look"},
                                             {"type": "image_url",
                                              "image_url": {"url": "data:image/png;base64,AA=="}}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}],
             "tools": [tool], "tool_choice": "auto", "max_completion_tokens": 4,
             "response_format": {"type": "json_object"}, "metadata": {"k": "v"}},
        ],
        "/v1/messages": [
            {"model": model, "max_tokens": 5, "messages": [user]},
            {"model": model, "max_tokens": 5, "system": "be brief", "stream": True,
             "messages": [user, {"role": "assistant", "content": "hi"}, user]},
            {"model": model, "max_tokens": 5, "tools": [
                {"name": "f", "input_schema": {"type": "object"}}],
             "messages": [{"role": "user", "content": [
                 {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}},
                 {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                              "data": "AA=="}}]},
                 {"role": "assistant", "content": [
                     {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": "t1", "content": [
                         {"type": "text", "text": "42 from bo@example.com"}]}]}]},
        ],
        "/v1/embeddings": [
            {"model": model, "input": "hello"},
            {"model": model, "input": ["a", "b"], "encoding_format": "base64"},
        ],
    }  # fmt: skip


@dataclass
class Case:
    """One request: well-formed HTTP (``path``, ``headers``, ``body``) or ``raw`` bytes."""

    path: str
    headers: dict[str, str]
    body: bytes
    raw: bytes | None = None
    pipeline: Pipeline | None = None
    """Several requests on one connection, written at once (:mod:`.http_fuzz_pipelines`);
    the case's other fields are then empty."""


class Fuzzer:
    """Cases from one seed: the same seed, the same cases."""

    def __init__(
        self, seed: int | str, fields: tuple[str, ...] = FIELDS, pipelined: bool = True
    ) -> None:
        self.random = random.Random(seed)
        self.shapes = random.Random(f"{seed}:shapes")
        self.pipelines = random.Random(f"{seed}:pipelines") if pipelined else None
        """Which cases are pipelines, and theirs: drawn after a case is made (so that the
        other cases of a seed stay as they were), their requests from a fuzzer of their own."""
        self.seed = seed
        self.fields = fields
        """The keys a mutation adds (the request's, by default)."""
        self._deep: list[int] = []

    def case(self) -> Case:
        """The next case: one request, or now and then a pipeline of them."""
        case = self._one_case()
        if self.pipelines is not None and self.pipelines.random() < PIPELINED_SHARE:
            members = Fuzzer(f"{self.seed}:{self.pipelines.random()}", pipelined=False)
            return Case("(pipeline)", {}, b"", pipeline=pipeline(self.pipelines, members.case))
        return case

    def _one_case(self) -> Case:
        rnd = self.random
        path = rnd.choice(PATHS)
        model = rnd.choice(MODELS[:3]) if rnd.random() < 0.8 else rnd.choice(MODELS)
        body = self.mutated_json(rnd.choice(seeds(model)[path]), rnd.choice((0, 0, 1, 1, 2, 3)))
        for _ in range(rnd.choice((0, 0, 0, 0, 0, 1, 2))):
            body = self._mutate_bytes(body)
        headers = {"content-type": "application/json", "x-quotad-app": "fuzz"}
        if rnd.random() < 0.1:
            name = rnd.choice(("x-quotad-priority", "x-quotad-cache", "x-quotad-max-wait"))
            headers[name] = rnd.choice(
                ("high", "low", "bypass", "only", "1.5", "-1", "nan", "\xe9")
            )
        if rnd.random() < 0.9:
            if self.shapes.random() < SHAPED_SHARE:
                path, body = shaped(self.shapes, model)
            return Case(path, headers, body)
        head = f"POST {path} HTTP/1.1\r\nhost: fuzz\r\ncontent-length: {len(body)}\r\n"
        raw = head.encode() + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        raw += b"\r\n" + body
        for _ in range(rnd.randint(1, 4)):
            raw = self._mutate_bytes(raw)
        return Case(path, headers, body, raw)

    def mutated_json(self, value: Any, rounds: int) -> bytes:
        """A copy of ``value`` mutated ``rounds`` times (:meth:`_mutate_value`), as JSON;
        nesting thousands deep is made in the bytes."""
        value = msgspec.json.decode(msgspec.json.encode(value))  # a copy to mutate
        self._deep = []
        for _ in range(rounds):
            value = self._mutate_value(value, 0)
        body = msgspec.json.encode(value)
        for index, depth in enumerate(self._deep):
            opening, closing = (b"[", b"]") if depth % 2 else (b'{"a":', b"}")
            deep = opening * depth + b"1" + closing * depth
            body = body.replace(f'"{_DEEP}{index}"'.encode(), deep)
        return body

    def _random_value(self, depth: int) -> Any:
        rnd = self.random
        kind = rnd.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return rnd.random() < 0.5
        if kind == 2:
            return rnd.choice((0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64, -(10**30), 5))
        if kind == 3:
            return rnd.choice((0.5, -0.0, 1e308, -1e-308, 3.0, 2.5))
        if kind in (4, 5):
            return rnd.choice(STRINGS)
        if kind == 6:
            return [self._random_value(depth + 1) for _ in range(rnd.randint(0, 3))]
        return {
            rnd.choice(self.fields): self._random_value(depth + 1) for _ in range(rnd.randint(0, 3))
        }

    def _mutate_value(self, value: Any, depth: int) -> Any:
        """``value`` with one node replaced, dropped, added to, or nested deep."""
        rnd = self.random
        descend = depth == 0 or rnd.random() < 0.7
        if isinstance(value, dict) and value and descend and depth < 6:
            key = rnd.choice(list(value))
            choice = rnd.random()
            if choice < 0.15:
                del value[key]
            elif choice < 0.3:
                value[rnd.choice(self.fields)] = self._random_value(0)
            else:
                value[key] = self._mutate_value(value[key], depth + 1)
            return value
        if isinstance(value, list) and value and descend and depth < 6:
            index = rnd.randrange(len(value))
            value[index] = self._mutate_value(value[index], depth + 1)
            return value
        if rnd.random() < 0.15:  # nested far deeper than anyone needs: made in the bytes
            self._deep.append(rnd.choice((50, 600, 1200, 3000)))
            return f"{_DEEP}{len(self._deep) - 1}"
        return self._random_value(0)

    def _mutate_bytes(self, data: bytes) -> bytes:
        rnd = self.random
        if not data:
            return bytes([rnd.randrange(256)])
        at = rnd.randrange(len(data))
        choice = rnd.randrange(8)
        if choice == 0:  # flip a byte
            return data[:at] + bytes([rnd.randrange(256)]) + data[at + 1 :]
        if choice == 1:  # insert bytes that are not UTF-8, or control bytes
            return (
                data[:at]
                + rnd.choice((b"\xff", b"\xc3\x28", b"\x80", b"\x00", b"\x1b"))
                + data[at:]
            )
        if choice == 2:  # cut
            return data[:at]
        if choice == 3:  # drop a range
            return data[:at] + data[at + rnd.randint(1, 40) :]
        if choice == 4:  # repeat a range (duplicate keys, among other things)
            end = min(len(data), at + rnd.randint(1, 60))
            return data[:end] + data[at:end] + data[end:]
        if choice == 5:  # an escape: lone surrogates, NUL, a wrong one
            escape = rnd.choice((rb"\ud800", rb"\udfff", rb"\u0000", rb"\x", rb"\uZZZZ"))
            return data[:at] + escape + data[at:]
        if choice == 6:  # a huge number
            number = rnd.choice((b"9" * 400, b"1e999", b"-1e-999", b"0." + b"0" * 500 + b"1"))
            return data[:at] + number + data[at:]
        return data[:at] + rnd.choice((b'"model": "fast", ', b'"stream": true, ', b",")) + data[at:]


@dataclass
class Results:
    """What the daemon answered: statuses counted; answers that say it failed inside."""

    statuses: Counter[int] = field(default_factory=Counter)
    internal: list[str] = field(default_factory=list)
    """Cases answered 500 (or another 5xx than 502-505: upstream error, overloaded, timeout,
    HTTP version), or whose stream carried an internal error, or that got no answer though
    their HTTP was well formed (twice: see ``retried``)."""
    answered_ids: list[str] = field(default_factory=list)
    """The ``x-quotad-request-id`` of every case answered 200: each must have its one ledger
    row (:func:`ledger_problems`)."""
    retried: int = 0
    """Well-formed cases sent again on a new connection after their keep-alive connection
    failed under them: HTTP/1.1's race of a request sent as the server closes the connection
    for idleness (``http.idle_timeout_s``), which clients answer by retrying."""

    def note(self, case: Case, status: int, body: bytes, request_id: str | None = None) -> None:
        self.statuses[status] += 1
        if status == 200 and request_id:
            self.answered_ids.append(request_id)
        failed_inside = status >= 500 and status not in (502, 503, 504, 505)
        if failed_inside or b"internal error" in body:
            self.internal.append(f"{status} {case.path} {case.body[:300]!r} {case.raw!r:.300}")


def send(http: httpx.Client, base_url: str, case: Case, results: Results) -> None:
    """Send one case and note the answer (raw cases on a socket of their own)."""
    if case.pipeline is not None:
        host, _, port = base_url.removeprefix("http://").rpartition(":")
        send_pipeline(host, int(port), case, results)
        return
    if case.raw is None:
        headers = {name.encode(): value.encode("latin-1") for name, value in case.headers.items()}
        try:
            try:
                response = http.post(base_url + case.path, content=case.body, headers=headers)
            except httpx.TransportError:  # the idle-close race: once more, on a new connection
                results.retried += 1
                response = http.post(base_url + case.path, content=case.body, headers=headers)
        except httpx.HTTPError as error:
            results.internal.append(f"no answer: {error!r} {case.path} {case.body[:300]!r}")
            return
        request_id = response.headers.get("x-quotad-request-id")
        results.note(case, response.status_code, response.content, request_id)
        return
    host, _, port = base_url.removeprefix("http://").rpartition(":")
    answer = b""
    try:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(case.raw)
            while b"\r\n\r\n" not in answer:  # the first answer's head, or the close
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            request_id = None
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"x-quotad-request-id":
                    request_id = value.strip().decode("latin-1")
                if name.lower() == b"content-length" and value.strip().isdigit():
                    while len(body) < int(value):
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        body += chunk
            answer = head + b"\r\n\r\n" + body
    except OSError:
        return  # reset (or timed out): a refusal, or a request still incomplete
    if answer.startswith(b"HTTP/1.1 "):
        results.note(case, int(answer[9:12]), answer, request_id)


def ledger_problems(state_dir: Path, answered_ids: list[str]) -> list[str]:
    """What breaks "one ledger row per request" in ``state_dir``'s ledger (read-only): a
    request id with more than one row, a 200 answer's id with none."""
    db = sqlite3.connect(f"file:{state_dir / 'quotad.db'}?mode=ro", uri=True)
    try:
        counts = dict(db.execute("SELECT request_id, COUNT(*) FROM ledger GROUP BY request_id"))
    finally:
        db.close()
    problems = [f"{count} rows for {rid}" for rid, count in counts.items() if count > 1]
    problems += [f"no row for 200 answer {rid}" for rid in answered_ids if rid not in counts]
    return problems


def run(base_url: str, seed: int, count: int, workers: int = 8) -> Results:
    """Send ``count`` cases of seed ``seed`` from ``workers`` threads (each its own
    keep-alive client); what the daemon answered."""
    fuzzer = Fuzzer(seed)
    return run_cases(base_url, [fuzzer.case() for _ in range(count)], workers)


def run_cases(base_url: str, cases: list[Case], workers: int = 8) -> Results:
    """Send ``cases`` from ``workers`` threads; what the daemon answered."""
    results = Results()

    def worker(share: list[Case]) -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            for case in share:
                send(http, base_url, case, results)

    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(worker, cases[index::workers]) for index in range(workers)]:
            done.result()
    return results
