"""The provider key never reaches a client in any form, end to end: a raw server that echoes
the key it is sent, in the answer the request asks for (as it is, JSON-escaped wholly, partly
or twice, masked as OpenAI and others mask it, cut, percent-encoded, base64 in a Basic header,
hex, HTML references, deep in an error body, in a successful answer, in a stream's error event
and in its content), answers a real daemon; then no piece of the key is in what the client got
(errors, their details, answers), in ``quotad status``, in the daemon's log at debug level, or
in any byte of its state directory (the ledger)."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import socket
import string
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from quotad.client import Client, QuotadError
from tests.support.daemon import DaemonProcess, daemon_config, sim_provider_config
from tests.support.raw_http import RawHTTPServer, RawRequest

SECRET = "".join(random.SystemRandom().choices(string.ascii_letters + string.digits, k=40))
KEY = f"sk-proj-{SECRET}"


def unicode_escaped(text: str, every: int = 1) -> str:
    return "".join(f"\\u{ord(c):04x}" if i % every == 0 else c for i, c in enumerate(text))


def error(message: str, *, raw: bool = False) -> bytes:
    """An OpenAI error body; ``raw``: ``message`` goes into the JSON as it is (escapes)."""
    text = message if raw else json.dumps(message)[1:-1]
    return b'{"error": {"message": "' + text.encode() + b'", "type": "invalid_request_error"}}'


MASK_ECHOES: dict[str, Callable[[str], str]] = {
    "plain": lambda key: f"Incorrect API key provided: {key}.",
    "openai masked": lambda key: (
        f"Incorrect API key provided: {key[:8]}****...{key[-4:]}. You "
        "can find your API key at https://platform.openai.com/account/api-keys."
    ),
    "issue masked": lambda key: f"invalid key {key[:12]}*****{key[-4:]}",
    "suffix only": lambda key: f"the key ending in ...{key[-4:]} was revoked",
    "ellipsis": lambda key: f"the key …{key[-4:]} was revoked",
    "cut": lambda key: f"invalid key {key[:24]}",
    "basic header": lambda key: (
        "Authorization: Basic " + base64.b64encode(f"user:{key}".encode()).decode()
    ),
    "hex": lambda key: f"key bytes {key.encode().hex()}",
}
"""Messages of JSON error answers, each echoing the key as some server would."""


def answer_for(form: str, key: str) -> tuple[int, str, bytes]:
    """(status, content type, body) echoing ``key`` as ``form`` says."""
    if form in MASK_ECHOES:
        return 401, "application/json", error(MASK_ECHOES[form](key))
    match form:
        case "json escaped":
            return 401, "application/json", error("bad " + unicode_escaped(key), raw=True)
        case "half escaped":
            return 401, "application/json", error(unicode_escaped(key, 2), raw=True)
        case "escaped twice":
            twice = unicode_escaped(key).replace("\\", "\\\\")
            return 401, "application/json", error(twice, raw=True)
        case "deep":
            body = {"error": {"message": "no", "param": {"headers": [f"Bearer {key}"]}}}
            return 400, "application/json", json.dumps(body).encode()
        case "percent text":
            return 400, "text/plain", f"bad key: {quote(key, safe='')}".encode()
        case "html text":
            return 400, "text/html", "".join(f"&#{ord(c)};" for c in key).encode()
        case "server error text":
            return 500, "text/plain", f"upstream refused {key}".encode()
        case "success":
            content = "you sent " + unicode_escaped(key)
            completion = (
                '{"choices": [{"index": 0, "message": {"role": "assistant", "content": "'
                + content
                + '"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, '
                '"completion_tokens": 1}}'
            )
            return 200, "application/json", completion.encode()
    raise AssertionError(form)


def stream_for(form: str, key: str) -> bytes:
    if form == "stream error":
        event = '{"error": {"message": "bad key ' + unicode_escaped(key) + '"}}'
        return f"data: {event}\n\n".encode()
    chunk = {"choices": [{"index": 0, "delta": {"content": f"key: {key}"}}]}
    done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    return f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode()


def echo(request: RawRequest, connection: socket.socket) -> None:
    key = request.headers.get(b"authorization", b"").decode().removeprefix("Bearer ")
    body = json.loads(request.body)
    form = body["messages"][-1]["content"]
    if body.get("stream"):
        payload = stream_for(form, key)
        status, kind = 200, "text/event-stream"
    else:
        status, kind, payload = answer_for(form, key)
    head = f"HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {len(payload)}\r\n\r\n"
    connection.sendall(head.encode() + payload)


FORMS = [
    *MASK_ECHOES,
    "json escaped",
    "half escaped",
    "escaped twice",
    "deep",
    "percent text",
    "html text",
    "server error text",
    "success",
]
STREAM_FORMS = ["stream error", "stream content"]


def pieces_of_the_key(data: str) -> list[str]:
    """What in ``data`` shows the key, by a check of its own: any 8 characters of its secret
    part, or its last 4, as they are or in any encoding the server used."""
    windows = {SECRET[i : i + 8] for i in range(len(SECRET) - 7)} | {SECRET[-4:]}
    encodings = [
        data,
        data.encode().decode("unicode_escape", "replace"),
        re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), data),
        re.sub(r"&#(\d+);", lambda m: chr(int(m.group(1))), data),
        bytes.fromhex("".join(re.findall(r"[0-9a-f]{2}", data))).decode("latin-1"),
    ]
    for run in re.findall(r"[A-Za-z0-9+/=]{16,}", data):
        for start in range(4):
            with contextlib.suppress(ValueError):
                encodings.append(base64.b64decode(run[start:] + "==").decode("latin-1"))
    return sorted({window for text in encodings for window in windows if window in text})


def test_no_form_of_the_key_reaches_a_client_the_ledger_or_the_log(tmp_path: Path) -> None:
    seen: list[str] = []
    with RawHTTPServer(echo) as server:
        config = daemon_config(
            sim_provider_config("echo", server.base_url, extra='api_key_env = "QD_ECHO_KEY"')
        )
        daemon = DaemonProcess(
            config, env={"QD_ECHO_KEY": KEY}, extra_args=("--log-level", "debug")
        )
        with daemon, Client(socket=daemon.socket_path, app="echo") as client:
            for form in FORMS:
                messages = [{"role": "user", "content": form}]
                try:
                    reply = client.chat("echo/m", messages, cache="bypass")
                    seen.append(f"{form}: {reply!r}")
                except QuotadError as refused:
                    seen.append(f"{form}: {refused!r} {refused} {refused.details}")
            for form in STREAM_FORMS:
                messages = [{"role": "user", "content": form}]
                try:
                    for chunk in client.chat_stream("echo/m", messages, cache="bypass"):
                        seen.append(f"{form}: {chunk!r}")
                    seen.append(f"{form}: {client.last_stream_end!r}")
                except QuotadError as broken:
                    seen.append(f"{form}: {broken!r} {broken} {broken.details}")
            seen.append(repr(client.status()))
            status = subprocess.run(
                [sys.executable, "-m", "quotad.daemon.cli", "status", "--json"],
                env=daemon.env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            seen.append(status.stdout + status.stderr)
        outputs = {"client and status": "\n".join(seen), "daemon log": daemon.log()}
        for path in daemon.state_dir.rglob("*"):
            if path.is_file():
                outputs[f"state file {path.name}"] = path.read_bytes().decode("latin-1")
    assert server.requests >= len(FORMS) + len(STREAM_FORMS)  # every echo was asked for
    assert outputs["client and status"].count("[redacted]") >= len(FORMS)
    leaks = {name: found for name, text in outputs.items() if (found := pieces_of_the_key(text))}
    assert not leaks, f"the key leaked into {leaks}:\n{outputs['client and status'][:4000]}"


@pytest.mark.parametrize("form", ["json escaped", "openai masked", "issue masked"])
def test_the_forms_of_the_issue_leaked_before(form: str) -> None:
    """The echoes as sent show the key (so the test above has something to catch)."""
    _, _, body = answer_for(form, KEY)
    text = json.loads(body)["error"]["message"]
    assert pieces_of_the_key(text)
